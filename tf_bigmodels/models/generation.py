"""Key/value-cached text generation for `GPTModel`: one `tf.while_loop` in one XLA-compiled function.

How a call runs:

1. `generate_function(model)` (a `tf.function` with a fixed input signature, traced once per model)
   checks the settings in-graph, truncates each prompt from the left to its last
   `max_length - max_new_tokens` tokens (so prompt + new tokens fit the position table), and
   left-pads the prompts to a *shape bucket*: the smallest power of two >= the longest prompt
   (at least 16). The number of new-token slots is bucketed the same way.
2. `decode_function(model)` (`jit_compile=True` by default) processes the padded prompts once,
   filling a static-shape key/value cache (`num_layers` tensors
   `(batch, 2, num_heads, prompt_bucket + new_bucket, head_dim)`), then runs a `tf.while_loop`
   that samples one token per row per step and feeds it back through the cache.

Left padding: row b's real tokens occupy cache slots `prompt_bucket - length_b ..`; a padding mask
over the cache slots hides the slots before them, and each token's position is counted from the
row's first real token, so a left-padded row gives exactly the logits of the same prompt alone.

Retracing: sampling settings, `max_new_tokens`, the end/pad ids and the prompts are all tensors,
and the decode function is traced with unknown batch and length, so it is traced once per model
and `jit_compile` setting. XLA compiles one executable per distinct shape
`(batch, prompt_bucket, new_bucket)`; that is the point of the buckets.

Sampling is `sample_next_token`, written here rather than taken from `keras_hub.samplers`: the
keras-hub samplers run their own Python-level loop with settings fixed as Python numbers at
construction (a new temperature or k means a new sampler and a new trace), and their `top_k` uses
`top_k(k)` with a constant k, which XLA requires; here every setting is a tensor and top-k/top-p
are one sort and a threshold, so one compiled loop serves every setting.
"""

import math
import numbers
import random
import weakref

import tensorflow as tf

_MIN_BUCKET = 16
_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> {(kind, jit_compile): tf.function}


def generate(
    model,
    token_ids,
    max_new_tokens,
    *,
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    end_id=None,
    pad_id=0,
    jit_compile=True,
):
    """Continues each prompt by up to `max_new_tokens` tokens; see the module docstring.

    Settings are checked in Python first (a `ValueError` naming the argument); the rules are
    those of `generate_function`: greedy when `temperature == 0`; top-k and top-p (nucleus)
    filters applied after the temperature; a prompt longer than `max_length - max_new_tokens`
    keeps its last `max_length - max_new_tokens` tokens (truncation from the left).

    Args:
        model: a built `GPTModel`.
        token_ids: prompts: int `(batch, seq)` array or tensor, a `tf.RaggedTensor`, or a list of
            lists of ids. Rows may differ in length; each needs at least one id.
        max_new_tokens: int in `[0, model.max_length - 1]`.
        temperature: float >= 0. 0 means greedy. Defaults to 1.0.
        top_k: int >= 0 or None. Keep only the k most likely tokens; 0/None = all.
        top_p: float in (0, 1] or None. Keep the smallest set of most likely tokens whose
            probability is >= top_p; None = 1.0 = all.
        seed: int in [0, 2**31 - 1] or None. The same seed gives the same tokens (on the same
            device and `jit_compile` setting). None draws a seed from Python's `random`.
        end_id: int in `[0, vocab_size)` or None. A row stops after producing it; later slots get
            `pad_id`. Defaults to None.
        pad_id: int. Fill value after `end_id`. Defaults to 0.
        jit_compile: bool. Compile the decode loop with XLA. Defaults to True.

    Returns:
        Prompt (after truncation) followed by the new tokens: int32 `(batch, seq + max_new_tokens)`
        for dense input (slots after an end token hold `pad_id`); for ragged or list input a
        `tf.RaggedTensor` whose rows end at their end token (or after `max_new_tokens` tokens).

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> out = generate(model, [[104, 105], [72]], 4, temperature=0.0)
    >>> out.row_lengths().numpy()
    array([6, 5])
    """
    dense = not isinstance(token_ids, (list, tuple, tf.RaggedTensor))
    prompts = _as_ragged(token_ids)
    check_settings(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, end_id, pad_id)
    if seed is None:
        seed = random.randrange(2**31)
    prompts, new_tokens, new_lengths = generate_function(model, jit_compile=jit_compile)(
        prompts,
        tf.constant(max_new_tokens, tf.int32),
        tf.constant(temperature, tf.float32),
        tf.constant(top_k or 0, tf.int32),
        tf.constant(1.0 if top_p is None else top_p, tf.float32),
        tf.constant(seed, tf.int32),
        tf.constant(-1 if end_id is None else end_id, tf.int32),
        tf.constant(pad_id, tf.int32),
    )
    if dense:
        return tf.concat([prompts.to_tensor(), new_tokens], axis=1)
    return tf.concat([prompts, tf.RaggedTensor.from_tensor(new_tokens, lengths=new_lengths)], 1)


def generate_function(model, *, jit_compile=True):
    """The model's in-graph generation function (a `tf.function`, built once per model).

    Signature: `(prompts, max_new_tokens, temperature, top_k, top_p, seed, end_id, pad_id)` ->
    `(prompts, new_tokens, new_lengths)`, with `prompts` an int32 `tf.RaggedTensor`
    `(batch, None)`, the settings scalars (int32, except float32 `temperature` and `top_p`;
    `end_id` -1 = none), and outputs: the prompts after left truncation (ragged),
    `new_tokens` int32 `(batch, max_new_tokens)` (`pad_id` after a row's end token) and
    `new_lengths` int32 `(batch,)` (new tokens per row, end token included).

    Invalid settings raise `tf.errors.InvalidArgumentError` naming the input: `max_new_tokens`
    outside `[0, max_length - 1]`, negative or non-finite `temperature`, negative `top_k`, `top_p`
    outside (0, 1], an empty prompt or a token id outside `[0, vocab_size)` (`token_ids`).
    Strings never enter it, so it is safe to call from an exported graph; only the inner
    `decode_function` is XLA-compiled.

    Args:
        model: a built `GPTModel`.
        jit_compile: bool. Whether the inner decode loop is XLA-compiled. Defaults to True.

    Example:

    >>> fn = generate_function(model)  # doctest: +SKIP
    >>> prompts, new, lengths = fn(tf.ragged.constant([[1, 2]]), 8, 0.0, 0, 1.0, 0, -1, 0)
    ... # doctest: +SKIP
    """
    functions = _FUNCTIONS.setdefault(model, {})
    key = ("generate", bool(jit_compile))
    if key not in functions:
        model_ref = weakref.ref(model)
        decode = decode_function(model, jit_compile=jit_compile)

        @tf.function(
            input_signature=[
                tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                tf.TensorSpec([], tf.int32, name="max_new_tokens"),
                tf.TensorSpec([], tf.float32, name="temperature"),
                tf.TensorSpec([], tf.int32, name="top_k"),
                tf.TensorSpec([], tf.float32, name="top_p"),
                tf.TensorSpec([], tf.int32, name="seed"),
                tf.TensorSpec([], tf.int32, name="end_id"),
                tf.TensorSpec([], tf.int32, name="pad_id"),
            ]
        )
        def generate_in_graph(
            prompts, max_new_tokens, temperature, top_k, top_p, seed, end_id, pad_id
        ):
            gpt = model_ref()
            checks = _graph_checks(gpt, prompts, max_new_tokens, temperature, top_k, top_p)
            with tf.control_dependencies(checks):
                prompts = _truncate_left(prompts, gpt.max_length - max_new_tokens)
                lengths = tf.cast(prompts.row_lengths(), tf.int32)
                padded = _left_pad(prompts, lengths, _bucket(tf.reduce_max(lengths)), pad_id)
                buffer = tf.fill([tf.shape(padded)[0], _bucket(max_new_tokens)], pad_id)
                new_tokens, new_lengths = decode(
                    padded,
                    lengths,
                    buffer,
                    max_new_tokens,
                    temperature,
                    top_k,
                    top_p,
                    seed,
                    end_id,
                    pad_id,
                )
            return prompts, new_tokens[:, :max_new_tokens], new_lengths

        functions[key] = generate_in_graph
    return functions[key]


def decode_function(model, *, jit_compile=True):
    """The model's cached decode loop, a `tf.function` (XLA-compiled when `jit_compile`).

    Arguments: `prompt` int32 `(batch, P)` left-padded with `pad_id`, `prompt_lengths` `(batch,)`,
    `buffer` int32 `(batch, N)` filled with `pad_id` (its width N fixes the number of new-token
    slots and, with P, the static cache length P + N), then the scalar settings
    `max_new_tokens <= N, temperature, top_k, top_p, seed, end_id, pad_id`. Returns the filled
    buffer and the number of new tokens per row. The loop stops early once every row has produced
    `end_id`. Shapes come only from the inputs' shapes, so XLA sees compile-time constants.
    Its `experimental_get_tracing_count()` counts traces (the retracing guard in the tests).

    Args:
        model: a built `GPTModel`.
        jit_compile: bool. Defaults to True.

    Example:

    >>> decode_function(model).experimental_get_tracing_count()  # doctest: +SKIP
    1
    """
    functions = _FUNCTIONS.setdefault(model, {})
    key = ("decode", bool(jit_compile))
    if key not in functions:
        model_ref = weakref.ref(model)

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def decode(
            prompt,
            prompt_lengths,
            buffer,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            end_id,
            pad_id,
        ):
            return _decode(
                model_ref(),
                prompt,
                prompt_lengths,
                buffer,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                end_id,
                pad_id,
            )

        functions[key] = decode
    return functions[key]


def sample_next_token(logits, temperature, top_k, top_p, seed):
    """Picks one token per row from float32 `logits` `(batch, vocab)`; every setting a tensor.

    `temperature == 0` is greedy (argmax). Otherwise the logits are divided by `temperature`,
    filtered (top-k: the `top_k` highest, 0 = all; top-p: the smallest prefix of the sorted
    tokens whose probability reaches `top_p`, always at least one token), and one token is drawn
    with `tf.random.stateless_categorical(seed)`. Filtering uses one sort and a per-row threshold
    (no `tf.math.top_k`, whose k XLA needs as a constant); it is skipped by `tf.cond` when
    `top_k == 0` and `top_p == 1`.

    Args:
        logits: float32 tensor `(batch, vocab)`.
        temperature: float32 scalar >= 0.
        top_k: int32 scalar >= 0.
        top_p: float32 scalar in (0, 1].
        seed: int32 tensor `(2,)`, the stateless seed (XLA's kernel takes int32 seeds only).

    Returns:
        int32 tensor `(batch,)`.

    Example:

    >>> sample_next_token(tf.constant([[0.0, 5.0, 1.0]]), tf.constant(0.0), tf.constant(0),
    ...                   tf.constant(1.0), tf.constant([1, 2])).numpy()
    array([1], dtype=int32)
    """

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sample():
        scaled = logits / temperature
        filtered = tf.cond(
            tf.logical_or(top_k > 0, top_p < 1.0),
            lambda: _filter_top_k_top_p(scaled, top_k, top_p),
            lambda: scaled,
        )
        return tf.random.stateless_categorical(filtered, 1, seed, dtype=tf.int32)[:, 0]

    return tf.cond(temperature > 0.0, sample, greedy)


def _filter_top_k_top_p(logits, top_k, top_p):
    vocab = tf.shape(logits)[-1]
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")  # (B, V)
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    in_top_k = tf.range(vocab)[tf.newaxis] < k  # (1, V)
    probabilities = tf.nn.softmax(tf.where(in_top_k, sorted_logits, -math.inf), axis=-1)
    mass_before = tf.cumsum(probabilities, axis=-1, exclusive=True)
    keep = tf.logical_and(in_top_k, mass_before < top_p)  # a prefix; never empty since top_p > 0
    kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1)  # (B,)
    threshold = tf.gather(sorted_logits, kept - 1, batch_dims=1)  # (B,)
    return tf.where(logits >= threshold[:, tf.newaxis], logits, -math.inf)


def _decode(
    model,
    prompt,
    prompt_lengths,
    buffer,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    end_id,
    pad_id,
):
    batch, width = tf.shape(prompt)[0], tf.shape(prompt)[1]
    cache_length = width + tf.shape(buffer)[1]
    first_real = width - prompt_lengths  # (B,) slot of each row's first real token
    key_mask = tf.range(cache_length)[tf.newaxis] >= first_real[:, tf.newaxis]  # (B, T)
    positions = tf.maximum(tf.range(width)[tf.newaxis] - first_real[:, tf.newaxis], 0)  # (B, P)
    hidden, cache = model.hidden_states(
        prompt,
        padding_mask=key_mask,
        positions=positions,
        cache=model.init_cache(batch, cache_length),
        cache_index=0,
    )
    logits = model.logits_from_hidden_states(hidden[:, -1])  # (B, V)

    def keep_going(step, logits, cache, buffer, done, new_lengths):
        return tf.logical_and(step < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def one_token(step, logits, cache, buffer, done, new_lengths):
        token = sample_next_token(logits, temperature, top_k, top_p, tf.stack([seed, step]))
        token = tf.where(done, pad_id, token)
        buffer = tf.tensor_scatter_nd_update(
            buffer, tf.stack([tf.range(batch), tf.fill([batch], step)], axis=1), token
        )
        new_lengths += tf.cast(tf.logical_not(done), tf.int32)
        done = tf.logical_or(done, tf.equal(token, end_id))
        hidden, cache = model.hidden_states(
            token[:, tf.newaxis],
            padding_mask=key_mask,
            positions=(prompt_lengths + step)[:, tf.newaxis],
            cache=cache,
            cache_index=width + step,
        )
        logits = model.logits_from_hidden_states(hidden[:, 0])
        return step + 1, logits, cache, buffer, done, new_lengths

    _, _, _, buffer, _, new_lengths = tf.while_loop(
        keep_going,
        one_token,
        (
            tf.constant(0),
            logits,
            cache,
            buffer,
            tf.zeros([batch], tf.bool),
            tf.zeros([batch], tf.int32),
        ),
    )
    return buffer, new_lengths


def _bucket(n):
    """Smallest power of two >= n and >= _MIN_BUCKET (n: int32 scalar tensor)."""
    n = tf.cast(tf.maximum(n, _MIN_BUCKET), tf.float64)
    return tf.cast(
        tf.pow(tf.constant(2.0, tf.float64), tf.math.ceil(tf.math.log(n) / math.log(2.0) - 1e-9)),
        tf.int32,
    )


def _truncate_left(prompts, keep):
    """Keeps the last `keep` tokens of each ragged row."""
    starts, limits = prompts.row_starts(), prompts.row_limits()
    starts = tf.maximum(starts, limits - tf.cast(keep, starts.dtype))
    return tf.gather(prompts.values, tf.ragged.range(starts, limits))


def _left_pad(prompts, lengths, width, pad_id):
    """Ragged `(B, None)` -> dense `(B, width)` with each row right-aligned, `pad_id` before it."""
    columns = tf.range(width)[tf.newaxis] - (width - lengths)[:, tf.newaxis]  # index in the row
    index = tf.cast(prompts.row_starts(), tf.int32)[:, tf.newaxis] + tf.maximum(columns, 0)
    values = tf.gather(prompts.values, tf.minimum(index, tf.size(prompts.values) - 1))
    return tf.where(columns >= 0, values, pad_id)


def _graph_checks(model, prompts, max_new_tokens, temperature, top_k, top_p):
    limit = model.max_length - 1
    return [
        tf.debugging.assert_greater_equal(
            max_new_tokens, 0, message=f"`max_new_tokens` must be in [0, {limit}]"
        ),
        tf.debugging.assert_less_equal(
            max_new_tokens,
            limit,
            message=f"`max_new_tokens` must be in [0, {limit}] (max_length - 1: a prompt keeps "
            "at least one token)",
        ),
        tf.debugging.assert_greater_equal(
            temperature, 0.0, message="`temperature` must be >= 0 (0 = greedy)"
        ),
        tf.debugging.assert_all_finite(temperature, message="`temperature` must be finite"),
        tf.debugging.assert_greater_equal(top_k, 0, message="`top_k` must be >= 0 (0 = off)"),
        tf.debugging.assert_greater(top_p, 0.0, message="`top_p` must be in (0, 1]"),
        tf.debugging.assert_less_equal(top_p, 1.0, message="`top_p` must be in (0, 1]"),
        tf.debugging.assert_positive(
            prompts.row_lengths(), message="`token_ids`: every prompt needs at least one token"
        ),
        tf.debugging.assert_non_negative(
            prompts.values, message=f"`token_ids` must be in [0, {model.vocab_size})"
        ),
        tf.debugging.assert_less(
            prompts.values,
            model.vocab_size,
            message=f"`token_ids` must be in [0, {model.vocab_size})",
        ),
    ]


def _as_ragged(token_ids):
    if isinstance(token_ids, tf.RaggedTensor):
        return tf.cast(token_ids, tf.int32)
    if isinstance(token_ids, (list, tuple)):
        return tf.ragged.constant([list(row) for row in token_ids], dtype=tf.int32, ragged_rank=1)
    token_ids = tf.convert_to_tensor(token_ids)
    if token_ids.shape.rank != 2 or not token_ids.dtype.is_integer:
        raise ValueError(
            f"`token_ids` must be an int tensor (batch, seq), a tf.RaggedTensor or a "
            f"list of lists of ids, got {token_ids.dtype.name} of shape "
            f"{token_ids.shape}."
        )
    return tf.RaggedTensor.from_tensor(tf.cast(token_ids, tf.int32))


def check_settings(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, end_id, pad_id):
    """Raises a ValueError naming the first bad argument of `generate`; returns None otherwise.

    Args:
        model: the `GPTModel` (for `max_length` and `vocab_size`).
        prompts: int32 `tf.RaggedTensor` of prompts.
        max_new_tokens, temperature, top_k, top_p, seed, end_id, pad_id: as in `generate`.

    Example:

    >>> check_settings(model, tf.ragged.constant([[1]]), 8, 1.0, None, 1.5, None, None, 0)
    ... # doctest: +SKIP
    ValueError: `top_p` must be None or a number in (0, 1], got 1.5.
    """

    def is_int(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    limit = model.max_length - 1
    if not is_int(max_new_tokens) or not 0 <= max_new_tokens <= limit:
        raise ValueError(
            f"`max_new_tokens` must be an int in [0, {limit}] (max_length - 1), got "
            f"{max_new_tokens!r}."
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not 0 <= temperature < math.inf
    ):
        raise ValueError(
            f"`temperature` must be a finite number >= 0 (0 = greedy), got {temperature!r}."
        )
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise ValueError(f"`top_k` must be None or an int >= 0 (0 = off), got {top_k!r}.")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1
    ):
        raise ValueError(f"`top_p` must be None or a number in (0, 1], got {top_p!r}.")
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2**31):
        raise ValueError(f"`seed` must be None or an int in [0, 2**31 - 1], got {seed!r}.")
    if end_id is not None and (not is_int(end_id) or not 0 <= end_id < model.vocab_size):
        raise ValueError(
            f"`end_id` must be None or an int in [0, {model.vocab_size}), got {end_id!r}."
        )
    if not is_int(pad_id):
        raise ValueError(f"`pad_id` must be an int, got {pad_id!r}.")
    lengths = prompts.row_lengths().numpy()
    if lengths.size == 0 or lengths.min() == 0:
        raise ValueError(
            f"`token_ids` must hold at least one prompt and every prompt at least one "
            f"id; got row lengths {lengths.tolist()}."
        )
    values = prompts.values.numpy()
    if values.min() < 0 or values.max() >= model.vocab_size:
        raise ValueError(
            f"`token_ids` must be in [0, {model.vocab_size}), got values from "
            f"{values.min()} to {values.max()}."
        )
