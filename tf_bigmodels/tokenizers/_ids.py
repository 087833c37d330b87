"""Input conversion and checks shared by the tokenizers."""

import reprlib

import numpy as np
import tensorflow as tf

# U+FFFD, the Unicode replacement character, stands in for bytes that are not valid UTF-8.
REPLACEMENT_CHAR = 0xFFFD


def valid_utf8(strings):
    """`strings` as a string tensor of valid UTF-8: each bad byte sequence becomes U+FFFD.

    Every tokenizer passes its input and its output through this, so invalid text never raises
    and detokenized text is always valid UTF-8. What is not text at all raises TypeError, and a
    string tensor of rank 2 or more ValueError, both naming `strings`.

    Example:

    >>> valid_utf8([b"ok", b"bad \\xff"]).numpy()[1].decode()
    'bad \ufffd'
    >>> valid_utf8([1, 2])
    Traceback (most recent call last):
    ...
    TypeError: `strings` must be a str, a list of str or a string tensor, got [1, 2].
    """
    try:
        strings = tf.convert_to_tensor(strings, tf.string)
    except (TypeError, ValueError):
        raise TypeError(
            f"`strings` must be a str, a list of str or a string tensor, got "
            f"{reprlib.repr(strings)}."
        ) from None
    if strings.shape.rank is not None and strings.shape.rank > 1:
        raise ValueError(
            f"`strings` must be one string or a batch of strings (rank 0 or 1), got shape "
            f"{strings.shape}."
        )
    return tf.strings.unicode_transcode(
        strings,
        "UTF-8",
        "UTF-8",
        errors="replace",
        replacement_char=REPLACEMENT_CHAR,
    )


def checked_ids(ids, vocab_size):
    """`ids` as an int32 `tf.Tensor` or `tf.RaggedTensor`, once every id is known to be valid.

    Ids must have an integer dtype (a float id such as 72.9 is a caller's bug, not a token to
    round): any other dtype raises TypeError naming `ids`. Each id must be in `[0, vocab_size)`,
    checked in 64 bits before the cast to int32 (so 2**32 + 72 is refused, not wrapped to 72);
    an id outside raises `tf.errors.InvalidArgumentError` naming `ids`, the range and the
    offending ids, eagerly, inside `tf.function` and in a SavedModel alike, before any op could
    read out of bounds (a tensorflow-text detokenizer crashes the process on such an id).

    Args:
        ids: int `tf.Tensor` or `tf.RaggedTensor`, NumPy array, or nested lists (may be ragged).
        vocab_size: int. Ids must be below it.

    Example:

    >>> checked_ids([[1, 2], [3]], vocab_size=4)
    <tf.RaggedTensor [[1, 2], [3]]>
    >>> checked_ids([72.9], vocab_size=258)
    Traceback (most recent call last):
    ...
    TypeError: `ids` must be integer token ids in [0, 258), got dtype float32.
    """
    allowed = f"integer token ids in [0, {vocab_size})"
    ids = _as_tensor(ids, allowed)
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be {allowed}, got dtype {ids.dtype.name}.")
    ragged = isinstance(ids, tf.RaggedTensor)
    # int64 holds every id of every integer dtype exactly, except uint64 ids of 2**63 and more,
    # which turn negative and are refused as well.
    values = tf.cast(ids.flat_values if ragged else ids, tf.int64)
    valid = tf.logical_and(values >= 0, values < vocab_size)
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [f"`ids` must be {allowed}, got", tf.boolean_mask(values, tf.logical_not(valid))],
        summarize=5,
    )
    with tf.control_dependencies([check]):
        values = tf.cast(values, tf.int32)
    return ids.with_flat_values(values) if ragged else values


def _as_tensor(ids, allowed):
    if isinstance(ids, (tf.Tensor, tf.RaggedTensor)):
        return ids
    try:
        if isinstance(ids, (list, tuple)):
            ids = tf.ragged.constant(ids)
        else:
            ids = tf.convert_to_tensor(np.asarray(ids))
    except (ValueError, TypeError, OverflowError):  # e.g. an id beyond 64 bits, or text
        raise ValueError(f"`ids` must be {allowed}, got {reprlib.repr(ids)}.") from None
    values = ids.flat_values if isinstance(ids, tf.RaggedTensor) else ids
    if values.shape.num_elements() == 0:  # `[]` and `[[]]` convert to floats: no ids at all
        return tf.cast(ids, tf.int32)
    return ids
