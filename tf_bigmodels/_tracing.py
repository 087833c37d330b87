"""The package's graph code is traced without AutoGraph: `graph_function` and `graph_code`;
and `untracked`, which keeps a module's inner graph functions from being traced twice on save.

The package writes its control flow as TensorFlow ops (`tf.cond`, `tf.while_loop`), so
AutoGraph, which rewrites Python `if`/`for`/`while` on tensors into those ops, has nothing to
convert. Its rewriting still parses and transforms the source of every function reached while
tracing, and that was most of the time of tracing an export or building a BERT input pipeline.
Without it, a Python `if` on a tensor is an error at tracing time, never a silent change.
"""

import types

import tensorflow as tf


def graph_function(python_function=None, **options):
    """`tf.function(python_function, autograph=False, **options)`: generation loops, export
    signatures, LiteRT graphs.

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


def graph_code(python_function):
    """`python_function`, marked so that AutoGraph leaves it as written.

    For the functions given to `tf.data` (`map`, `flat_map`, `filter`, `scan`, ...), which
    convert them with AutoGraph by default, as `tf.function` does.

    Example:

    >>> ds = tf.data.Dataset.range(3).map(graph_code(lambda x: x * 10))
    >>> [int(x) for x in ds]
    [0, 10, 20]
    """
    return tf.autograph.experimental.do_not_convert(python_function)


def untracked(**functions):
    """`functions` as the attributes of a plain object, which a `tf.Module` holding it does not
    track.

    `tf.saved_model.save` traces every `tf.function` a module holds once more, on its own, to
    save it as an attribute of the module, although the signatures that call it already hold
    its graph. The graph functions that only the signatures call go in here: an export then
    traces each of them once, inside the signatures.

    Example:

    >>> module = tf.Module()
    >>> module.parts = untracked(double=graph_function(lambda x: 2 * x))
    >>> int(module.parts.double(tf.constant(4)))
    8
    """
    return types.SimpleNamespace(**functions)
