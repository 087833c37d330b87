"""SavedModel export of a BERT pre-trainer or classifier with the WordPiece tokenizer in the graph."""

import json

import tensorflow as tf
import tensorflow_text as tf_text

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_function, untracked
from tf_bigmodels._version import __version__
from tf_bigmodels.export import warmup
from tf_bigmodels.export._layout import write_version
from tf_bigmodels.models import BERTClassifier, BERTPretrainer
from tf_bigmodels.tokenizers import WordPieceTokenizer, check_tokenizer

_TEXT = tf.TensorSpec([None], tf.string, name="text")
_TEXT_PAIR = tf.TensorSpec([None], tf.string, name="text_pair")
_MASK_TOKEN = "[MASK]"


class BERTServingModule(tf.Module):
    """The exported object for a `BERTPretrainer` or a `BERTClassifier`.

    Text is tokenized in the graph: `[CLS] text [SEP]` (or `[CLS] text [SEP] text_pair [SEP]`,
    segment ids 0 then 1), trimmed round-robin to `seq_length` tokens, padded to the longest row
    of the batch. Strings stay outside the XLA-compiled model call.

    Signatures of a pre-trainer export:

    - `serving_default(text: string [B]) -> {"pooled_output": [B, d], "sequence_output":
      [B, T, d], "padding_mask": int32 [B, T]}` (float32; 1 = real token).
    - `encode_pair(text: string [B], text_pair: string [B])` -> the same, for sentence pairs.
    - `fill_mask(text: string [B]) -> {"tokens": string [B, M, top_k], "scores": float32
      [B, M, top_k], "mask_counts": int32 [B]}`: for each literal `[MASK]` in the text (M = most
      masks in a row of the batch), the `top_k` most likely wordpieces and their probabilities;
      slots past a row's `mask_counts` hold "" and 0.

    Signature of a classifier export:

    - `serving_default(text: string [B]) -> {"probabilities": float32 [B, C], "label": int32 [B],
      "label_name": string [B]}` (label names are the class indices unless `class_names` given).

    Every signature checks its inputs in the graph, so a bad request fails with an
    `InvalidArgumentError` naming the input and never reaches an op that could crash the serving
    process: `text` and `text_pair` must be 1-D (a scalar or a matrix names the input and its
    shape), and `encode_pair` needs `text` and `text_pair` of one batch size. An empty batch
    (B = 0) gives empty outputs.

    Args:
        model: a built `BERTPretrainer` or `BERTClassifier`.
        tokenizer: its `WordPieceTokenizer`.
        config: dict of export settings (`seq_length`, `top_k`, `class_names`, `jit_compile`).

    Example:

    >>> from tf_bigmodels.models import BERTEncoder
    >>> from tf_bigmodels.tokenizers import WordPieceTokenizer
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat"])
    >>> encoder = BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, max_length=16)
    >>> module = BERTServingModule(
    ...     BERTPretrainer(encoder), tokenizer, {"seq_length": 16, "top_k": 2, "jit_compile": False})
    >>> module.fill_mask(tf.constant(["the [MASK]", "[MASK] [MASK] cat"]))["mask_counts"].numpy()
    array([1, 2], dtype=int32)
    """

    def __init__(self, model, tokenizer, config):
        super().__init__(name="bert_serving")
        # The model's variables, not the model: a compiled model tracks its optimizer, whose
        # state (two moments per weight) would be saved too, and loaded by every server.
        self.model_variables = list(model.variables)
        self._pretrainer = isinstance(model, BERTPretrainer)
        self.tokenizer = tokenizer
        self.export_config = tf.Variable(
            json.dumps(config, sort_keys=True), trainable=False, name="export_config"
        )
        self._config = config
        self._vocabulary = tf.constant(list(tokenizer.vocabulary))
        # What the signatures call; saved inside them, not as attributes of their own.
        jit_compile = config["jit_compile"]
        self._graph = untracked(
            run=graph_function(lambda inputs: model(inputs), jit_compile=jit_compile)
        )
        if self._pretrainer:
            self._graph.encoder = graph_function(
                lambda inputs: model.encoder(inputs), jit_compile=jit_compile
            )
            self.serving_default = graph_function(self._encode, input_signature=[_TEXT])
            self.encode_pair = graph_function(self._encode, input_signature=[_TEXT, _TEXT_PAIR])
            self.fill_mask = graph_function(self._fill_mask, input_signature=[_TEXT])
        else:
            self._class_names = tf.constant(config["class_names"])
            self.serving_default = graph_function(self._classify, input_signature=[_TEXT])

    def signatures(self):
        """The signature functions by name, as given to `tf.saved_model.save`.

        Example:

        >>> from tf_bigmodels.models import BERTEncoder
        >>> from tf_bigmodels.tokenizers import WordPieceTokenizer
        >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"])
        >>> classifier = BERTClassifier(BERTEncoder(6, 8, 1, 16, 1), num_classes=2)
        >>> config = {"seq_length": 8, "top_k": 1, "jit_compile": False, "class_names": ["n", "y"]}
        >>> sorted(BERTServingModule(classifier, tokenizer, config).signatures())
        ['serving_default']
        """
        if self._pretrainer:
            return {
                "serving_default": self.serving_default,
                "encode_pair": self.encode_pair,
                "fill_mask": self.fill_mask,
            }
        return {"serving_default": self.serving_default}

    def warmup_requests(self):
        """One request for each signature, for TF Serving's warm-up file
        (`tf_bigmodels.export.warmup`)."""
        text = {"text": ["warm up"]}
        if self._pretrainer:
            return {
                "serving_default": text,
                "encode_pair": {**text, "text_pair": ["warm up"]},
                "fill_mask": {"text": [f"warm {_MASK_TOKEN} up"]},
            }
        return {"serving_default": text}

    def _pack(self, segments):
        """Ragged wordpiece ids per segment -> the encoder's dense input dict."""
        tokenizer = self.tokenizer
        budget = self._config["seq_length"] - 1 - len(segments)  # [CLS] and one [SEP] each
        trimmed = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
        ids, segment_ids = tf_text.combine_segments(trimmed, tokenizer.cls_id, tokenizer.sep_id)
        return {
            "token_ids": _dense(ids, tokenizer.pad_id),
            "segment_ids": _dense(segment_ids, 0),
            "padding_mask": _dense(tf.ones_like(ids), 0),
        }

    def _texts(self, text, text_pair=None):
        """The checked inputs, each a 1-D string tensor; InvalidArgumentError names a bad one."""
        # EnsureShape checks the shape a request really has (a signature does not) and its
        # error names the input; tensorflow-text's ops abort the process on inconsistent shapes.
        text = tf.ensure_shape(text, [None])
        if text_pair is None:
            return [text]
        text_pair = tf.ensure_shape(text_pair, [None])
        same_batch = tf.debugging.assert_equal(
            tf.shape(text)[0],
            tf.shape(text_pair)[0],
            message="`text` and `text_pair` must have the same batch size",
        )
        with tf.control_dependencies([same_batch]):
            return [tf.identity(text), tf.identity(text_pair)]

    def _encode(self, text, text_pair=None):
        segments = [self.tokenizer.tokenize(t) for t in self._texts(text, text_pair)]
        inputs = self._pack(segments)
        outputs = self._graph.encoder(inputs)
        return {
            "pooled_output": tf.cast(outputs["pooled_output"], tf.float32),
            "sequence_output": tf.cast(outputs["sequence_output"], tf.float32),
            "padding_mask": inputs["padding_mask"],
        }

    def _tokenize_with_masks(self, text):
        """Wordpiece ids where every literal "[MASK]" becomes `mask_id` (the tokenizer would split
        it into "[", "mask", "]")."""
        pieces = tf.strings.split(text, sep=_MASK_TOKEN)  # (B, pieces)
        piece_ids = self.tokenizer.tokenize(pieces.flat_values)  # (all pieces, tokens)
        mask = tf.fill([piece_ids.nrows(), 1], tf.constant(self.tokenizer.mask_id, tf.int32))
        piece_ids = tf.concat([piece_ids, tf.RaggedTensor.from_tensor(mask)], axis=1)
        ids = pieces.with_flat_values(piece_ids).merge_dims(1, 2)  # (B, tokens)
        return ids[:, :-1]  # a mask follows every piece but the last

    def _fill_mask(self, text):
        (text,) = self._texts(text)
        inputs = self._pack([self._tokenize_with_masks(text)])
        is_mask = tf.equal(inputs["token_ids"], self.tokenizer.mask_id)
        positions = tf.ragged.boolean_mask(
            tf.broadcast_to(tf.range(tf.shape(is_mask)[1]), tf.shape(is_mask)), is_mask
        )
        counts = tf.cast(positions.row_lengths(), tf.int32)
        shown = tf.reduce_max(tf.concat([counts, [0]], axis=0))  # 0, not INT_MIN, for B = 0
        slots = tf.maximum(shown, 1)  # the MLM head needs one slot at least
        mask_positions = tf.pad(positions.to_tensor(0), [[0, 0], [0, slots - shown]])
        logits = self._graph.run({**inputs, "mask_positions": mask_positions})["mlm_logits"]
        # logits: (B, slots, vocab)
        scores, indices = tf.math.top_k(tf.nn.softmax(logits), k=self._config["top_k"])
        valid = (tf.range(slots)[tf.newaxis] < counts[:, tf.newaxis])[..., tf.newaxis]
        return {
            "tokens": tf.where(valid, tf.gather(self._vocabulary, indices), "")[:, :shown],
            "scores": tf.where(valid, scores, 0.0)[:, :shown],
            "mask_counts": counts,
        }

    def _classify(self, text):
        (text,) = self._texts(text)
        logits = self._graph.run(self._pack([self.tokenizer.tokenize(text)]))
        probabilities = tf.nn.softmax(logits)
        label = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "label": label,
            "label_name": tf.gather(self._class_names, label),
        }


def _dense(ragged, fill):
    """`[B, (T)]` -> `[B, max(T, 1)]`: an empty batch (width 0) gets the column the pooler reads."""
    dense = ragged.to_tensor(fill)
    missing = tf.maximum(1 - tf.shape(dense)[1], 0)
    return tf.pad(dense, [[0, 0], [0, missing]], constant_values=fill)


def export_bert(
    model,
    tokenizer,
    export_dir,
    *,
    version=None,
    seq_length=None,
    top_k=5,
    class_names=None,
    jit_compile=True,
):
    """Writes a SavedModel of a BERT pre-trainer or classifier to `export_dir/<version>/`.

    The WordPiece tokenizer travels inside the graph, so the SavedModel takes raw strings and
    runs with `tensorflow` and `tensorflow_text` imported (tensorflow-text provides the
    tokenizer's ops); the signatures are described in `BERTServingModule`. Settings are recorded
    as the JSON string variable `export_config` of the loaded object. Written atomically like
    `export_gpt`, with TF Serving's warm-up file (one request for each signature) as well.

    Args:
        model: a `BERTPretrainer` (signatures `serving_default`, `encode_pair`, `fill_mask`) or a
            `BERTClassifier` (`serving_default`: probabilities and label).
        tokenizer: the `WordPieceTokenizer` the model was trained with.
        export_dir: str or path-like. Parent of the version directories.
        version: positive int or None (next free number). Defaults to None.
        seq_length: int in [3, encoder max_length] or None (the encoder's `max_length`). Longer
            inputs are trimmed (round-robin between a pair). Defaults to None.
        top_k: int in [1, vocab_size]. Candidates per `[MASK]` in `fill_mask`. Defaults to 5.
        class_names: list of `num_classes` str or None (the class indices as text). Classifier
            only.
        jit_compile: bool. XLA-compile the model call; False for a graph without XLA clusters.
            Defaults to True.

    Returns:
        The path of the written version directory (str).

    Example:

    >>> from tf_bigmodels.models import BERTEncoder
    >>> from tf_bigmodels.tokenizers import WordPieceTokenizer
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat"])
    >>> pretrainer = BERTPretrainer(BERTEncoder(tokenizer.vocab_size, 16, 2, 32, 1, max_length=16))
    >>> path = export_bert(pretrainer, tokenizer, "exports/bert", top_k=3, jit_compile=False)
    >>> path
    'exports/bert/1'
    >>> fill_mask = tf.saved_model.load(path).signatures["fill_mask"]
    >>> fill_mask(text=tf.constant(["the [MASK] sat ."]))["tokens"].shape
    TensorShape([1, 1, 3])
    """
    if not isinstance(model, (BERTPretrainer, BERTClassifier)):
        raise TypeError(
            f"`model` must be a BERTPretrainer or a BERTClassifier, got {type(model).__name__}."
        )
    # The signatures write [CLS], [SEP] and find [MASK]: a WordPiece vocabulary's special tokens.
    check_tokenizer(tokenizer, WordPieceTokenizer)
    encoder = model.encoder
    if tokenizer.vocab_size != encoder.vocab_size:
        raise ValueError(
            f"`tokenizer` must have the encoder's vocab_size={encoder.vocab_size}, got one with "
            f"vocab_size={tokenizer.vocab_size}."
        )
    # [CLS] text [SEP] needs 3 positions at least; the default is documented above.
    seq_length = _checks.integer(
        "seq_length", seq_length, low=3, high=encoder.max_length, none_ok=True
    )
    top_k = _checks.integer("top_k", top_k, low=1, high=encoder.vocab_size)
    config = {
        "seq_length": encoder.max_length if seq_length is None else seq_length,
        "top_k": top_k,
        "jit_compile": _checks.boolean("jit_compile", jit_compile),
        "tf_bigmodels_version": __version__,
    }
    if isinstance(model, BERTClassifier):
        if class_names is None:
            class_names = [str(i) for i in range(model.num_classes)]
        class_names = list(class_names)
        if len(class_names) != model.num_classes or not all(
            isinstance(n, str) for n in class_names
        ):
            raise ValueError(
                f"`class_names` must be None or {model.num_classes} strings (one per "
                f"class), got {class_names!r}."
            )
        config["class_names"] = class_names
    elif class_names is not None:
        raise ValueError(
            f"`class_names` must be None for a {type(model).__name__} (it applies to a "
            f"BERTClassifier only), got {class_names!r}."
        )
    if not model.built:
        inputs = {
            "token_ids": tf.zeros((1, 3), tf.int32),
            "segment_ids": tf.zeros((1, 3), tf.int32),
            "padding_mask": tf.ones((1, 3), tf.int32),
        }
        model(
            inputs
            if isinstance(model, BERTClassifier)
            else {**inputs, "mask_positions": tf.zeros((1, 1), tf.int32)}
        )
    module = BERTServingModule(model, tokenizer, config)
    return write_version(
        export_dir,
        version,
        lambda path: warmup.save(module, path, module.signatures()),
    )
