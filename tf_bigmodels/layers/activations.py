"""GELU in its two published forms, resolvable by name and serializable."""

import keras


@keras.saving.register_keras_serializable(package="tf_bigmodels")
def gelu_approximate(x):
    """GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Example:

    >>> keras.ops.convert_to_numpy(gelu_approximate(keras.ops.array([-1.0, 0.0, 1.0]))).round(4)
    array([-0.1588,  0.    ,  0.8412], dtype=float32)
    """
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="tf_bigmodels")
def gelu(x):
    """GELU, exact erf form (BERT): x * Phi(x).

    Example:

    >>> keras.ops.convert_to_numpy(gelu(keras.ops.array([-1.0, 0.0, 1.0]))).round(4)
    array([-0.1587,  0.    ,  0.8413], dtype=float32)
    """
    return keras.activations.gelu(x, approximate=False)


_BY_NAME = {"gelu": gelu, "gelu_approximate": gelu_approximate}


def get_activation(activation):
    """Resolves "gelu", "gelu_approximate", any Keras activation name, a serialized one or a callable.

    Example:

    >>> get_activation("gelu_approximate") is gelu_approximate
    True
    """
    if isinstance(activation, str) and activation in _BY_NAME:
        return _BY_NAME[activation]
    try:
        resolved = keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`activation` must be 'gelu', 'gelu_approximate', a Keras activation name or a "
            f"callable, got {activation!r}."
        ) from error
    if resolved is None:
        raise ValueError(
            "`activation` must be a name or a callable ('linear' for no activation), got None."
        )
    return resolved


def serialize_activation(activation):
    """The config form of an activation returned by `get_activation` (a name where one exists).

    Example:

    >>> serialize_activation(get_activation("gelu_approximate"))
    'gelu_approximate'
    """
    for name, function in _BY_NAME.items():
        if activation is function:
            return name
    return keras.activations.serialize(activation)
