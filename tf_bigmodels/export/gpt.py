"""SavedModel export of a `GPTModel` with its tokenizer in the graph: strings in, strings out."""

import dataclasses
import json

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_function, untracked
from tf_bigmodels._version import __version__
from tf_bigmodels.export import warmup
from tf_bigmodels.export._layout import write_version
from tf_bigmodels.models import GPTModel, generation
from tf_bigmodels.models.compression import WEIGHTS, compress_weights, weights_format
from tf_bigmodels.models.generation import GenerationSettings
from tf_bigmodels.tokenizers import check_tokenizer

# Signature inputs accept any shape, so that a wrong rank is reported in-graph naming the input
# (a fixed shape would fail later inside an op, with a message that names no input).
_ANY_STRINGS = tf.TensorSpec(None, tf.string, name="prompts")
_IDS = tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)
_INCOMPLETE_END = "\\x{FFFD}+$"  # what a character cut off at the end detokenizes to


class GPTServingModule(tf.Module):
    """The exported object: the model's variables, the tokenizer and the serving functions.

    Signatures (all take a batch of prompts, any length, any language; outputs per prompt):

    - `serving_default(prompts: string [B]) -> {"completions": string [B]}` with the settings
      given at export (recorded in `generation_config`).
    - `generate(prompts: string [B], max_new_tokens: int32, temperature: float32, top_k: int32,
      top_p: float32, seed: int32) -> {"completions": string [B]}`, the settings as scalars:
      `top_k` 0 = off, `top_p` 1 = off, `temperature` 0 = greedy, `seed` < 0 = a fresh random
      seed per call.
    - `logits(token_ids: int32 [B, T]) -> {"logits": float32 [B, T, vocab]}`, T <= max_length.

    A completion is the generated continuation only (the prompt is not repeated); it ends before
    the tokenizer's end-of-text token, whose generation stops the row, and a character cut off
    by the token limit (incomplete UTF-8, which detokenizes to U+FFFD) is removed from its end.
    Odd prompts: an empty prompt is replaced by the end-of-text token (the start of a new
    document in training); a prompt longer than `max_length - max_new_tokens` tokens keeps its
    last `max_length - max_new_tokens` tokens. Every input is checked in-graph: a wrong rank or
    an invalid setting raises `InvalidArgumentError` naming the input, and an empty batch gives
    an empty result. Tokenization and detokenization run outside XLA; the prompt pass, the
    decode loop and the logits pass are XLA-compiled when `jit_compile`.

    Functions that are not signatures, for Python callers of `tf.saved_model.load` (`stream_text`
    uses them to carry the key/value cache from chunk to chunk): `tokenize(prompts) -> ragged
    int32`, `detokenize(ids) -> string`, `decode_start(ids, settings, window) -> (ids, state)` and
    `decode_steps(state, stop, settings) -> state`, with `settings` a dict as in
    `tf_bigmodels.models.generation.SETTINGS_SIGNATURE` (see `start_function` and
    `steps_function` there), and `decode_batch_steps(state, tokens) -> (state, tokens, counts)`,
    the decode loop of rows with their own settings that join and leave a batch
    (`batch_steps_function` there; `tf_bigmodels.export.batching.ContinuousBatcher` uses it).

    Args:
        model: a built `GPTModel`, or a copy from `tf_bigmodels.models.compress_weights` (its
            weight format is recorded in `generation_config` as "weights").
        tokenizer: a tokenizer with `tokenize`, `detokenize`, `end_id` and `pad_id`
            (`tf_bigmodels.tokenizers.ByteTokenizer`), of the model's `vocab_size`.
        settings: `GenerationSettings` of `serving_default` (its `end_id` and `pad_id` are the
            tokenizer's).
        jit_compile: bool. XLA-compile the prompt pass, the decode loop and the logits pass.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> settings = GenerationSettings(4, temperature=0.0, end_id=256, pad_id=257)
    >>> module = GPTServingModule(model, ByteTokenizer(), settings, jit_compile=False)
    >>> module.serving_default(tf.constant(["To be"]))["completions"].shape
    TensorShape([1])
    """

    def __init__(self, model, tokenizer, settings, *, jit_compile=True):
        super().__init__(name="gpt_serving")
        _check_vocabulary(model, tokenizer)
        # The model's variables, not the model: a compiled model tracks its optimizer, whose
        # state (two moments per weight) would be saved too, and loaded by every server.
        self.model_variables = list(model.variables)
        self._vocab_size, self._max_length = model.vocab_size, model.max_length
        self.tokenizer = tokenizer
        self._settings = settings
        config = {
            **dataclasses.asdict(settings),
            "jit_compile": bool(jit_compile),
            "weights": weights_format(model),
            "max_length": model.max_length,
            "vocab_size": model.vocab_size,
            "prompt_truncation": "left, to max_length - max_new_tokens tokens",
            "completions": "continuation only; a character cut off at the end is removed",
            "tf_bigmodels_version": __version__,
        }
        self.generation_config = tf.Variable(
            json.dumps(config, sort_keys=True), trainable=False, name="generation_config"
        )
        # What the signatures call; saved inside them, not as attributes of their own.
        self._graph = untracked(
            start=generation.start_function(model, jit_compile=jit_compile),
            steps=generation.steps_function(model, jit_compile=jit_compile),
            batch_steps=generation.batch_steps_function(model, jit_compile=jit_compile),
            generate_ids=generation.generate_function(model, jit_compile=jit_compile),
            forward=graph_function(lambda ids: model(ids), jit_compile=jit_compile),
        )

        scalar = tf.TensorSpec
        self.serving_default = graph_function(self._serving_default, input_signature=[_ANY_STRINGS])
        self.generate = graph_function(
            self._generate,
            input_signature=[
                _ANY_STRINGS,
                scalar(None, tf.int32, name="max_new_tokens"),
                scalar(None, tf.float32, name="temperature"),
                scalar(None, tf.int32, name="top_k"),
                scalar(None, tf.float32, name="top_p"),
                scalar(None, tf.int32, name="seed"),
            ],
        )
        self.logits = graph_function(
            self._logits, input_signature=[tf.TensorSpec(None, tf.int32, name="token_ids")]
        )
        self.tokenize = graph_function(self._tokenize, input_signature=[_ANY_STRINGS])
        self.detokenize = graph_function(self.tokenizer.detokenize, input_signature=[_IDS])
        self.decode_start = graph_function(
            self._graph.start,
            input_signature=[
                _IDS,
                generation.SETTINGS_SIGNATURE,
                tf.TensorSpec([], tf.int32, name="window"),
            ],
        )
        self.decode_steps = graph_function(
            self._graph.steps,
            input_signature=[
                generation.state_signature(model),
                tf.TensorSpec([], tf.int32, name="stop"),
                generation.SETTINGS_SIGNATURE,
            ],
        )
        self.decode_batch_steps = graph_function(
            self._graph.batch_steps,
            input_signature=[
                generation.batch_state_signature(model),
                tf.TensorSpec([None, None], tf.int32, name="tokens"),
            ],
        )

    def warmup_requests(self):
        """One request for each signature, for TF Serving's warm-up file
        (`tf_bigmodels.export.warmup`)."""
        settings = {"max_new_tokens": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}
        return {
            "serving_default": {"prompts": ["warm up"]},
            "generate": {"prompts": ["warm up"], **settings},
            "logits": {"token_ids": [[self.tokenizer.end_id]]},
        }

    def _tokenize(self, prompts):
        prompts = _checked(prompts, 1, "prompts")
        ids = tf.cast(self.tokenizer.tokenize(prompts), tf.int32)
        empty = tf.equal(ids.row_lengths(), 0)
        start = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(empty, tf.int32))], self.tokenizer.end_id),
            tf.cast(empty, ids.row_splits.dtype),
        )
        return tf.concat([start, ids], axis=1)  # empty rows become [end_id]

    def _complete(self, prompts, settings):
        _, new_tokens, new_lengths = self._graph.generate_ids(self._tokenize(prompts), settings)
        text = self.tokenizer.detokenize(
            tf.RaggedTensor.from_tensor(new_tokens, lengths=new_lengths)
        )
        return {"completions": tf.strings.regex_replace(text, _INCOMPLETE_END, "")}

    def _generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        given = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        settings = self._settings.as_tensors()  # end_id and pad_id: the tokenizer's
        settings.update({name: _checked(value, 0, name) for name, value in given.items()})
        return self._complete(prompts, settings)

    def _serving_default(self, prompts):
        return self._complete(prompts, self._settings.as_tensors())

    def _logits(self, token_ids):
        token_ids = _checked(token_ids, 2, "token_ids")
        vocab, max_length = self._vocab_size, self._max_length
        checks = [
            tf.debugging.assert_less_equal(
                tf.shape(token_ids)[1],
                max_length,
                message=f"`token_ids` may hold at most max_length={max_length} positions",
            ),
            tf.debugging.assert_non_negative(
                token_ids, message=f"`token_ids` must be in [0, {vocab})"
            ),
            tf.debugging.assert_less(
                token_ids, vocab, message=f"`token_ids` must be in [0, {vocab})"
            ),
        ]
        with tf.control_dependencies(checks):
            return {"logits": self._graph.forward(tf.identity(token_ids))}


def _check_vocabulary(model, tokenizer):
    """Raises unless `tokenizer` is a tokenizer with the model's vocabulary size."""
    check_tokenizer(tokenizer)
    # The model's ids are the tokenizer's: another vocabulary would decode to other text, or give
    # the model ids its embedding table does not hold.
    if tokenizer.vocab_size != model.vocab_size:
        raise ValueError(
            f"`tokenizer` must have the model's vocab_size={model.vocab_size}, got one with "
            f"vocab_size={tokenizer.vocab_size}."
        )


def _checked(value, rank, name):
    """`value` with its rank checked in-graph (an error naming `name`) and set statically."""
    kind = ("a scalar", "a vector", "a matrix")[rank]
    check = tf.debugging.assert_rank(value, rank, message=f"`{name}` must be {kind} (rank {rank})")
    with tf.control_dependencies([check]):
        value = tf.identity(value)
    # A reshape, not tf.ensure_shape: shape inference evaluates ensure_shape before the check
    # runs, and its message would not name the input.
    shape = {0: [], 1: [-1], 2: tf.stack([-1, tf.shape(value)[-1]])}[rank]
    return tf.reshape(value, shape)


def export_gpt(
    model,
    tokenizer,
    export_dir,
    *,
    version=None,
    max_new_tokens=None,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    jit_compile=True,
    weights="float32",
):
    """Writes a SavedModel that generates text from raw strings to `export_dir/<version>/`.

    The module (`GPTServingModule`) holds the model's variables and the tokenizer, so the
    SavedModel runs with `tensorflow` alone (`tensorflow_text` too for a tensorflow-text
    tokenizer); signatures `serving_default`, `generate` and `logits` are described there.
    Completions are trimmed: a character cut off by the token limit is removed from the end. The
    settings of `serving_default` are `GenerationSettings` (documented there), recorded as the
    JSON string variable `generation_config` of the loaded object. The directory is written
    atomically: to a temporary directory inside `export_dir`, renamed into place when complete
    (an interrupted export leaves no version directory). It holds TF Serving's warm-up file,
    `assets.extra/tf_serving_warmup_requests`: one request for each signature, replayed by a
    server at load (see `tf_bigmodels.export.warmup`).

    Args:
        model: a `GPTModel`.
        tokenizer: the model's tokenizer (`ByteTokenizer`, `SentencePieceTokenizer`); needs
            `end_id` and `pad_id`, and its `vocab_size` must be the model's.
        export_dir: str or path-like. Parent of the version directories.
        version: positive int or None (next free number). Defaults to None.
        max_new_tokens: int in [0, max_length - 1] or None. Tokens `serving_default` adds.
            Defaults to None: half the context, `model.max_length // 2`.
        temperature, top_k, top_p, seed: the `GenerationSettings` of `serving_default`
            (`seed=None`: a fresh seed per request). Defaults to 1.0, None, None, None.
        jit_compile: bool. XLA-compile the decode loop and the logits pass; False gives a graph
            without XLA clusters (TF Serving builds that reject XLA). Defaults to True.
        weights: "float32", "bfloat16" or "int8". Storage of the exported weights: bfloat16
            halves the bytes each generated token reads, int8 quarters them (logits and sampling
            stay float32; see `tf_bigmodels.models.compress_weights`). Recorded in
            `generation_config`. Defaults to "float32".

    Returns:
        The path of the written version directory (str).

    Example:

    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> model = GPTModel(258, 16, 2, 32, 1, max_length=16)  # untrained: it writes noise
    >>> path = export_gpt(model, ByteTokenizer(), "exports/gpt", max_new_tokens=4,
    ...                   temperature=0.8, top_k=40, jit_compile=False)
    >>> path
    'exports/gpt/1'
    >>> serve = tf.saved_model.load(path).signatures["serving_default"]
    >>> serve(prompts=tf.constant(["To be", "你好"]))["completions"].shape
    TensorShape([2])
    """
    if not isinstance(model, GPTModel):
        raise TypeError(f"`model` must be a GPTModel, got {type(model).__name__}.")
    _check_vocabulary(model, tokenizer)
    settings = GenerationSettings(
        model.max_length // 2 if max_new_tokens is None else max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        end_id=tokenizer.end_id,
        pad_id=tokenizer.pad_id,
    ).check_model(model)
    jit_compile = _checks.boolean("jit_compile", jit_compile)
    weights = _checks.one_of("weights", weights, WEIGHTS)
    model = compress_weights(model, weights)
    module = GPTServingModule(model, tokenizer, settings, jit_compile=jit_compile)
    signatures = {
        "serving_default": module.serving_default,
        "generate": module.generate,
        "logits": module.logits,
    }
    return write_version(export_dir, version, lambda path: warmup.save(module, path, signatures))
