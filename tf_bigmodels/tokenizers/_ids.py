"""Input conversion shared by the tokenizers."""

import numpy as np
import tensorflow as tf


def as_id_tensor(ids):
    """Returns `ids` as an int32 `tf.Tensor` or `tf.RaggedTensor` (nested lists may be ragged)."""
    if isinstance(ids, (list, tuple)):
        ids = tf.ragged.constant(ids, dtype=tf.int32)
    elif not isinstance(ids, (tf.Tensor, tf.RaggedTensor)):
        ids = tf.convert_to_tensor(np.asarray(ids))
    return tf.cast(ids, tf.int32)
