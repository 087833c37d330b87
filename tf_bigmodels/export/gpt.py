"""SavedModel export of a `GPTModel` with its tokenizer in the graph: strings in, strings out."""

import json
import numbers

import tensorflow as tf

import tf_bigmodels
from tf_bigmodels.export._layout import write_version
from tf_bigmodels.models import GPTModel, generation

_STRINGS = tf.TensorSpec([None], tf.string, name="prompts")


class GPTServingModule(tf.Module):
    """The exported object: the model's variables, the tokenizer and the serving functions.

    Signatures (all take a batch of prompts, any length, any language; outputs per prompt):

    - `serving_default(prompts: string [B]) -> {"completions": string [B]}` with the settings
      given at export (recorded in `generation_config`).
    - `generate(prompts: string [B], max_new_tokens: int32, temperature: float32, top_k: int32,
      top_p: float32, seed: int32) -> {"completions": string [B]}`; `top_k` 0 = off, `top_p` 1 =
      off, `temperature` 0 = greedy, `seed` < 0 = a fresh random seed per call.
    - `logits(token_ids: int32 [B, T]) -> {"logits": float32 [B, T, vocab]}`, T <= max_length.

    A completion is the generated continuation only (the prompt is not repeated); it ends before
    the tokenizer's end-of-text token, whose generation stops the row. Rules for odd prompts:
    an empty prompt is replaced by the end-of-text token (the start of a new document in
    training); a prompt longer than `max_length - max_new_tokens` tokens keeps its last
    `max_length - max_new_tokens` tokens (truncation from the left). Invalid settings raise
    `InvalidArgumentError` naming the input. Tokenization and detokenization run outside XLA; the
    decode loop (and the logits forward pass) are XLA-compiled when `jit_compile`.

    Functions that are not signatures, for Python callers of `tf.saved_model.load` (streaming):
    `tokenize(prompts) -> ragged int32`, `detokenize(ids) -> string`,
    `generate_tokens(ragged ids, max_new_tokens, temperature, top_k, top_p, seed)
    -> (new_tokens [B, N], new_lengths [B])`.

    Args:
        model: a built `GPTModel`.
        tokenizer: a tokenizer with `tokenize`, `detokenize`, `end_id` and `pad_id`
            (`tf_bigmodels.tokenizers.ByteTokenizer`).
        config: dict of the export settings (`max_new_tokens`, `temperature`, `top_k`, `top_p`,
            `seed`, `jit_compile`).

    Example:

    >>> module = GPTServingModule(model, ByteTokenizer(), config)  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, config):
        super().__init__(name="gpt_serving")
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = tf.Variable(
            json.dumps(config, sort_keys=True), trainable=False, name="generation_config"
        )
        self._config = config
        self._generate_ids = generation.generate_function(model, jit_compile=config["jit_compile"])
        self._forward = tf.function(lambda ids: model(ids), jit_compile=config["jit_compile"])

        scalar = tf.TensorSpec
        self.serving_default = tf.function(self._serving_default, input_signature=[_STRINGS])
        self.generate = tf.function(
            self._generate,
            input_signature=[
                _STRINGS,
                scalar([], tf.int32, name="max_new_tokens"),
                scalar([], tf.float32, name="temperature"),
                scalar([], tf.int32, name="top_k"),
                scalar([], tf.float32, name="top_p"),
                scalar([], tf.int32, name="seed"),
            ],
        )
        self.logits = tf.function(
            self._logits, input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")]
        )
        self.tokenize = tf.function(self._tokenize, input_signature=[_STRINGS])
        self.detokenize = tf.function(
            self.tokenizer.detokenize,
            input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)],
        )
        self.generate_tokens = tf.function(
            self._generate_tokens,
            input_signature=[
                tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                scalar([], tf.int32),
                scalar([], tf.float32),
                scalar([], tf.int32),
                scalar([], tf.float32),
                scalar([], tf.int32),
            ],
        )

    def _tokenize(self, prompts):
        ids = tf.cast(self.tokenizer.tokenize(prompts), tf.int32)
        empty = tf.equal(ids.row_lengths(), 0)
        start = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(empty, tf.int32))], self.tokenizer.end_id),
            tf.cast(empty, ids.row_splits.dtype),
        )
        return tf.concat([start, ids], axis=1)  # empty rows become [end_id]

    def _generate_tokens(self, ids, max_new_tokens, temperature, top_k, top_p, seed):
        seed = tf.where(seed < 0, tf.random.uniform([], 0, tf.int32.max, tf.int32), seed)
        _, new_tokens, new_lengths = self._generate_ids(
            ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            tf.constant(self.tokenizer.end_id, tf.int32),
            tf.constant(self.tokenizer.pad_id, tf.int32),
        )
        return new_tokens, new_lengths

    def _generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        new_tokens, new_lengths = self._generate_tokens(
            self._tokenize(prompts), max_new_tokens, temperature, top_k, top_p, seed
        )
        completions = self.tokenizer.detokenize(
            tf.RaggedTensor.from_tensor(new_tokens, lengths=new_lengths)
        )
        return {"completions": completions}

    def _serving_default(self, prompts):
        c = self._config
        return self._generate(
            prompts,
            tf.constant(c["max_new_tokens"], tf.int32),
            tf.constant(c["temperature"], tf.float32),
            tf.constant(c["top_k"], tf.int32),
            tf.constant(c["top_p"], tf.float32),
            tf.constant(c["seed"], tf.int32),
        )

    def _logits(self, token_ids):
        vocab, max_length = self.model.vocab_size, self.model.max_length
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
            return {"logits": self._forward(tf.identity(token_ids))}


def export_gpt(
    model,
    tokenizer,
    export_dir,
    *,
    version=None,
    max_new_tokens=64,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    jit_compile=True,
):
    """Writes a SavedModel that generates text from raw strings to `export_dir/<version>/`.

    The module (`GPTServingModule`) holds the model's variables and the tokenizer, so the
    SavedModel runs with `tensorflow` alone (`tensorflow_text` too for a tensorflow-text
    tokenizer); signatures `serving_default`, `generate` and `logits` are described there. The
    export settings are recorded as the JSON string variable `generation_config` of the loaded
    object. The directory is written atomically: to a temporary directory inside `export_dir`,
    renamed into place when complete (an interrupted export leaves no version directory).

    Args:
        model: a `GPTModel`.
        tokenizer: the model's tokenizer (`ByteTokenizer`); needs `end_id` and `pad_id`.
        export_dir: str or path-like. Parent of the version directories.
        version: positive int or None (next free number). Defaults to None.
        max_new_tokens: int in [0, max_length - 1]. For `serving_default`. Defaults to 64.
        temperature: float >= 0 (0 = greedy). For `serving_default`. Defaults to 1.0.
        top_k: int >= 0 or None (off). For `serving_default`. Defaults to None.
        top_p: float in (0, 1] or None (off). For `serving_default`. Defaults to None.
        seed: int in [0, 2**31 - 1] or None (a fresh seed per request). Defaults to None.
        jit_compile: bool. XLA-compile the decode loop and the logits pass; False gives a graph
            without XLA clusters (TF Serving builds that reject XLA). Defaults to True.

    Returns:
        The path of the written version directory (str).

    Example:

    >>> from tf_bigmodels.tokenizers import ByteTokenizer
    >>> path = export_gpt(model, ByteTokenizer(), "exports/gpt", temperature=0.8, top_k=40)
    ... # doctest: +SKIP
    >>> tf.saved_model.load(path).signatures["serving_default"](
    ...     prompts=tf.constant(["To be"]))["completions"]  # doctest: +SKIP
    """
    if not isinstance(model, GPTModel):
        raise TypeError(f"`model` must be a GPTModel, got {type(model).__name__}.")
    for attribute in ("tokenize", "detokenize", "end_id", "pad_id"):
        if not hasattr(tokenizer, attribute):
            raise TypeError(
                f"`tokenizer` must have `{attribute}` (a ByteTokenizer does), got "
                f"{type(tokenizer).__name__}."
            )
    limit = model.max_length - 1
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, numbers.Integral)
        or not 0 <= max_new_tokens <= limit
    ):
        raise ValueError(
            f"`max_new_tokens` must be an int in [0, {limit}], got {max_new_tokens!r}."
        )
    if not model.built:
        model(tf.zeros((1, 1), tf.int32))
    # One Python-side check of every setting, with the messages of GPTModel.generate.
    generation.check_settings(
        model, tf.ragged.constant([[0]]), max_new_tokens, temperature, top_k, top_p, seed, None, 0
    )
    config = {
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "top_k": int(top_k or 0),
        "top_p": 1.0 if top_p is None else float(top_p),
        "seed": -1 if seed is None else int(seed),
        "jit_compile": bool(jit_compile),
        "end_id": int(tokenizer.end_id),
        "pad_id": int(tokenizer.pad_id),
        "max_length": model.max_length,
        "vocab_size": model.vocab_size,
        "prompt_truncation": "left, to max_length - max_new_tokens tokens",
        "tf_bigmodels_version": tf_bigmodels.__version__,
    }
    module = GPTServingModule(model, tokenizer, config)
    signatures = {
        "serving_default": module.serving_default,
        "generate": module.generate,
        "logits": module.logits,
    }
    return write_version(
        export_dir, version, lambda path: tf.saved_model.save(module, path, signatures=signatures)
    )
