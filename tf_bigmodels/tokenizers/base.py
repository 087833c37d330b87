"""The interface every tokenizer of the package shares, and the one check that enforces it."""

import tensorflow as tf


class Tokenizer(tf.Module):
    """Base class of the tokenizers: text to int32 ids and back, in TensorFlow ops.

    The pipelines (`lm_dataset`, `bert_pretraining_dataset`), the exports (`export_gpt`,
    `export_bert`) and generation rely on exactly this interface, so any subclass that implements
    it plugs into all of them:

    - `tokenize(strings)`: a str or a batch of str -> int32 ids (`[length]` for one string, a
      `tf.RaggedTensor` `[batch, None]` for a batch). Invalid UTF-8 must not raise.
    - `detokenize(ids)`: integer ids of rank 1 or 2 -> a scalar or `[batch]` string tensor. Ids
      of another dtype raise TypeError, ids outside `[0, vocab_size)` raise
      `tf.errors.InvalidArgumentError` (in graph too), both naming `ids`: an id is never
      wrapped, rounded or read out of bounds.
    - `vocab_size`: int. Ids are in `[0, vocab_size)`.
    - `end_id`: int. The token written after each document of a packed language-model stream,
      and the token at which generation stops.
    - `pad_id`: int. The token that fills padded positions; `detokenize` drops it.

    `vocab_size`, `end_id` and `pad_id` are declared here and set by each subclass (as class
    attributes, in `__init__`, or as properties). Both methods must be pure TensorFlow ops (they
    run inside `tf.function`, `tf.data` and a SavedModel), which is why the base is a
    `tf.Module`: a tokenizer held as an attribute of an exported module travels inside the
    SavedModel. A tokenizer with a learned vocabulary also
    offers `save(directory)` and a classmethod `load(directory)`; one without (`ByteTokenizer`)
    has nothing to save.

    Subclasses: `ByteTokenizer`, `WordPieceTokenizer`, `SentencePieceTokenizer`.

    Args:
        name: str or None. Name of the module. Defaults to None (the class name).

    Example:

    >>> from tf_bigmodels.tokenizers import ByteTokenizer, Tokenizer
    >>> isinstance(ByteTokenizer(), Tokenizer)
    True
    """

    # Declared, not defined: a subclass sets them as class attributes, in `__init__`, or as
    # properties, whichever fits (`ByteTokenizer` has fixed ids; a learned vocabulary does not).
    vocab_size: int
    end_id: int
    pad_id: int

    def tokenize(self, strings):
        """Returns the int32 ids of `strings` (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `tokenize`.")

    def detokenize(self, ids):
        """Returns the text of `ids` (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `detokenize`.")


def check_tokenizer(tokenizer, kind=Tokenizer, *, name="tokenizer"):
    """Returns `tokenizer` if it is an instance of `kind`; raises TypeError naming `name` otherwise.

    The one check the pipelines and exports make, instead of probing for attributes one by one.

    Args:
        tokenizer: the value to check.
        kind: a `Tokenizer` subclass the caller needs (e.g. `WordPieceTokenizer` for BERT's
            special tokens). Defaults to `Tokenizer`.
        name: str. The argument's name in the message. Defaults to "tokenizer".

    Example:

    >>> check_tokenizer("bytes")
    Traceback (most recent call last):
    ...
    TypeError: `tokenizer` must be a Tokenizer (e.g. ByteTokenizer, WordPieceTokenizer), got str.
    """
    if not isinstance(tokenizer, kind):
        allowed = (
            "a Tokenizer (e.g. ByteTokenizer, WordPieceTokenizer)"
            if kind is Tokenizer
            else f"a {kind.__name__}"
        )
        raise TypeError(f"`{name}` must be {allowed}, got {type(tokenizer).__name__}.")
    return tokenizer
