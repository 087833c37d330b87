"""The range check of integer model inputs (token ids, segment ids, mask positions)."""

import numpy as np
import tensorflow as tf


def check_ids(name, ids, high):
    """Raises ValueError if eager `ids` hold a value outside `[0, high)`; in a graph, does nothing.

    Keras's gather wraps a negative index around (-1 reads the last row) and an index past the
    end reads zeros on GPU, so a bad id would silently give wrong outputs. Eagerly the check
    costs one reduction; inside `tf.function`, `fit` and XLA-compiled decoding the ids come from
    the package's own pipelines and tokenizers (whose ids are always in range) and the check is
    skipped, so the contract there is the models' docstring: ids must be in `[0, high)`.

    Args:
        name: str. The input's name in the message.
        ids: int tensor, array or None (nothing to check).
        high: int or scalar. Exclusive upper bound.
    """
    if not tf.executing_eagerly() or not (
        isinstance(ids, np.ndarray) or (isinstance(ids, tf.Tensor) and hasattr(ids, "numpy"))
    ):
        return  # None, or symbolic (a graph, or Keras tracing a functional model)
    values = np.asarray(ids)
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return
    low_value, high_value = int(values.min()), int(values.max())
    if low_value < 0 or high_value >= int(high):
        raise ValueError(
            f"`{name}` must be ids in [0, {int(high)}), got values from {low_value} to "
            f"{high_value}."
        )
