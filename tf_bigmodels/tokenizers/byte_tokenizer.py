"""UTF-8 byte tokenizer: every byte is a token, plus end-of-text and padding."""

import tensorflow as tf

from tf_bigmodels.tokenizers._ids import checked_ids, valid_utf8
from tf_bigmodels.tokenizers.base import Tokenizer


class ByteTokenizer(Tokenizer):
    """Tokenizes text into its UTF-8 bytes, plus two special tokens.

    Id layout (`vocab_size == 258`):

    | ids     | token                                                     |
    |---------|-----------------------------------------------------------|
    | 0..255  | the byte with that value (on ASCII text: the character)   |
    | 256     | end of text (`end_id`), written between documents         |
    | 257     | padding (`pad_id`)                                        |

    Works for any language: a Chinese character is three tokens, an emoji four. Input that is not
    valid UTF-8 is first transcoded with each bad byte sequence replaced by U+FFFD ("\ufffd"), so
    `detokenize(tokenize(s)) == s` for every valid string, and invalid input never raises.
    `detokenize` drops the special tokens and also replaces invalid byte sequences (a model can
    generate any byte sequence), so it always returns valid UTF-8.

    All work is TensorFlow ops: the tokenizer runs inside `tf.function`, and a `tf.Module` that holds
    it as an attribute saves to and reloads from a SavedModel.

    Args:
        name: str. Name of the module. Defaults to `None` (the class name).

    Example:

    >>> tokenizer = ByteTokenizer()
    >>> tokenizer.tokenize(["hi", "你"])
    <tf.RaggedTensor [[104, 105], [228, 189, 160]]>
    >>> tokenizer.detokenize([[104, 105, 256, 257]])
    <tf.Tensor: shape=(1,), dtype=string, numpy=array([b'hi'], dtype=object)>
    """

    end_id = 256
    pad_id = 257
    vocab_size = 258

    def __init__(self, name=None):
        super().__init__(name=name)
        # id -> byte string; the special tokens map to "" so that detokenize drops them.
        self._id_to_bytes = tf.constant([bytes([i]) for i in range(256)] + [b"", b""])

    def tokenize(self, strings):
        """Returns the UTF-8 byte ids of `strings`.

        Args:
            strings: str, list of str, or string `tf.Tensor` of rank 0 or 1.

        Returns:
            For a batch of strings, an int32 `tf.RaggedTensor` `[batch, None]`; for a single string,
            an int32 `tf.Tensor` `[length]`.

        Example:

        >>> ByteTokenizer().tokenize("a b").numpy()
        array([97, 32, 98], dtype=int32)
        """
        strings = valid_utf8(strings)
        pieces = tf.strings.bytes_split(strings)  # one 1-byte string per byte
        return tf.ragged.map_flat_values(_bytes_to_ids, pieces)

    def detokenize(self, ids):
        """Returns the strings spelled by `ids`; special tokens are dropped.

        Args:
            ids: integer `tf.Tensor` or `tf.RaggedTensor` (or nested lists) of rank 1 or 2,
                values in `[0, vocab_size)`. Another dtype raises TypeError, another id
                `tf.errors.InvalidArgumentError`, both naming `ids`.

        Returns:
            A string `tf.Tensor`: `[batch]` for rank-2 ids, a scalar for rank-1 ids.

        Example:

        >>> ByteTokenizer().detokenize([97, 32, 98, 256]).numpy()
        b'a b'
        >>> ByteTokenizer().detokenize([72.9])
        Traceback (most recent call last):
        ...
        TypeError: `ids` must be integer token ids in [0, 258), got dtype float32.
        """
        ids = checked_ids(ids, self.vocab_size)
        pieces = tf.gather(self._id_to_bytes, ids)
        text = tf.strings.reduce_join(pieces, axis=-1)
        return valid_utf8(text)


def _bytes_to_ids(one_byte_strings):
    # (n,) strings of one byte -> (n, 1) uint8 -> (n,) int32
    return tf.cast(
        tf.reshape(tf.io.decode_raw(one_byte_strings, tf.uint8, fixed_length=1), [-1]), tf.int32
    )
