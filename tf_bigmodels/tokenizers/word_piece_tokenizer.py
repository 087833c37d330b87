"""BERT's WordPiece tokenizer on tensorflow-text, with a vocabulary learned from a corpus."""

import json
import math
import os

import keras
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as vocab_learner

from tf_bigmodels.tokenizers._ids import as_id_tensor

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_VOCAB_FILE = "vocab.txt"
_CONFIG_FILE = "tokenizer.json"
_TRAIN_BATCH = 1024  # texts per word-counting step


class WordPieceTokenizer(tf.Module):
    """BERT WordPiece tokenizer: text -> int32 wordpiece ids, and back.

    Tokenization is BERT's: (optionally) lower-case and strip accents, split on whitespace and
    punctuation, put every CJK character in a word of its own, then split each word greedily into
    the longest wordpieces in the vocabulary (continuations start with `##`); a word that cannot be
    split becomes `[UNK]`. It runs as one tensorflow-text op (`FastBertTokenizer`), inside
    `tf.function` and inside a SavedModel. Invalid UTF-8 is replaced by U+FFFD before tokenizing.

    The vocabulary must contain the special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]`; their ids are
    the attributes `pad_id`, `unk_id`, `cls_id`, `sep_id` and `mask_id`. A vocabulary learned with
    `train` starts with them: `[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4`.

    `detokenize` is the inverse modulo normalisation: wordpieces are glued back into words and words
    are joined by single spaces, so `"Hello, world!"` comes back as `"hello , world !"`.

    Args:
        vocabulary: list of str, or path of a vocabulary file with one token per line (BERT's
            `vocab.txt` format). Token `i` has id `i`.
        lowercase: bool. Lower-case and strip accents before splitting (BERT "uncased").
            Defaults to `True`.
        name: str. Name of the module. Defaults to `None` (the class name).

    Example:

    >>> tokenizer = WordPieceTokenizer.train(["The cat sat.", "The cats sat."] * 50, vocab_size=40,
    ...                                      verbose=False)
    >>> ids = tokenizer.tokenize(["The cats sat."])
    >>> tokenizer.detokenize(ids)
    <tf.Tensor: shape=(1,), dtype=string, numpy=array([b'the cats sat .'], dtype=object)>
    """

    def __init__(self, vocabulary, *, lowercase=True, name=None):
        super().__init__(name=name)
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = _read_vocabulary(vocabulary)
        vocabulary = list(vocabulary)
        missing = [t for t in SPECIAL_TOKENS if t not in vocabulary]
        if missing:
            raise ValueError(
                f"vocabulary lacks the special tokens {missing}; it must contain all of "
                f"{list(SPECIAL_TOKENS)}."
            )
        if len(set(vocabulary)) != len(vocabulary):
            duplicates = sorted({t for t in vocabulary if vocabulary.count(t) > 1})[:5]
            raise ValueError(
                f"vocabulary has duplicate tokens {duplicates}; each token must appear once."
            )
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be a bool, got {lowercase!r}.")
        self.vocabulary = tuple(vocabulary)
        self.lowercase = lowercase
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.vocabulary.index(t) for t in SPECIAL_TOKENS
        )
        self._tokenizer = tf_text.FastBertTokenizer(
            vocab=list(self.vocabulary),
            token_out_type=tf.int32,
            unknown_token="[UNK]",
            support_detokenization=True,
            lower_case_nfd_strip_accents=lowercase,
        )

    @property
    def vocab_size(self):
        """int. Number of tokens in the vocabulary."""
        return len(self.vocabulary)

    def tokenize(self, strings):
        """Returns the wordpiece ids of `strings`.

        Args:
            strings: str, list of str, or string `tf.Tensor` of rank 0 or 1.

        Returns:
            For a batch of strings, an int32 `tf.RaggedTensor` `[batch, None]`; for a single string,
            an int32 `tf.Tensor` `[length]`.
        """
        strings = tf.strings.unicode_transcode(
            tf.convert_to_tensor(strings, tf.string), "UTF-8", "UTF-8", errors="replace"
        )
        if strings.shape.rank == 0:  # FastBertTokenizer takes batches only
            return self._tokenizer.tokenize(strings[tf.newaxis])[0]
        return self._tokenizer.tokenize(strings)

    def detokenize(self, ids):
        """Returns the text of `ids`: words joined by spaces; `[PAD]` tokens are dropped.

        Args:
            ids: int `tf.Tensor` or `tf.RaggedTensor` (or nested lists) of rank 1 or 2, values in
                `[0, vocab_size)`.

        Returns:
            A string `tf.Tensor`: `[batch]` for rank-2 ids, a scalar for rank-1 ids.
        """
        ids = as_id_tensor(ids)
        if isinstance(ids, tf.Tensor) and ids.shape.rank == 2:
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.ragged.boolean_mask(ids, tf.not_equal(ids, self.pad_id))
        return self._tokenizer.detokenize(ids)

    def save(self, directory):
        """Writes `vocab.txt` (one token per line) and `tokenizer.json` into `directory`.

        Args:
            directory: str or path-like. Created if missing.

        Example:

        >>> tokenizer.save("runs/bert/tokenizer")  # doctest: +SKIP
        >>> same = WordPieceTokenizer.load("runs/bert/tokenizer")  # doctest: +SKIP
        """
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, _VOCAB_FILE), "w", encoding="utf-8") as f:
            f.write("\n".join(self.vocabulary) + "\n")
        with open(os.path.join(directory, _CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump({"lowercase": self.lowercase}, f)

    @classmethod
    def load(cls, directory):
        """Returns the tokenizer that `save` wrote into `directory`.

        Args:
            directory: str or path-like, as given to `save`.

        Example:

        >>> tokenizer = WordPieceTokenizer.load("runs/bert/tokenizer")  # doctest: +SKIP
        """
        config_path = os.path.join(directory, _CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ValueError(
                f"directory={str(directory)!r} holds no {_CONFIG_FILE}; it must be a "
                f"directory written by WordPieceTokenizer.save."
            )
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        return cls(os.path.join(directory, _VOCAB_FILE), lowercase=config["lowercase"])

    @classmethod
    def train(cls, texts, vocab_size, *, lowercase=True, verbose=True, **learn_params):
        """Learns a WordPiece vocabulary of at most `vocab_size` tokens from `texts`.

        Words are counted with BERT's basic tokenizer (as `bert_vocab_from_dataset` does, with a
        progress bar over batches of texts), then tensorflow-text's WordPiece learner
        (`wordpiece_tokenizer_learner_lib.learn`) picks the vocabulary by a binary search over
        frequency thresholds. The result has between 95% and 100% of `vocab_size` tokens when the
        corpus supports it; it always holds the special tokens first and every character seen.

        Args:
            texts: list of str, or a `tf.data.Dataset` of scalar strings.
            vocab_size: int. Target vocabulary size, larger than the 5 special tokens.
            lowercase: bool. As in the constructor. Defaults to `True`.
            verbose: bool. Show a progress bar while counting words. Defaults to `True`.
            **learn_params: passed on to tensorflow-text's learner (e.g. `max_unique_chars`).

        Returns:
            A `WordPieceTokenizer`.

        Example:

        >>> from tf_bigmodels.data import load_corpus
        >>> tokenizer = WordPieceTokenizer.train(load_corpus("shakespeare"), vocab_size=8000)
        ... # doctest: +SKIP
        """
        if (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, int)
            or (vocab_size <= len(SPECIAL_TOKENS))
        ):
            raise ValueError(
                f"vocab_size={vocab_size!r} is not allowed; it must be an int larger "
                f"than the {len(SPECIAL_TOKENS)} special tokens {list(SPECIAL_TOKENS)}."
            )
        if isinstance(texts, str):
            raise TypeError(
                "texts must be a list of str or a tf.data.Dataset of strings, got one "
                "str; wrap it in a list."
            )
        if isinstance(texts, tf.data.Dataset):
            dataset, num_texts = texts, None
        else:
            texts = list(texts)
            if not texts:
                raise ValueError("texts=[] is empty; give at least one non-empty string.")
            dataset, num_texts = tf.data.Dataset.from_tensor_slices(texts), len(texts)
        splitter = BasicTokenizer(lower_case=lowercase)
        words = dataset.batch(_TRAIN_BATCH).map(
            lambda t: splitter.tokenize(
                tf.strings.unicode_transcode(t, "UTF-8", "UTF-8", errors="replace")
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        progress = keras.utils.Progbar(
            None if num_texts is None else math.ceil(num_texts / _TRAIN_BATCH),
            verbose=1 if verbose else 0,
            unit_name="batch",
        )
        try:
            word_counts = vocab_learner.count_words(_with_progress(words, progress))
        except StopIteration:  # tensorflow-text's counter cannot handle zero words
            word_counts = None
        if not word_counts:
            raise ValueError(
                "texts hold no words (only whitespace or nothing); give text to "
                "learn a vocabulary from."
            )
        if verbose:
            print(
                f"Learning a WordPiece vocabulary of about {vocab_size} tokens from "
                f"{len(word_counts)} distinct words..."
            )
        vocabulary = vocab_learner.learn(
            word_counts, vocab_size, list(SPECIAL_TOKENS), **learn_params
        )
        return cls(vocabulary, lowercase=lowercase)


def _with_progress(batches, progress):
    for step, batch in enumerate(batches, start=1):
        progress.update(step)
        yield batch


def _read_vocabulary(path):
    if not os.path.isfile(path):
        raise ValueError(
            f"vocabulary={str(path)!r} is not an existing file; give a list of "
            f"tokens or the path of a vocabulary file with one token per line."
        )
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]
