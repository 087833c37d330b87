"""Input conversion and checks shared by the tokenizers."""

import numpy as np
import tensorflow as tf

# U+FFFD, the Unicode replacement character, stands in for bytes that are not valid UTF-8.
REPLACEMENT_CHAR = 0xFFFD


def valid_utf8(strings):
    """`strings` as a string tensor of valid UTF-8: each bad byte sequence becomes U+FFFD.

    Every tokenizer passes its input and its output through this, so invalid text never raises
    and detokenized text is always valid UTF-8.
    """
    return tf.strings.unicode_transcode(
        tf.convert_to_tensor(strings, tf.string),
        "UTF-8",
        "UTF-8",
        errors="replace",
        replacement_char=REPLACEMENT_CHAR,
    )


def as_id_tensor(ids):
    """Returns `ids` as an int32 `tf.Tensor` or `tf.RaggedTensor` (nested lists may be ragged)."""
    if isinstance(ids, (list, tuple)):
        ids = tf.ragged.constant(ids, dtype=tf.int32)
    elif not isinstance(ids, (tf.Tensor, tf.RaggedTensor)):
        ids = tf.convert_to_tensor(np.asarray(ids))
    return tf.cast(ids, tf.int32)


def checked_ids(ids, vocab_size):
    """`as_id_tensor(ids)`, after an in-graph check that every id is in `[0, vocab_size)`.

    An out-of-range id raises `tf.errors.InvalidArgumentError` naming `ids`, eagerly, inside
    `tf.function` and in a SavedModel alike, before any op could read out of bounds (a
    tensorflow-text detokenizer crashes the process on such an id).
    """
    ids = as_id_tensor(ids)
    values = ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids
    message = f"`ids` must be token ids in [0, {vocab_size})"
    checks = [
        tf.debugging.assert_non_negative(values, message=message),
        tf.debugging.assert_less(values, tf.constant(vocab_size, tf.int32), message=message),
    ]
    with tf.control_dependencies(checks):
        if isinstance(ids, tf.RaggedTensor):
            return ids.with_flat_values(tf.identity(ids.flat_values))
        return tf.identity(ids)
