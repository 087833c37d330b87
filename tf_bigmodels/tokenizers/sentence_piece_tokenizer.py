"""A learned subword vocabulary (SentencePiece), run in-graph by tensorflow-text, lossless on text."""

import hashlib
import io
import os
import re
import tempfile
import warnings

import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops import sentencepiece_tokenizer as tf_text_sentencepiece

from tf_bigmodels import _checks
from tf_bigmodels.tokenizers._files import write_atomically
from tf_bigmodels.tokenizers._ids import REPLACEMENT_CHAR, checked_ids, valid_utf8
from tf_bigmodels.tokenizers.base import Tokenizer

_MODEL_FILE = "sentencepiece.model"
# Ids fixed by `train`: unknown, end of text, padding, then "\n" and the 256 byte pieces.
_UNK_ID, _END_ID, _PAD_ID = 0, 1, 2
_NEWLINE = "\n"
_RESERVED = 3 + 256 + 1  # specials + byte pieces + the newline piece
# SentencePiece writes a space as U+2581 ("▁") in its pieces and decodes every U+2581 as a space.
_SPACE_SYMBOL = "\u2581"
# A rule table whose one rule changes nothing: it maps "▁" to a space, and SentencePiece writes
# a space as "▁" again. An empty table (SentencePiece's "identity" normalisation) would do the
# same, but the SentencePiece inside tensorflow-text logs "precompiled_charsmap is empty" to
# stderr each time it loads such a model, in training scripts and in every served SavedModel.
_NO_OP_RULES = "2581\t20\n"
# Trainer settings that make the model lossless and give it the documented id layout; `train`
# refuses to let `trainer_options` change them.
_FIXED_OPTIONS = dict(
    byte_fallback=True,
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    escape_whitespaces=True,
    treat_whitespace_as_suffix=False,
    user_defined_symbols=[_NEWLINE],
    unk_id=_UNK_ID,
    eos_id=_END_ID,
    pad_id=_PAD_ID,
    bos_id=-1,
    unk_surface=chr(REPLACEMENT_CHAR),
)


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
    - keeps every space as it is (no collapsing of runs, no trimming) and adds no leading space;
    - always has "▁" (U+2581, SentencePiece's sign for a space) as a piece, even when the corpus
      has too few spaces for `character_coverage` to keep it: otherwise a space would be spelled
      with the byte pieces of "▁" and come back as "▁";
    - makes "\\n" a piece of its own (SentencePiece would otherwise treat it as a space);
    - falls back to UTF-8 byte pieces for any character outside its vocabulary (an emoji, a rare
      character), so nothing becomes "unknown".

    SentencePiece decodes every "▁" piece as a space, so `tokenize` gives a literal "▁" of the
    text the byte pieces of its UTF-8 bytes instead, which decode to "▁" itself (in the same
    tensorflow ops, so a SavedModel does it too).

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
        # The byte pieces that spell a literal "▁" (None if the model has no byte pieces).
        symbol_ids = [processor.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_SYMBOL.encode()]
        self._space_symbol_ids = (
            tf.constant(symbol_ids, tf.int32)
            if all(processor.IsByte(i) for i in symbol_ids)
            else None
        )
        if self._space_symbol_ids is not None and processor.IsUnknown(
            processor.piece_to_id(_SPACE_SYMBOL)
        ):
            warnings.warn(
                'This SentencePiece model has no piece "\u2581", so it spells a space with the '
                'byte pieces of "\u2581" and its spaces come back as "\u2581" (models learned '
                "by SentencePieceTokenizer.train before it made the piece required); learn the "
                "tokenizer again with SentencePieceTokenizer.train.",
                stacklevel=2,
            )

    def tokenize(self, strings):
        """Returns the piece ids of `strings`.

        Args:
            strings: str, list of str, or string `tf.Tensor` of rank 0 or 1. Invalid UTF-8 is
                replaced by U+FFFD first.

        Returns:
            For a batch of strings, an int32 `tf.RaggedTensor` `[batch, None]`; for a single string,
            an int32 `tf.Tensor` `[length]`.

        Example:

        >>> tokenizer = SentencePieceTokenizer.train(["床前明月光", "疑是 地上霜"], vocab_size=300)
        >>> ids = tokenizer.tokenize(["床前 明月▁光", "\\t地上霜\\n"])
        >>> [text.decode() for text in tokenizer.detokenize(ids).numpy()]
        ['床前 明月▁光', '\\t地上霜\\n']
        """
        strings = valid_utf8(strings)
        if self._space_symbol_ids is None:
            return self._tokenizer.tokenize(strings)
        if strings.shape.rank == 0:
            return self._tokenize_batch(strings[tf.newaxis])[0]
        return self._tokenize_batch(strings)

    def _tokenize_batch(self, strings):
        # The text is cut at each literal "▁"; each part is tokenized and followed by the byte
        # pieces of "▁", and the last part's are dropped.
        parts = tf.strings.split(strings, _SPACE_SYMBOL)  # [batch, (parts)]
        ids = self._tokenizer.tokenize(parts.values)  # [parts, (ids)]
        symbols = tf.RaggedTensor.from_tensor(
            tf.tile(self._space_symbol_ids[tf.newaxis], [tf.shape(parts.values)[0], 1])
        )  # [parts, 3]
        ids = parts.with_values(tf.concat([ids, symbols], axis=1)).merge_dims(1, 2)
        return ids[:, : -self._space_symbol_ids.shape[0]]  # [batch, (ids)]

    def detokenize(self, ids):
        """Returns the text of `ids`; end-of-text and padding ids are dropped.

        Args:
            ids: integer `tf.Tensor` or `tf.RaggedTensor` (or nested lists) of rank 1 or 2,
                values in `[0, vocab_size)`. Another dtype raises TypeError, another id
                `tf.errors.InvalidArgumentError`, both naming `ids`.

        Returns:
            A string `tf.Tensor`: `[batch]` for rank-2 ids, a scalar for rank-1 ids.

        Example:

        >>> tokenizer = SentencePieceTokenizer.train(["床前明月光"], vocab_size=300)
        >>> ids = tokenizer.tokenize("明月").numpy().tolist()
        >>> tokenizer.detokenize([tokenizer.pad_id, *ids, tokenizer.end_id]).numpy().decode()
        '明月'
        >>> tokenizer.detokenize([tokenizer.vocab_size])  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        InvalidArgumentError: `ids` must be integer token ids in [0, vocab_size)
        """
        text = self._tokenizer.detokenize(checked_ids(ids, self.vocab_size))
        return valid_utf8(text)

    def save(self, directory):
        """Writes the model to `directory/sentencepiece.model` (a standard SentencePiece file).

        The file is written to a temporary name in `directory` and renamed into place, so an
        interrupted save never leaves a half-written model where a good one was; it gets the
        permissions the umask gives any new file.

        Args:
            directory: str or path-like. Created if missing.

        Example:

        >>> tokenizer = SentencePieceTokenizer.train(["床前明月光"], vocab_size=300)
        >>> tokenizer.save("runs/poet/tokenizer")
        >>> SentencePieceTokenizer.load("runs/poet/tokenizer").model_proto == tokenizer.model_proto
        True
        """
        os.makedirs(directory, exist_ok=True)
        write_atomically(os.path.join(directory, _MODEL_FILE), self.model_proto)

    @classmethod
    def load(cls, directory):
        """Returns the tokenizer that `save` wrote into `directory`.

        Args:
            directory: str or path-like, as given to `save`.

        Example:

        >>> tokenizer = SentencePieceTokenizer.train(["床前明月光"], vocab_size=300)
        >>> tokenizer.save("tokenizer")
        >>> SentencePieceTokenizer.load("tokenizer").vocab_size == tokenizer.vocab_size
        True
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
                corpus, `split_digits=True`, or `minloglevel=0` to see SentencePiece's log).
                `required_chars` are kept in addition to "▁". The settings that make the model
                lossless cannot be changed: `byte_fallback`, `add_dummy_prefix`,
                `remove_extra_whitespaces`, `escape_whitespaces`, `treat_whitespace_as_suffix`,
                `user_defined_symbols`, the normalisation and the special ids.

        Returns:
            A `SentencePieceTokenizer`.

        Example:

        >>> tokenizer = SentencePieceTokenizer.train(
        ...     ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"], vocab_size=300
        ... )
        >>> tokenizer.detokenize(tokenizer.tokenize("明月 光")).numpy().decode()
        '明月 光'
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
        fixed = sorted(
            set(trainer_options)
            & {*_FIXED_OPTIONS, "normalization_rule_name", "normalization_rule_tsv"}
        )
        if fixed:
            raise ValueError(
                f"`trainer_options` must not set {fixed}: train fixes them so that the model is "
                f"lossless and has the documented id layout, got {fixed[0]}="
                f"{trainer_options[fixed[0]]!r}."
            )
        options = dict(
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            max_sentence_length=max_sentence_length,
            allow_whitespace_only_pieces=True,
            minloglevel=2,  # SentencePiece's own progress log, on stderr
        )
        options.update(trainer_options)
        options.update(_FIXED_OPTIONS)
        options["required_chars"] = _SPACE_SYMBOL + trainer_options.get("required_chars", "")
        model = io.BytesIO()
        try:
            with tempfile.TemporaryDirectory() as directory:
                rules = os.path.join(directory, "rules.tsv")
                with open(rules, "w", encoding="utf-8") as f:
                    f.write(_NO_OP_RULES)
                spm.SentencePieceTrainer.train(
                    sentence_iterator=iter(lines),
                    model_writer=model,
                    normalization_rule_tsv=rules,
                    **options,
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
