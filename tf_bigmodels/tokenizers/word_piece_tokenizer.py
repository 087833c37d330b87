"""BERT's WordPiece tokenizer on tensorflow-text, with a vocabulary learned from a corpus."""

import json
import math
import os

import keras
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as vocab_learner

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_code
from tf_bigmodels.tokenizers._files import write_atomically
from tf_bigmodels.tokenizers._ids import checked_ids, valid_utf8
from tf_bigmodels.tokenizers.base import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_VOCAB_FILE = "vocab.txt"
_CONFIG_FILE = "tokenizer.json"
_TRAIN_BATCH = 1024  # texts per word-counting step


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece tokenizer: text -> int32 wordpiece ids, and back.

    Tokenization is BERT's: (optionally) lower-case and strip accents, split on whitespace and
    punctuation, put every CJK character in a word of its own, then split each word greedily into
    the longest wordpieces in the vocabulary (continuations start with `##`); a word that cannot be
    split becomes `[UNK]`. It runs as one tensorflow-text op (`FastBertTokenizer`), inside
    `tf.function` and inside a SavedModel. Invalid UTF-8 is replaced by U+FFFD before tokenizing.

    The vocabulary must contain the special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]`; their ids are
    the attributes `pad_id`, `unk_id`, `cls_id`, `sep_id` and `mask_id`. A vocabulary learned with
    `train` starts with them: `[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4`. `end_id` is `sep_id`:
    `[SEP]` ends each document of a packed language-model stream, as it ends each BERT segment.

    `detokenize` is the inverse modulo normalisation: wordpieces are glued back into words and words
    are joined by single spaces, so `"Hello, world!"` comes back as `"hello , world !"`.

    Args:
        vocabulary: list of str, or path of a vocabulary file with one token per line (BERT's
            `vocab.txt` format). Token `i` has id `i` (is line `i` of the file), so tokens must be
            non-empty and hold no line break ("\\n", "\\r"): `save` could not write them as
            one line each, and the ids after `load` would shift.
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
        for i, token in enumerate(vocabulary):
            if not isinstance(token, str) or not token or "\n" in token or "\r" in token:
                raise ValueError(
                    f"`vocabulary` must hold non-empty str tokens without line breaks (token i "
                    f"is line i of vocab.txt), got {token!r} at id {i}."
                )
        missing = [t for t in SPECIAL_TOKENS if t not in vocabulary]
        if missing:
            raise ValueError(
                f"`vocabulary` must contain the special tokens {list(SPECIAL_TOKENS)}, got one "
                f"without {missing}."
            )
        if len(set(vocabulary)) != len(vocabulary):
            duplicates = sorted({t for t in vocabulary if vocabulary.count(t) > 1})[:5]
            raise ValueError(
                f"`vocabulary` must hold each token once, got duplicates {duplicates}."
            )
        self.lowercase = _checks.boolean("lowercase", lowercase)
        self.vocabulary = tuple(vocabulary)
        self._pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
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

    @property
    def pad_id(self):
        """int. Id of `[PAD]`."""
        return self._pad_id

    @property
    def end_id(self):
        """int. Id of `[SEP]`, which ends each document in a packed language-model stream."""
        return self.sep_id

    def tokenize(self, strings):
        """Returns the wordpiece ids of `strings`.

        Args:
            strings: str, list of str, or string `tf.Tensor` of rank 0 or 1.

        Returns:
            For a batch of strings, an int32 `tf.RaggedTensor` `[batch, None]`; for a single string,
            an int32 `tf.Tensor` `[length]`.

        Example:

        >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
        >>> tokenizer.tokenize(["Hi  hi", "hi ho"]).to_list()
        [[5, 5], [5, 1]]
        """
        strings = valid_utf8(strings)
        if strings.shape.rank == 0:  # FastBertTokenizer takes batches only
            return self._tokenizer.tokenize(strings[tf.newaxis])[0]
        return self._tokenizer.tokenize(strings)

    def detokenize(self, ids):
        """Returns the text of `ids`: words joined by spaces; `[PAD]` tokens are dropped.

        Args:
            ids: integer `tf.Tensor` or `tf.RaggedTensor` (or nested lists) of rank 1 or 2,
                values in `[0, vocab_size)`. Another dtype raises TypeError, another id
                `tf.errors.InvalidArgumentError`, both naming `ids` (an id outside the
                vocabulary is not mapped to `[UNK]`: it is a caller's bug, and
                tensorflow-text's detokenizer would crash the process on it).

        Returns:
            A string `tf.Tensor`: `[batch]` for rank-2 ids, a scalar for rank-1 ids.

        Example:

        >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
        >>> tokenizer.detokenize([5, 0, 5]).numpy()
        b'hi hi'
        >>> tokenizer.detokenize([6])  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        InvalidArgumentError: `ids` must be integer token ids in [0, 6), got [6]
        """
        ids = checked_ids(ids, self.vocab_size)
        if isinstance(ids, tf.Tensor) and ids.shape.rank == 2:
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.ragged.boolean_mask(ids, tf.not_equal(ids, self.pad_id))
        return self._tokenizer.detokenize(ids)

    def save(self, directory):
        """Writes `vocab.txt` (one token per line) and `tokenizer.json` into `directory`.

        Each file is written to a temporary file beside it and renamed into place, `tokenizer.json`
        last, so an interrupted save (a full disk, a kill) never leaves a truncated file where
        `load` would read it.

        Args:
            directory: str or path-like. Created if missing.

        Example:

        >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"])
        >>> tokenizer.save("runs/bert/tokenizer")
        >>> WordPieceTokenizer.load("runs/bert/tokenizer").vocabulary == tokenizer.vocabulary
        True
        """
        os.makedirs(directory, exist_ok=True)
        write_atomically(os.path.join(directory, _VOCAB_FILE), "\n".join(self.vocabulary) + "\n")
        write_atomically(
            os.path.join(directory, _CONFIG_FILE), json.dumps({"lowercase": self.lowercase})
        )

    @classmethod
    def load(cls, directory):
        """Returns the tokenizer that `save` wrote into `directory`.

        Args:
            directory: str or path-like, as given to `save`.

        Example:

        A BERT run of `tf-bigmodels train bert` keeps its tokenizer in `runs/bert/tokenizer`;
        here one saved just before:

        >>> WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"]).save("tok")
        >>> WordPieceTokenizer.load("tok").tokenize("hi hi").numpy()
        array([5, 5], dtype=int32)
        """
        config_path = os.path.join(directory, _CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise ValueError(
                f"`directory` must be a directory written by WordPieceTokenizer.save (holding "
                f"{_CONFIG_FILE}), got {str(directory)!r}."
            )
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
            lowercase = config["lowercase"]
        except (ValueError, TypeError, KeyError):  # not JSON, not a dict, no "lowercase"
            raise ValueError(
                f"{config_path} must hold the JSON that WordPieceTokenizer.save writes, like "
                f'{{"lowercase": true}}; it is damaged: save the tokenizer again.'
            ) from None
        return cls(os.path.join(directory, _VOCAB_FILE), lowercase=lowercase)

    @classmethod
    def train(cls, texts, vocab_size, *, lowercase=True, verbose=True, **learn_params):
        """Learns a WordPiece vocabulary of at most `vocab_size` tokens from `texts`.

        Words are counted with BERT's basic tokenizer (as `bert_vocab_from_dataset` does, with a
        progress bar over batches of texts), then tensorflow-text's WordPiece learner
        (`wordpiece_tokenizer_learner_lib.learn`) picks the vocabulary by a binary search over
        frequency thresholds. The result has between 95% and 100% of `vocab_size` tokens when the
        corpus supports it; it always holds the special tokens first.

        Every character kept takes two entries, itself and its `##` form, and a character left
        out becomes `[UNK]` wherever it appears. So the most frequent characters are kept, as
        many as fill two-fifths of `vocab_size`, leaving at least a fifth for longer pieces.
        tensorflow-text's own default, 1,000 characters whatever the size, suits alphabets but
        not Chinese: BERT's basic tokenizer makes each Chinese character a word, so a vocabulary
        asked for 8,000 tokens came back with about 2,000, and one Chinese token in eight was
        `[UNK]`. Pass `max_unique_chars` to choose another number.

        Args:
            texts: list of str, or a `tf.data.Dataset` of scalar strings.
            vocab_size: int. Target vocabulary size, larger than the 5 special tokens.
            lowercase: bool. As in the constructor. Defaults to `True`.
            verbose: bool. Show a progress bar while counting words. Defaults to `True`.
            **learn_params: passed on to tensorflow-text's learner (e.g. `max_unique_chars`,
                `lower_thresh`).

        Returns:
            A `WordPieceTokenizer`.

        Example:

        >>> tokenizer = WordPieceTokenizer.train(["The cat sat.", "The cats sat."] * 50,
        ...                                      vocab_size=40, verbose=False)
        >>> tokenizer.vocabulary[:5]
        ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
        >>> chinese = WordPieceTokenizer.train(["春眠不觉晓，处处闻啼鸟。"] * 20, vocab_size=40,
        ...                                    verbose=False)
        >>> chinese.tokenize("春眠不觉晓，处处闻啼鸟。").shape[0]  # 12 characters, none [UNK]
        12

        On the whole bundled corpus, `WordPieceTokenizer.train(load_corpus("shakespeare"),
        vocab_size=8000)` takes tens of seconds.
        """
        # Room for the special tokens and at least one learned token.
        vocab_size = _checks.integer("vocab_size", vocab_size, low=len(SPECIAL_TOKENS) + 1)
        _checks.boolean("verbose", verbose)
        if isinstance(texts, str):
            raise TypeError(
                "`texts` must be a list of str or a tf.data.Dataset of strings, got one "
                "str; wrap it in a list."
            )
        if isinstance(texts, tf.data.Dataset):
            dataset, num_texts = texts, None
        else:
            texts = list(texts)
            if not texts:
                raise ValueError("`texts` must hold at least one non-empty string, got [].")
            dataset, num_texts = tf.data.Dataset.from_tensor_slices(texts), len(texts)
        splitter = BasicTokenizer(lower_case=lowercase)
        words = dataset.batch(_TRAIN_BATCH).map(
            graph_code(
                lambda t: splitter.tokenize(
                    tf.strings.unicode_transcode(t, "UTF-8", "UTF-8", errors="replace")
                )
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
                "`texts` must hold words to learn a vocabulary from, got only whitespace or "
                "nothing."
            )
        if verbose:
            print(
                f"Learning a WordPiece vocabulary of about {vocab_size} tokens from "
                f"{len(word_counts)} distinct words..."
            )
        learn_params.setdefault(
            "max_unique_chars", max(1, 2 * (vocab_size - len(SPECIAL_TOKENS)) // 5)
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
            f"`vocabulary` must be a list of tokens or the path of an existing vocabulary file "
            f"with one token per line, got {str(path)!r}."
        )
    # Line i is token i: a blank line inside the file is kept (and refused as an empty token)
    # rather than skipped, which would shift the ids of every token after it.
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\n").split("\n")
