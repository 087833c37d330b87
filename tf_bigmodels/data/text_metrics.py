"""Bits per character: a language model's loss in a unit that does not depend on its tokenizer."""

import math

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels.data.lm_dataset import split_records

_BATCH = 1024  # lines tokenized per call


def bits_per_character(mean_token_loss, tokens, characters):
    """Converts a mean cross-entropy per token (in nats) into bits per character of the text.

    A tokenizer decides how many tokens a text takes (a Chinese character is three byte tokens,
    often less than one SentencePiece token), so per-token losses of different tokenizers do not
    compare. The total information is the same however the text is cut:
    `mean_token_loss * tokens` nats for the whole text, `/ ln 2` in bits, `/ characters` per
    character.

    Args:
        mean_token_loss: float >= 0. Mean cross-entropy per predicted token, in nats (what
            `SparseCategoricalCrossentropy` and `model.evaluate` report).
        tokens: int > 0. Number of predicted tokens in the text (end-of-text tokens included).
        characters: int > 0. Number of characters of the same text.

    Returns:
        float, bits per character.

    Example:

    >>> round(bits_per_character(1.0, tokens=300, characters=100), 4)  # 3 tokens a character
    4.3281
    """
    mean_token_loss = _checks.number("mean_token_loss", mean_token_loss, low=0)
    tokens = _checks.positive_int("tokens", tokens)
    characters = _checks.positive_int("characters", characters)
    return mean_token_loss * tokens / (characters * math.log(2))


def lm_split_counts(texts, tokenizer, split="val"):
    """Returns `(tokens, characters)` of one split of `lm_dataset`'s token stream.

    The split is the one `lm_dataset(texts, tokenizer, ..., split=split)` trains or validates
    on: the lines that start in the first 90% of the text's UTF-8 bytes ("train") or in the rest
    ("val"). `tokens` counts the stream's tokens (each line with its "\\n", plus the end-of-text
    token after each document); `characters` counts the same text's characters, each
    end-of-text token as one (it stands for the blank line between documents in a file). With
    the mean validation loss per token, they give `bits_per_character`.

    Args:
        texts: list of str, the documents given to `lm_dataset`.
        tokenizer: the tokenizer given to `lm_dataset`.
        split: `"train"` or `"val"`. Defaults to `"val"`.

    Returns:
        `(tokens, characters)`, two ints.

    Example:

    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> lm_split_counts(["床前明月光", "疑是地上霜"] * 10, ByteTokenizer())
    (34, 14)
    """
    _checks.one_of("split", split, ("train", "val"))
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("`texts` must be a list of str (documents).")
    lines, _, is_end = split_records(texts, split)  # the records lm_dataset tokenizes
    ends = sum(is_end)
    tokens = ends + sum(
        int(tf.reduce_sum(tokenizer.tokenize(lines[i : i + _BATCH]).row_lengths()))
        for i in range(0, len(lines), _BATCH)
    )
    return tokens, ends + sum(map(len, lines))
