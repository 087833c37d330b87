"""Initializer cloning, so sublayers that share a configured initializer get independent draws."""

import keras


def clone_initializer(initializer):
    """A fresh instance of `initializer` with the same settings and its own random state.

    A Keras 3 initializer instance without a seed fixes one at construction and returns the same
    values for every call of the same shape; giving one instance to several layers would make
    their weights identical. Strings and dicts are resolved first.

    Example:

    >>> shared = keras.initializers.RandomNormal(stddev=0.02)
    >>> a, b = clone_initializer(shared), clone_initializer(shared)
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())
