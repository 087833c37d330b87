"""Key/value-cached text generation for `GPTModel`, XLA-compiled, resumable chunk by chunk.

How a call runs:

1. `GenerationSettings` holds the decoding settings: checked once in Python, turned into scalar
   tensors once (`as_tensors`), documented once (its docstring).
2. `start_function(model)` (a `tf.function` with a fixed input signature) checks the settings and
   prompts in-graph, truncates each prompt from the left to its last `max_length - max_new_tokens`
   tokens (so prompt + new tokens fit the position table), left-pads the prompts to a *shape
   bucket* (the smallest power of two >= the longest prompt, at least 16), derives one stateless
   random key per row, and runs the prompts through the model once (XLA-compiled), filling a
   static-shape key/value cache of `prompt_bucket + new_bucket` slots (the number of new-token
   slots is bucketed the same way). It returns the *decode state*, a dict of tensors.
3. `steps_function(model)` (XLA-compiled) runs a `tf.while_loop` that samples one token per row
   per step, writes it to the state's token buffer and feeds it back through the cache, up to a
   given step. Called once with `stop = max_new_tokens` it is `generate`; called once per chunk
   with the same state it is streaming, and gives exactly the same tokens, since each step's
   randomness depends on the step number, not on the chunk.
4. Batched decoding of rows that arrive at different times (a server's concurrent requests):
   `batch_state` turns a `start_function` state into a *batch state*, whose rows hold their own
   settings (temperature, top-k, top-p, max_new_tokens as per-row vectors), step counters,
   positions and first cache slot; `merge_batch_states` moves the caches of rows from several
   batch states so that they all end at one shared cache slot (rows join and leave there); and
   `batch_steps_function` runs the loop for them, every row sampling with its own settings and
   step (`sample_next_token` takes per-row settings; the single-call loop above passes scalars,
   which it broadcasts). A row so decodes the tokens it would decode alone.

Left padding: row b's real tokens occupy cache slots `prompt_bucket - length_b ..`; a padding mask
over the cache slots hides the slots before them, and each token's position is counted from the
row's first real token, so a left-padded row gives exactly the logits of the same prompt alone.

Randomness: the key of row b is the user's seed with, folded in by
`tf.random.experimental.stateless_fold_in`, the *window* (0 for `generate`; a streamed text longer
than the context restarts from a shorter context as window 1, 2, ...), a fingerprint of the row's
prompt ids and its *copy* (how many earlier rows of the batch hold the same prompt); step t
samples with `stateless_fold_in(key_b, t)`. So one seed gives independent draws for different
prompts and for copies of one prompt (several samples differ), a prompt gives the same text alone
or in any batch, and the same (prompt, seed) always repeats.

Retracing: settings, prompts and state are all tensors traced with unknown batch and length, so
each function is traced once per model and `jit_compile` setting. XLA compiles one executable per
distinct shape `(batch, prompt_bucket, new_bucket)`; that is the point of the buckets.

Sampling is `sample_next_token`, written here rather than taken from `keras_hub.samplers`: the
keras-hub samplers run their own Python-level loop with settings fixed as Python numbers at
construction (a new temperature or k means a new sampler and a new trace), and their `top_k` uses
`top_k(k)` with a constant k, which XLA requires; here every setting is a tensor and top-k/top-p
are one sort and a threshold, so one compiled loop serves every setting.
"""

import dataclasses
import functools
import math
import weakref

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels._tracing import graph_function

_MIN_BUCKET = 16
_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> {(kind, jit_compile): tf.function}

# The in-graph form of `GenerationSettings`: one scalar per field. None is encoded once, here:
# top_k 0 (no top-k filter), top_p 1.0 (no nucleus filter), seed -1 (a fresh random seed),
# end_id -1 (never stop early).
SETTINGS_SIGNATURE = {
    "max_new_tokens": tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    "temperature": tf.TensorSpec([], tf.float32, name="temperature"),
    "top_k": tf.TensorSpec([], tf.int32, name="top_k"),
    "top_p": tf.TensorSpec([], tf.float32, name="top_p"),
    "seed": tf.TensorSpec([], tf.int32, name="seed"),
    "end_id": tf.TensorSpec([], tf.int32, name="end_id"),
    "pad_id": tf.TensorSpec([], tf.int32, name="pad_id"),
}
# The settings a row of a batch state holds as its own (one value per row).
_ROW_SETTINGS = ("temperature", "top_k", "top_p", "max_new_tokens")
_PROMPTS = tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How to continue a prompt: one value for `generate`, `export_gpt`, `stream_text` and the CLI.

    Greedy when `temperature == 0`; otherwise the next token is drawn from
    softmax(logits / temperature), restricted first to the `top_k` most likely tokens and then to
    the smallest set of most likely tokens whose probability reaches `top_p`. A row stops after
    producing `end_id`; its later slots hold `pad_id`. The fields are checked when the settings are
    made (a `ValueError` naming the field); `check_model` adds the checks that need the model.

    Args:
        max_new_tokens: int >= 0. Tokens to add (bytes with the byte tokenizer). A single decode
            call allows at most `max_length - 1` (a prompt keeps at least one token);
            `stream_text` goes further by sliding the context.
        temperature: float >= 0. 0 is greedy. Defaults to 1.0.
        top_k: int >= 0 or None. Keep only the k most likely tokens; 0 or None keeps all.
            Defaults to None.
        top_p: float in (0, 1] or None. Nucleus sampling; None (or 1.0) keeps all. Defaults to
            None.
        seed: int in [0, 2**31 - 1] or None. The same seed with the same prompt gives the same
            tokens (on the same device and `jit_compile` setting), alone or in any batch;
            different prompts, and copies of one prompt in a batch, draw independently. None
            draws a fresh seed per call. Defaults to None.
        end_id: int >= 0 or None (never stop early). Must be below the model's `vocab_size`.
            Defaults to None.
        pad_id: int. Fill value after `end_id`. Defaults to 0.

    Example:

    >>> settings = GenerationSettings(32, temperature=0.8, top_k=40, seed=1)
    >>> settings.top_p is None
    True
    >>> GenerationSettings(32, top_p=1.5)
    Traceback (most recent call last):
    ...
    ValueError: `top_p` must be None or a number in (0, 1], got 1.5.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    end_id: int | None = None
    pad_id: int = 0

    def __post_init__(self):
        checked = {
            "max_new_tokens": _checks.integer("max_new_tokens", self.max_new_tokens, low=0),
            "temperature": _checks.number("temperature", self.temperature, low=0),
            "top_k": _checks.integer("top_k", self.top_k, low=0, none_ok=True),
            "top_p": _checks.number(
                "top_p", self.top_p, low=0, high=1, low_open=True, none_ok=True
            ),
            "seed": _checks.integer("seed", self.seed, low=0, high=2**31 - 1, none_ok=True),
            "end_id": _checks.integer("end_id", self.end_id, low=0, none_ok=True),
            "pad_id": _checks.integer("pad_id", self.pad_id),
        }
        for name, value in checked.items():  # plain Python numbers (NumPy scalars accepted)
            object.__setattr__(self, name, value)

    def check_model(self, model):
        """Raises a ValueError unless one decode call of `model` can use these settings.

        Args:
            model: a `GPTModel` (its `max_length` and `vocab_size` matter).

        Returns:
            The settings, unchanged.

        Example:

        >>> from tf_bigmodels.models import GPTModel
        >>> GenerationSettings(64).check_model(GPTModel(258, 32, 2, 64, 1, max_length=64))
        Traceback (most recent call last):
        ...
        ValueError: `max_new_tokens` must be an integer in [0, 63], got 64.
        """
        _checks.integer("max_new_tokens", self.max_new_tokens, low=0, high=model.max_length - 1)
        _checks.integer("end_id", self.end_id, low=0, high=model.vocab_size - 1, none_ok=True)
        return self

    def as_tensors(self):
        """The settings as the scalar tensors of `SETTINGS_SIGNATURE` (None encoded there).

        Example:

        >>> int(GenerationSettings(8, top_k=None).as_tensors()["top_k"])
        0
        """
        values = dataclasses.asdict(self)
        values.update(
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=-1 if self.seed is None else self.seed,
            end_id=-1 if self.end_id is None else self.end_id,
        )
        return {
            name: tf.constant(values[name], spec.dtype) for name, spec in SETTINGS_SIGNATURE.items()
        }


def generate(model, token_ids, settings, *, jit_compile=True):
    """Continues each prompt as `settings` say: `GPTModel.generate` with the settings as one value.

    Args:
        model: a built `GPTModel`.
        token_ids: prompts: int `(batch, seq)` array or tensor, a `tf.RaggedTensor`, or a list of
            lists of ids. Rows may differ in length; each needs at least one id.
        settings: `GenerationSettings`.
        jit_compile: bool. Compile the prompt pass and the decode loop with XLA. Defaults to True.

    Returns:
        Prompt (after truncation) followed by the new tokens: int32 `(batch, seq + max_new_tokens)`
        for dense input (slots after an end token hold `pad_id`); for ragged or list input a
        `tf.RaggedTensor` whose rows end at their end token (or after `max_new_tokens` tokens).

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> out = generate(model, [[104, 105], [72]], GenerationSettings(4, temperature=0.0))
    >>> out.row_lengths().numpy()
    array([6, 5])
    """
    dense = not isinstance(token_ids, (list, tuple, tf.RaggedTensor))
    prompts = _as_ragged(token_ids)
    settings.check_model(model)
    _check_prompts(model, prompts)
    prompts, new_tokens, new_lengths = generate_function(model, jit_compile=jit_compile)(
        prompts, settings.as_tensors()
    )
    if dense:
        return tf.concat([prompts.to_tensor(), new_tokens], axis=1)
    return tf.concat([prompts, tf.RaggedTensor.from_tensor(new_tokens, lengths=new_lengths)], 1)


def generate_function(model, *, jit_compile=True):
    """The model's in-graph generation, `(prompts, settings) -> (prompts, new_tokens, new_lengths)`.

    `prompts` is an int32 `tf.RaggedTensor` `(batch, None)`, `settings` a dict of scalars as in
    `SETTINGS_SIGNATURE`. Outputs: the prompts after left truncation (ragged), `new_tokens` int32
    `(batch, max_new_tokens)` (`pad_id` after a row's end token) and `new_lengths` int32
    `(batch,)` (new tokens per row, end token included). It is `start_function` followed by one
    call of `steps_function`. Invalid settings or prompts raise `tf.errors.InvalidArgumentError`
    naming the input. Strings never enter it, so an exported graph can call it.

    Args:
        model: a built `GPTModel`.
        jit_compile: bool. Whether the prompt pass and the decode loop are XLA-compiled.
            Defaults to True.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> fn = generate_function(model)
    >>> prompts, new, lengths = fn(tf.ragged.constant([[1, 2]]),
    ...                            GenerationSettings(8, temperature=0.0).as_tensors())
    >>> new.shape
    TensorShape([1, 8])
    """
    functions = _FUNCTIONS.setdefault(model, {})
    key = ("generate", bool(jit_compile))
    if key not in functions:
        start = start_function(model, jit_compile=jit_compile)
        steps = steps_function(model, jit_compile=jit_compile)

        @graph_function(input_signature=[_PROMPTS, SETTINGS_SIGNATURE])
        def generate_in_graph(prompts, settings):
            prompts, state = start(prompts, settings, tf.constant(0))
            state = tf.cond(  # an empty batch skips the loop (XLA cannot compile it for 0 rows)
                tf.size(state["done"]) > 0,
                lambda: steps(state, settings["max_new_tokens"], settings),
                lambda: state,
            )
            return prompts, state["tokens"][:, : settings["max_new_tokens"]], state["new_lengths"]

        functions[key] = generate_in_graph
    return functions[key]


def start_function(model, *, jit_compile=True):
    """The model's prompt pass: `(prompts, settings, window) -> (prompts, state)`, a `tf.function`.

    Checks `settings` and `prompts` in-graph, truncates the prompts (left) to `max_length -
    max_new_tokens` tokens, and returns them with the decode state: a dict of tensors holding the
    key/value cache filled with the prompts, the next-token logits, `step` (0), `tokens` (a
    `(batch, new_bucket)` buffer of `pad_id`), `new_lengths`, `done` and the per-row random keys.
    `window` (an int32 scalar) is folded into the keys: 0 for a fresh prompt; a streamed text
    that slides its context starts window 1, 2, ... so that a repeated context does not repeat
    its draws. A `seed` < 0 draws a fresh seed here, kept in the state.

    Args:
        model: a built `GPTModel`.
        jit_compile: bool. XLA-compile the prompt pass. Defaults to True.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> settings = GenerationSettings(20, temperature=0.0).as_tensors()
    >>> _, state = start_function(model)(tf.ragged.constant([[1, 2]]), settings, tf.constant(0))
    >>> state["tokens"].shape, int(state["step"])
    (TensorShape([1, 32]), 0)
    """
    functions = _FUNCTIONS.setdefault(model, {})
    key = ("start", bool(jit_compile))
    if key not in functions:
        model_ref = weakref.ref(model)
        prefill = graph_function(
            lambda *args: _prefill(model_ref(), *args),
            jit_compile=jit_compile,
            reduce_retracing=True,
        )

        @graph_function(
            input_signature=[_PROMPTS, SETTINGS_SIGNATURE, tf.TensorSpec([], tf.int32, "window")]
        )
        def start(prompts, settings, window):
            gpt = model_ref()
            max_new_tokens, pad_id = settings["max_new_tokens"], settings["pad_id"]
            with tf.control_dependencies(_graph_checks(gpt, prompts, settings)):
                prompts = _truncate_left(prompts, gpt.max_length - max_new_tokens)
            lengths = tf.cast(prompts.row_lengths(), tf.int32)
            padded = _left_pad(prompts, lengths, _bucket(tf.reduce_max(lengths)), pad_id)
            buffer = tf.fill([tf.shape(padded)[0], _bucket(max_new_tokens)], pad_id)
            keys = _row_keys(prompts, settings["seed"], window)
            return prompts, prefill(padded, lengths, buffer, keys)

        functions[key] = start
    return functions[key]


def steps_function(model, *, jit_compile=True):
    """The model's decode loop: `(state, stop, settings) -> state`, a `tf.function`.

    Samples one token per row per step from `state["step"]` up to `stop` (at most the state's
    `max_new_tokens`, which the caller keeps equal to the one `start_function` had), writing each
    to `state["tokens"]`; stops early once every row has produced `end_id`. Shapes come only from
    the state's shapes, so XLA sees compile-time constants. Its
    `experimental_get_tracing_count()` counts traces (the retracing guard in the tests).

    Args:
        model: a built `GPTModel`.
        jit_compile: bool. XLA-compile the loop. Defaults to True.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> settings = GenerationSettings(20, temperature=0.0).as_tensors()
    >>> _, state = start_function(model)(tf.ragged.constant([[1, 2]]), settings, tf.constant(0))
    >>> state = steps_function(model)(state, tf.constant(5), settings)
    >>> int(state["step"]), state["new_lengths"].numpy()
    (5, array([5], dtype=int32))
    """
    functions = _FUNCTIONS.setdefault(model, {})
    key = ("steps", bool(jit_compile))
    if key not in functions:
        model_ref = weakref.ref(model)
        functions[key] = graph_function(
            lambda state, stop, settings: _steps(model_ref(), state, stop, settings),
            jit_compile=jit_compile,
            reduce_retracing=True,
        )
    return functions[key]


def state_signature(model):
    """The `tf.TensorSpec` structure of a decode state of `model` (any batch and lengths).

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> sorted(state_signature(GPTModel(258, 32, 2, 64, 1, max_length=64)))[:3]
    ['cache', 'done', 'key_mask']
    """
    head_dim = model.d_model // model.num_heads
    layer = tf.TensorSpec([None, 2, model.num_heads, None, head_dim], model.compute_dtype)
    return {
        "cache": tuple(layer for _ in range(model.num_layers)),
        "logits": tf.TensorSpec([None, model.vocab_size], tf.float32),
        "key_mask": tf.TensorSpec([None, None], tf.bool),
        "prompt_lengths": tf.TensorSpec([None], tf.int32),
        "keys": tf.TensorSpec([None, 2], tf.int32),
        "tokens": tf.TensorSpec([None, None], tf.int32),
        "new_lengths": tf.TensorSpec([None], tf.int32),
        "done": tf.TensorSpec([None], tf.bool),
        "step": tf.TensorSpec([], tf.int32),
    }


def batch_steps_function(model, *, jit_compile=True):
    """The decode loop of a batch whose rows joined at different times: a `tf.function`.

    `(state, tokens) -> (state, tokens, counts)` with `state` a *batch state*
    (`batch_state_signature`; made by `batch_state` and `merge_batch_states`) and `tokens` an
    int32 buffer `(batch, chunk)` whose width is the number of steps to run (its shape, not a
    value, so XLA sees a constant). Each step samples one token for every unfinished row with
    the row's own settings and its own step number (`sample_next_token`), and writes every row's
    key/value at the batch's shared cache slot `clock`. Each row keeps its own positions (its
    prompt length plus its step), its own mask (the slots from its `starts` on) and its own
    end: its end token or its `max_new_tokens`. So a row decodes as it would alone, whatever
    rows share its batch. Stops early when every row has finished, or the cache is full.
    Returns the state, the buffer (row b's new tokens in `tokens[b, :counts[b]]`, the end token
    included; `pad_id` after) and `counts` `(batch,)`.

    Args:
        model: a built `GPTModel`.
        jit_compile: bool. XLA-compile the loop. Defaults to True.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> settings = GenerationSettings(6, temperature=0.0).as_tensors()
    >>> _, state = start_function(model)(tf.ragged.constant([[1, 2]]), settings, tf.constant(0))
    >>> state = batch_state(state, settings)
    >>> state, tokens, counts = batch_steps_function(model)(state, tf.zeros([1, 4], tf.int32))
    >>> counts.numpy(), state["steps"].numpy()
    (array([4], dtype=int32), array([4], dtype=int32))
    """
    functions = _FUNCTIONS.setdefault(model, {})
    key = ("batch_steps", bool(jit_compile))
    if key not in functions:
        model_ref = weakref.ref(model)
        functions[key] = graph_function(
            lambda state, tokens: _batch_steps(model_ref(), state, tokens),
            jit_compile=jit_compile,
            reduce_retracing=True,
        )
    return functions[key]


def batch_state_signature(model):
    """The `tf.TensorSpec` structure of a batch state of `model` (any batch and cache length).

    Per row: the cache, the next-token logits, `starts` (its first cache slot), `prompt_lengths`,
    `keys`, `steps` (tokens made), `done`, and its settings `temperature`, `top_k`, `top_p`,
    `max_new_tokens`. Shared: `clock` (the next cache slot written), `end_id`, `pad_id`.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> sorted(batch_state_signature(GPTModel(258, 32, 2, 64, 1, max_length=64)))[:4]
    ['cache', 'clock', 'done', 'end_id']
    """
    rows = functools.partial(tf.TensorSpec, [None])
    scalar = functools.partial(tf.TensorSpec, [])
    full = state_signature(model)
    return {
        "cache": full["cache"],
        "logits": full["logits"],
        "keys": full["keys"],
        "starts": rows(tf.int32),
        "prompt_lengths": rows(tf.int32),
        "steps": rows(tf.int32),
        "done": rows(tf.bool),
        "temperature": rows(tf.float32),
        "top_k": rows(tf.int32),
        "top_p": rows(tf.float32),
        "max_new_tokens": rows(tf.int32),
        "clock": scalar(tf.int32),
        "end_id": scalar(tf.int32),
        "pad_id": scalar(tf.int32),
    }


def batch_state(state, settings):
    """The batch state of the rows of a `start_function` state, all with `settings`.

    The rows keep their cache layout (the prompts end at the shared slot `clock`), their keys
    and their step, so they go on exactly as `steps_function` would take them on.

    Args:
        state: a decode state from `start_function` (or an export's `decode_start`).
        settings: the dict of scalars `start_function` was given (`SETTINGS_SIGNATURE`).

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> settings = GenerationSettings(6, temperature=0.0).as_tensors()
    >>> _, state = start_function(model)(tf.ragged.constant([[1, 2, 3]]), settings, tf.constant(0))
    >>> rows = batch_state(state, settings)
    >>> int(rows["clock"]), rows["starts"].numpy(), rows["max_new_tokens"].numpy()
    (16, array([13], dtype=int32), array([6], dtype=int32))
    """
    batch = tf.shape(state["done"])[0]
    width = tf.shape(state["key_mask"])[1] - tf.shape(state["tokens"])[1]
    steps = tf.fill([batch], state["step"])
    rows = {name: tf.fill([batch], settings[name]) for name in _ROW_SETTINGS}
    return {
        "cache": state["cache"],
        "logits": state["logits"],
        "keys": state["keys"],
        "starts": width - state["prompt_lengths"],
        "prompt_lengths": state["prompt_lengths"],
        "steps": steps,
        "done": tf.logical_or(state["done"], steps >= rows["max_new_tokens"]),
        **rows,
        "clock": width + state["step"],
        "end_id": settings["end_id"],
        "pad_id": settings["pad_id"],
    }


def merge_batch_states(parts, batch_size=None):
    """One batch state of the chosen rows of several batch states: rows join and leave here.

    Every row is moved so that its cached tokens end at the new shared `clock` (the longest
    span of cached tokens among the rows): a move of the same number of slots for all rows of a
    part, so one gather per part. The cache gets `_bucket(clock + the most tokens a row still
    needs)` slots, so the rows finish before it is full. Rows beyond the chosen ones, up to
    `batch_size`, repeat the first row, marked done (a batch of a few fixed sizes compiles a few
    times only). Eager: the sizes are read as numbers.

    Args:
        parts: list of `(state, rows)`: a batch state and the list of its row indices to keep.
        batch_size: int >= the number of rows, or None (exactly the rows). Defaults to None.

    Returns:
        A batch state.

    Example:

    >>> from tf_bigmodels.models import GPTModel
    >>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=64)
    >>> start = start_function(model)
    >>> def rows(prompt, new):
    ...     settings = GenerationSettings(new, temperature=0.0).as_tensors()
    ...     return batch_state(start(tf.ragged.constant([prompt]), settings, tf.constant(0))[1],
    ...                        settings)
    >>> merged = merge_batch_states([(rows([1, 2, 3], 40), [0]), (rows([4], 4), [0])], 4)
    >>> int(merged["clock"]), merged["starts"].numpy(), merged["done"].numpy()
    (3, array([0, 2, 0, 0], dtype=int32), array([False, False,  True,  True]))
    >>> merged["cache"][0].shape[3]  # 3 prompt slots + 40 new: the next bucket
    64
    """
    count = sum(len(indices) for _, indices in parts)
    batch_size = count if batch_size is None else batch_size
    if not 0 < count <= batch_size:
        raise ValueError(f"`parts` must hold 1 to `batch_size`={batch_size} rows, got {count}.")
    first_row = parts[0][1][0]
    parts = [*parts, (parts[0][0], [first_row] * (batch_size - count))]  # the padding rows
    states = [state for state, _ in parts]
    rows = [tf.constant(list(indices), tf.int32) for _, indices in parts]
    spans = [tf.gather(s["clock"] - s["starts"], r) for s, r in zip(states, rows)]
    needs = [tf.gather(s["max_new_tokens"] - s["steps"], r) for s, r in zip(states, rows)]
    clock = int(tf.reduce_max(tf.concat(spans, 0)))
    cache_length = int(_bucket(clock + max(int(tf.reduce_max(tf.concat(needs, 0))), 1)))
    merged = {}
    for name in ("logits", "keys", "prompt_lengths", "steps", "done", *_ROW_SETTINGS):
        merged[name] = tf.concat([tf.gather(s[name], r) for s, r in zip(states, rows)], 0)
    layers = []
    for layer in range(len(parts[0][0]["cache"])):
        moved = []
        for state, r in zip(states, rows):
            cache = state["cache"][layer]
            # New slot j holds the part's slot j - clock + its clock (slots it never had are
            # hidden by the row's mask or, after the clock, by the causal mask).
            slots = tf.range(cache_length) - clock + state["clock"]
            slots = tf.clip_by_value(slots, 0, tf.shape(cache)[3] - 1)
            moved.append(tf.gather(tf.gather(cache, r), slots, axis=3))
        layers.append(tf.concat(moved, 0))
    merged["done"] = tf.logical_or(merged["done"], tf.range(batch_size) >= count)
    first = states[0]
    return {
        **merged,
        "cache": tuple(layers),
        "starts": clock - tf.concat(spans, 0),
        "clock": tf.constant(clock, tf.int32),
        "end_id": first["end_id"],
        "pad_id": first["pad_id"],
    }


def sample_next_token(logits, temperature, top_k, top_p, keys, step):
    """Picks one token per row from float32 `logits` `(batch, vocab)`; each row its own settings.

    Every setting is a tensor, either a scalar for the whole batch or a vector `(batch,)` of one
    value per row (a scalar is broadcast, so both are this one code path). A row with
    `temperature == 0` is greedy (argmax). Otherwise its logits are divided by its temperature,
    filtered (top-k: the `top_k` highest, 0 = all; top-p: the smallest prefix of the sorted
    tokens whose probability reaches `top_p`, always at least one token; a row with `top_k == 0`
    and `top_p == 1` is left as it is), and row b draws one token with
    `tf.random.stateless_categorical` seeded by `stateless_fold_in(keys[b], step[b])`. So a row's
    token depends on its own logits, settings, key and step only, never on the other rows.
    Filtering uses one sort and a per-row threshold (no `tf.math.top_k`, whose k XLA needs as a
    constant); `tf.cond` skips it when no row filters, and skips sampling when every row is
    greedy.

    Args:
        logits: float32 tensor `(batch, vocab)`.
        temperature: float32 scalar or `(batch,)`, >= 0.
        top_k: int32 scalar or `(batch,)`, >= 0.
        top_p: float32 scalar or `(batch,)`, in (0, 1].
        keys: int32 tensor `(batch, 2)`, one stateless key per row (XLA's kernels take int32
            seeds only).
        step: int32 scalar or `(batch,)`, folded into each row's key: the row's own step.

    Returns:
        int32 tensor `(batch,)`.

    Example:

    >>> sample_next_token(tf.constant([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]]),
    ...                   tf.constant([0.0, 0.5]), tf.constant([0, 1]), tf.constant(1.0),
    ...                   tf.constant([[1, 2], [3, 4]]), tf.constant([0, 7])).numpy()
    array([1, 0], dtype=int32)
    """
    batch = tf.shape(logits)[0]
    temperature, top_k, top_p, step = (
        tf.broadcast_to(value, [batch]) for value in (temperature, top_k, top_p, step)
    )
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    sampling = temperature > 0.0

    def sample():
        scaled = logits / tf.where(sampling, temperature, 1.0)[:, tf.newaxis]
        filtered = tf.cond(
            tf.reduce_any(tf.logical_or(top_k > 0, top_p < 1.0)),
            lambda: _filter_top_k_top_p(scaled, top_k, top_p),
            lambda: scaled,
        )

        def one_row(row):
            row_logits, key, row_step = row
            seed = tf.random.experimental.stateless_fold_in(key, row_step)
            return tf.random.stateless_categorical(row_logits[tf.newaxis], 1, seed, tf.int32)[0, 0]

        drawn = tf.map_fn(one_row, (filtered, keys, step), fn_output_signature=tf.int32)
        return tf.where(sampling, drawn, greedy)

    return tf.cond(tf.reduce_any(sampling), sample, lambda: greedy)


def _filter_top_k_top_p(logits, top_k, top_p):
    """Per row (`top_k`, `top_p`: `(B,)`): -inf outside the top-k/top-p set, the rest as it is."""
    vocab = tf.shape(logits)[-1]
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")  # (B, V)
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)[:, tf.newaxis]  # (B, 1)
    in_top_k = tf.range(vocab)[tf.newaxis] < k  # (B, V)
    probabilities = tf.nn.softmax(tf.where(in_top_k, sorted_logits, -math.inf), axis=-1)
    mass_before = tf.cumsum(probabilities, axis=-1, exclusive=True)
    # top_p == 1 keeps the whole top-k set: rounding must not cut its tail for that row.
    in_nucleus = tf.logical_or(mass_before < top_p[:, tf.newaxis], top_p[:, tf.newaxis] >= 1.0)
    keep = tf.logical_and(in_top_k, in_nucleus)  # a prefix; never empty since top_p > 0
    kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1)  # (B,)
    threshold = tf.gather(sorted_logits, kept - 1, batch_dims=1)  # (B,)
    return tf.where(logits >= threshold[:, tf.newaxis], logits, -math.inf)


def _prefill(model, prompt, prompt_lengths, buffer, keys):
    """Runs the left-padded prompts `(B, P)` through the model into a fresh cache; the state."""
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
    return {
        "cache": cache,
        "logits": model.logits_from_hidden_states(hidden[:, -1]),  # (B, V)
        "key_mask": key_mask,
        "prompt_lengths": prompt_lengths,
        "keys": keys,
        "tokens": buffer,
        "new_lengths": tf.zeros([batch], tf.int32),
        "done": tf.zeros([batch], tf.bool),
        "step": tf.constant(0),
    }


def _steps(model, state, stop, settings):
    key_mask, prompt_lengths, keys = state["key_mask"], state["prompt_lengths"], state["keys"]
    batch, slots = tf.shape(key_mask)[0], tf.shape(state["tokens"])[1]
    width = tf.shape(key_mask)[1] - slots  # cache slots of the (padded) prompt
    stop = tf.minimum(stop, tf.minimum(settings["max_new_tokens"], slots))
    end_id = settings["end_id"]

    def keep_going(step, logits, cache, tokens, done, new_lengths):
        return tf.logical_and(step < stop, tf.logical_not(tf.reduce_all(done)))

    def one_token(step, logits, cache, tokens, done, new_lengths):
        token, logits, cache = _decode_token(
            model,
            logits,
            cache,
            settings,
            keys,
            step,
            done,
            key_mask,
            prompt_lengths + step,
            width + step,
        )
        tokens = tf.tensor_scatter_nd_update(
            tokens, tf.stack([tf.range(batch), tf.fill([batch], step)], axis=1), token
        )
        new_lengths += tf.cast(tf.logical_not(done), tf.int32)
        done = tf.logical_or(done, tf.equal(token, end_id))
        return step + 1, logits, cache, tokens, done, new_lengths

    step, logits, cache, tokens, done, new_lengths = tf.while_loop(
        keep_going,
        one_token,
        (
            state["step"],
            state["logits"],
            state["cache"],
            state["tokens"],
            state["done"],
            state["new_lengths"],
        ),
    )
    return {
        **state,
        "cache": cache,
        "logits": logits,
        "tokens": tokens,
        "new_lengths": new_lengths,
        "done": done,
        "step": step,
    }


def _batch_steps(model, state, tokens):
    batch, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
    cache_length = tf.shape(state["cache"][0])[3]
    key_mask = tf.range(cache_length)[tf.newaxis] >= state["starts"][:, tf.newaxis]  # (B, T)
    count = tf.minimum(width, cache_length - state["clock"])
    # A finished row still runs through the model with the others (its token is discarded); its
    # position, prompt plus max_new_tokens, may be one past the position table. Live rows stay
    # below it (a prompt keeps at most max_length - max_new_tokens tokens), so this clamp only
    # touches finished rows.
    last_position = model.max_length - 1

    def keep_going(i, clock, logits, cache, steps, done, tokens, counts):
        return tf.logical_and(i < count, tf.logical_not(tf.reduce_all(done)))

    def one_token(i, clock, logits, cache, steps, done, tokens, counts):
        token, logits, cache = _decode_token(
            model,
            logits,
            cache,
            state,
            state["keys"],
            steps,
            done,
            key_mask,
            tf.minimum(state["prompt_lengths"] + steps, last_position),
            clock,
        )
        tokens = tf.tensor_scatter_nd_update(
            tokens, tf.stack([tf.range(batch), tf.fill([batch], i)], axis=1), token
        )
        live = tf.cast(tf.logical_not(done), tf.int32)
        steps, counts = steps + live, counts + live
        ended = tf.logical_or(tf.equal(token, state["end_id"]), steps >= state["max_new_tokens"])
        return i + 1, clock + 1, logits, cache, steps, tf.logical_or(done, ended), tokens, counts

    tokens = tf.fill(tf.shape(tokens), state["pad_id"])
    _, clock, logits, cache, steps, done, tokens, counts = tf.while_loop(
        keep_going,
        one_token,
        (
            tf.constant(0),
            state["clock"],
            state["logits"],
            state["cache"],
            state["steps"],
            state["done"],
            tokens,
            tf.zeros([batch], tf.int32),
        ),
    )
    state = {
        **state,
        "clock": clock,
        "logits": logits,
        "cache": cache,
        "steps": steps,
        "done": done,
    }
    return state, tokens, counts


def _decode_token(model, logits, cache, settings, keys, steps, done, key_mask, positions, slot):
    """One decode step of every row: the sampled tokens (`pad_id` for finished rows), the next
    logits and the cache with the tokens written at cache slot `slot` (one slot for all rows)."""
    token = sample_next_token(
        logits, settings["temperature"], settings["top_k"], settings["top_p"], keys, steps
    )
    token = tf.where(done, settings["pad_id"], token)
    hidden, cache = model.hidden_states(
        token[:, tf.newaxis],
        padding_mask=key_mask,
        positions=positions[:, tf.newaxis],
        cache=cache,
        cache_index=slot,
    )
    return token, model.logits_from_hidden_states(hidden[:, 0]), cache


def _row_keys(prompts, seed, window):
    """One stateless key per row: the seed with the window, the row's prompt and copy folded in.

    A seed < 0 is replaced by a fresh random one. The prompt enters as a 31-bit fingerprint
    (FarmHash) of its ids, so two prompts that differ anywhere draw different numbers. The copy
    is how many earlier rows hold the same prompt: copies of one prompt draw independently,
    while a prompt's draws do not depend on the other prompts of its batch.
    """
    seed = tf.where(seed < 0, tf.random.uniform([], 0, tf.int32.max, tf.int32), seed)
    base = tf.random.experimental.stateless_fold_in(tf.stack([0, seed]), window)
    text = tf.strings.reduce_join(tf.strings.as_string(prompts), axis=-1, separator=" ")
    fingerprints = tf.cast(tf.strings.to_hash_bucket_fast(text, 2**31 - 1), tf.int32)  # (B,)
    rows = tf.range(tf.shape(fingerprints)[0])
    same = tf.equal(fingerprints[:, tf.newaxis], fingerprints[tf.newaxis])  # (B, B)
    earlier = rows[tf.newaxis] < rows[:, tf.newaxis]  # [b, j]: j < b
    copies = tf.reduce_sum(tf.cast(tf.logical_and(same, earlier), tf.int32), axis=1)  # (B,)

    def fold(row):
        fingerprint, copy = row
        key = tf.random.experimental.stateless_fold_in(base, fingerprint)
        return tf.random.experimental.stateless_fold_in(key, copy)

    return tf.map_fn(
        fold, (fingerprints, copies), fn_output_signature=tf.TensorSpec([2], tf.int32)
    )  # (B, 2)


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
    values = tf.gather(prompts.values, tf.clip_by_value(index, 0, tf.size(prompts.values) - 1))
    return tf.where(columns >= 0, values, pad_id)


def _graph_checks(model, prompts, settings):
    """In-graph twins of `GenerationSettings` and `_check_prompts`, for exported graphs."""
    limit, vocab = model.max_length - 1, model.vocab_size
    max_new_tokens, temperature = settings["max_new_tokens"], settings["temperature"]
    top_k, top_p = settings["top_k"], settings["top_p"]
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
        tf.debugging.assert_all_finite(temperature, message="`temperature` must be finite"),
        tf.debugging.assert_greater_equal(
            temperature, 0.0, message="`temperature` must be >= 0 (0 = greedy)"
        ),
        tf.debugging.assert_greater_equal(top_k, 0, message="`top_k` must be >= 0 (0 = off)"),
        tf.debugging.assert_greater(top_p, 0.0, message="`top_p` must be in (0, 1]"),
        tf.debugging.assert_less_equal(top_p, 1.0, message="`top_p` must be in (0, 1]"),
        tf.debugging.assert_less(
            settings["end_id"], vocab, message=f"`end_id` must be < vocab_size={vocab}"
        ),
        tf.debugging.assert_positive(
            prompts.row_lengths(), message="`token_ids`: every prompt needs at least one token"
        ),
        tf.debugging.assert_non_negative(
            prompts.values, message=f"`token_ids` must be in [0, {vocab})"
        ),
        tf.debugging.assert_less(
            prompts.values, vocab, message=f"`token_ids` must be in [0, {vocab})"
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


def _check_prompts(model, prompts):
    """Raises a ValueError naming `token_ids` unless every prompt holds ids in [0, vocab_size)."""
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
