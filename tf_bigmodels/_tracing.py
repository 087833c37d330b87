"""`graph_function`: `tf.function` without AutoGraph, for the package's own graph code."""

import tensorflow as tf


def graph_function(python_function=None, **options):
    """`tf.function(python_function, autograph=False, **options)`.

    The package's graph code (generation loops, export signatures, LiteRT graphs) writes its
    control flow as TensorFlow ops (`tf.cond`, `tf.while_loop`), so AutoGraph, which rewrites
    Python `if`/`for`/`while` on tensors into those ops, has nothing to convert. Its rewriting
    still parses and transforms the source of every function reached while tracing, which was
    most of the time of tracing an export. Without it, a Python `if` on a tensor is an error at
    tracing time, never a silent change.

    Also usable as a decorator, with or without options, as `tf.function` is.

    Example:

    >>> double = graph_function(lambda x: 2 * x, input_signature=[tf.TensorSpec([], tf.int32)])
    >>> int(double(tf.constant(4)))
    8
    >>> @graph_function(jit_compile=False)
    ... def halve(x):
    ...     return x / 2
    >>> float(halve(tf.constant(3.0)))
    1.5
    """
    return tf.function(python_function, autograph=False, **options)  # None: a decorator
