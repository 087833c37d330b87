"""A learned subword vocabulary (SentencePiece), run in-graph by tensorflow-text, lossless on text."""

import hashlib
import io
import os
import re
import tempfile

import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops import sentencepiece_tokenizer as tf_text_sentencepiece

from tf_bigmodels import _checks
from tf_bigmodels.tokenizers._ids import REPLACEMENT_CHAR, as_id_tensor, valid_utf8
from tf_bigmodels.tokenizers.base import Tokenizer

_MODEL_FILE = "sentencepiece.model"
# Ids fixed by `train`: unknown, end of text, padding, then "\n" and the 256 byte pieces.
_UNK_ID, _END_ID, _PAD_ID = 0, 1, 2
_NEWLINE = "\n"
_RESERVED = 3 + 256 + 1  # specials + byte pieces + the newline piece


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece subword tokenizer: text -> int32 piece ids, and back, losslessly.

    The vocabulary is a SentencePiece model (a serialized `ModelProto`), usually learned from a
    corpus with `SentencePieceTokenizer.train`. Tokenizing and detokenizing run as one
    tensorflow-text op each (`tensorflow_text.SentencepieceTokenizer`), inside `tf.function` and
    inside a SavedModel: the model proto is stored in the graph, so an exported model needs
    only `tensorflow` and `tensorflow_text` to turn strings into ids and back.

    A model learned with `train` is lossless: `detokenize(tokenize(s)) == s` for every valid
    UTF-8 string, because it

    - does no normalisation (SentencePiece's default NFKC folding would turn "，" into ",");
    - keeps every space as it is and adds no leading space;
    - makes "\\n" a piece of its own (SentencePiece would otherwise treat it as a space);
    - falls back to UTF-8 byte pieces for any character outside its vocabulary (an emoji, a rare
      character), so nothing becomes "unknown".

    Id layout of a trained model: 0 unknown (`unk_id`, decoded as U+FFFD), 1 end of text
    (`end_id`, written between documents), 2 padding (`pad_id`), 3 "\\n", 4..259 the bytes
    0x00..0xFF, then the learned pieces. `detokenize` drops end-of-text and padding ids and turns
    byte sequences that are not valid UTF-8 (a model can generate any) into U+FFFD.

    Args:
        model_proto: bytes of a serialized SentencePiece model, or the path of a `.model` file.
            It must define end-of-text (`</s>`) and padding (`<pad>`) ids.
        name: str. Name of the module. Defaults to `None` (the class name).

    Example:

    >>> from tf_bigmodels.data import load_corpus
    >>> tokenizer = SentencePieceTokenizer.train(load_corpus("tangshi")[:300], vocab_size=4000)
    >>> ids = tokenizer.tokenize(["静夜思\\n李白\\n床前明月光，疑是地上霜。\\n"])
    >>> tokenizer.detokenize(ids).numpy()[0].decode()
    '静夜思\\n李白\\n床前明月光，疑是地上霜。\\n'
    """

    def __init__(self, model_proto, *, name=None):
        super().__init__(name=name)
        if isinstance(model_proto, (str, os.PathLike)):
            model_proto = _read_model_file(model_proto)
        if not isinstance(model_proto, bytes):
            raise TypeError(
                f"`model_proto` must be the bytes of a SentencePiece model or the path of a "
                f".model file, got {type(model_proto).__name__}."
            )
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_proto)
        except RuntimeError:
            raise ValueError(
                f"`model_proto` must be a serialized SentencePiece model, got "
                f"{len(model_proto)} bytes that do not parse as one."
            ) from None
        if processor.eos_id() < 0 or processor.pad_id() < 0:
            raise ValueError(
                f"`model_proto` must define end-of-text and padding ids (train it with "
                f"eos_id and pad_id set), got eos_id={processor.eos_id()}, "
                f"pad_id={processor.pad_id()}."
            )
        self.model_proto = model_proto
        self.vocab_size = processor.vocab_size()
        self.unk_id = processor.unk_id()
        self.end_id = processor.eos_id()
        self.pad_id = processor.pad_id()
        self._tokenizer = _SentencepieceOps(model_proto)

    def tokenize(self, strings):
        """Returns the piece ids of `strings`.

        Args:
            strings: str, list of str, or string `tf.Tensor` of rank 0 or 1. Invalid UTF-8 is
                replaced by U+FFFD first.

        Returns:
            For a batch of strings, an int32 `tf.RaggedTensor` `[batch, None]`; for a single string,
            an int32 `tf.Tensor` `[length]`.
        """
        strings = valid_utf8(strings)
        return self._tokenizer.tokenize(strings)

    def detokenize(self, ids):
        """Returns the text of `ids`; end-of-text and padding ids are dropped.

        Args:
            ids: int `tf.Tensor` or `tf.RaggedTensor` (or nested lists) of rank 1 or 2, values in
                `[0, vocab_size)`.

        Returns:
            A string `tf.Tensor`: `[batch]` for rank-2 ids, a scalar for rank-1 ids.
        """
        text = self._tokenizer.detokenize(as_id_tensor(ids))
        return valid_utf8(text)

    def save(self, directory):
        """Writes the model to `directory/sentencepiece.model` (a standard SentencePiece file).

        The file is written to a temporary name in `directory` and renamed into place, so an
        interrupted save never leaves a half-written model where a good one was.

        Args:
            directory: str or path-like. Created if missing.

        Example:

        >>> tokenizer.save("runs/poet/tokenizer")  # doctest: +SKIP
        >>> same = SentencePieceTokenizer.load("runs/poet/tokenizer")  # doctest: +SKIP
        """
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{_MODEL_FILE}.", dir=directory)
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(self.model_proto)
            os.replace(temporary, os.path.join(directory, _MODEL_FILE))
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    @classmethod
    def load(cls, directory):
        """Returns the tokenizer that `save` wrote into `directory`.

        Args:
            directory: str or path-like, as given to `save`.

        Example:

        >>> tokenizer = SentencePieceTokenizer.load("runs/poet/tokenizer")  # doctest: +SKIP
        """
        path = os.path.join(directory, _MODEL_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"`directory` must be a directory written by SentencePieceTokenizer.save, got "
                f"{str(directory)!r}, which holds no {_MODEL_FILE}."
            )
        return cls(path)

    @classmethod
    def train(
        cls,
        texts,
        vocab_size,
        *,
        model_type="unigram",
        character_coverage=0.9995,
        max_sentence_length=65536,
        **trainer_options,
    ):
        """Learns a SentencePiece vocabulary of at most `vocab_size` pieces from `texts`.

        The texts are cut into lines (SentencePiece's sentences); "\\n" is a piece of its own, so
        lines lose nothing. Settings that make the model lossless (see the class docstring) are
        fixed; the vocabulary holds the 3 special pieces, "\\n" and the 256 byte pieces first, so
        `vocab_size` must leave room for them and for every character that `character_coverage`
        keeps. A small corpus may give fewer than `vocab_size` pieces (SentencePiece's
        `hard_vocab_limit=False`). Training runs in C++: 300 poems take a fraction of a second,
        the whole 全唐诗 (56,053 poems, 8,000 pieces) about 2.5 minutes on one CPU core.

        Args:
            texts: list of str (documents, e.g. from `load_corpus`).
            vocab_size: int. Most pieces in the vocabulary, > 260.
            model_type: `"unigram"` or `"bpe"`. Defaults to `"unigram"` (SentencePiece's own
                default).
            character_coverage: float in (0, 1]. Share of the corpus's characters that get pieces
                of their own; the rarest rest are spelled with byte pieces. 0.9995 suits Chinese
                and Japanese (thousands of characters); use 1.0 for small alphabets. Defaults to
                0.9995.
            max_sentence_length: int. Longest line, in bytes, used for training (longer lines
                are skipped). Defaults to 65,536.
            **trainer_options: further `sentencepiece.SentencePieceTrainer` options (e.g.
                `input_sentence_size=1_000_000, shuffle_input_sentence=True` to sample a huge
                corpus, or `split_digits=True`).

        Returns:
            A `SentencePieceTokenizer`.

        Example:

        >>> from tf_bigmodels.data import load_corpus
        >>> # Minutes of training (the whole corpus), so not run as a doctest:
        >>> tokenizer = SentencePieceTokenizer.train(load_corpus("tangshi"), vocab_size=8000)
        ... # doctest: +SKIP
        """
        vocab_size = _checks.integer("vocab_size", vocab_size, low=_RESERVED + 1)
        _checks.one_of("model_type", model_type, ("unigram", "bpe"))
        character_coverage = _checks.number(
            "character_coverage", character_coverage, low=0, high=1, low_open=True
        )
        max_sentence_length = _checks.positive_int("max_sentence_length", max_sentence_length)
        if isinstance(texts, str) or not (
            isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts)
        ):
            raise TypeError(
                f"`texts` must be a list of str, got "
                f"{'one str' if isinstance(texts, str) else type(texts).__name__}; wrap a "
                f"single text in a list."
            )
        lines = [line for text in texts for line in text.split(_NEWLINE) if line]
        if not lines:
            raise ValueError(
                f"`texts` must hold some text, got {len(texts)} texts that are empty or only "
                f"newlines."
            )
        model = io.BytesIO()
        options = dict(
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            max_sentence_length=max_sentence_length,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=[_NEWLINE],
            unk_id=_UNK_ID,
            eos_id=_END_ID,
            pad_id=_PAD_ID,
            bos_id=-1,
            unk_surface=chr(REPLACEMENT_CHAR),
            minloglevel=2,
        )
        options.update(trainer_options)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, **options
            )
        except RuntimeError as e:
            # SentencePiece counts the reserved pieces and the characters it must keep.
            needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
            if needed:
                raise ValueError(
                    f"`vocab_size` must be at least {needed.group(1)} for these texts (the "
                    f"{_RESERVED} reserved pieces and every character that character_coverage="
                    f"{character_coverage} keeps), got {vocab_size}; raise it or lower "
                    f"character_coverage."
                ) from None
            raise
        return cls(model.getvalue())


class _SharedModelResource(tf_text_sentencepiece._SentencepieceModelResource):
    """The SentencePiece model resource, kept by the resource manager under a shared name.

    tensorflow-text 2.21 makes the resource private to the op kernel that creates it (its
    TODO b/318839908: "switch to a ref-counted resource"). TensorFlow drops eager kernels whenever
    it clears its kernel cache, which `tf.random.set_seed` (so `keras.utils.set_random_seed`)
    does, and the tokenizer then fails with "Resource ... SentencepieceResource does not exist".
    A shared name puts the resource in the resource manager, where it lives as long as the
    process (in eager mode, in graphs and in a loaded SavedModel). The name is the hash of the
    model, so tokenizers share a resource only when their models are the same. This class goes
    away once tensorflow-text's resource is ref-counted.
    """

    def __init__(self, model_proto):
        self._shared_name = "sentencepiece_" + hashlib.sha256(model_proto).hexdigest()
        super().__init__(model_proto, None)

    def _create_resource(self):
        # The proto is an attribute of this op, so it is stored in the graph of a SavedModel.
        return tf_text_sentencepiece.gen_sentencepiece_tokenizer.sentencepiece_op(
            model=self._model, shared_name=self._shared_name
        )


class _SentencepieceOps(tf_text.SentencepieceTokenizer):
    """tensorflow-text's SentencePiece ops on a resource that outlives the kernel cache."""

    def __init__(self, model_proto):
        super().__init__(model=model_proto, out_type=tf.int32)
        self._model_resource = _SharedModelResource(model_proto)


def _read_model_file(path):
    if not os.path.isfile(path):
        raise ValueError(
            f"`model_proto` must be SentencePiece model bytes or an existing .model file, "
            f"got {str(path)!r}, which is not an existing file."
        )
    with open(path, "rb") as f:
        return f.read()
