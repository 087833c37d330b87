"""Key/value-cached generation: equal to full forward passes, correct sampling, no retracing.

XLA-compiled decoding, the default, is tested against full forward passes, against the plain
graph, for seeds and for retracing, and through the streaming functions the server uses. The
other properties are the sampler's and the cache's, the same code in both; they are tested on the
plain graph (`jit_compile=False`), where a new prompt shape costs no XLA compilation.
"""

import dataclasses
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_bigmodels.layers import TransformerLayer
from tf_bigmodels.models import GPTModel, generation

VOCAB = 37
# A larger initializer_range than GPT-2's spreads the logits, so greedy choices are not near-ties.
TINY = dict(
    vocab_size=VOCAB,
    d_model=24,
    num_heads=3,
    dff=48,
    num_layers=2,
    rate=0.0,
    max_length=48,
    initializer_range=0.3,
)
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4], list(range(1, 18))]  # 17 crosses a bucket
PLAIN = dict(jit_compile=False)  # the plain graph: no XLA compilation per shape


def _model(**options):
    """A tiny GPT. Without options, the one model the tests share: its generation functions are
    traced (and XLA-compiled) once per shape for the module, not once per test. Every test
    starts from the same seed, so whichever test builds it first builds the same weights."""
    return _new_model(**options) if options else _shared_model()


@functools.cache
def _shared_model():
    return _new_model()


def _new_model(**options):
    model = GPTModel(**{**TINY, **options})
    model(np.zeros((1, 4), "int32"))
    return model


def _greedy_by_full_forward(model, prompt, steps):
    """The reference: the whole sequence through the model at every step, argmax of the last."""
    sequence = list(prompt)
    for _ in range(steps):
        logits = model(np.array([sequence], "int32"))
        sequence.append(int(np.argmax(np.asarray(logits)[0, -1])))
    return sequence


def test_cached_layer_steps_equal_the_full_causal_layer():
    layer = TransformerLayer(24, 3, 48, rate=0.0, causal=True, norm_first=True)
    x = keras.random.normal((2, 6, 24), seed=1)
    full = np.asarray(layer(x))
    cache = tf.zeros((2, 2, 3, 8, 8))
    steps = []
    for i in range(6):
        out, cache = layer(
            x[:, i : i + 1], padding_mask=tf.ones((2, 8), bool), cache=cache, cache_index=i
        )
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_cache_needs_a_causal_layer():
    layer = TransformerLayer(24, 3, 48, causal=False)
    with pytest.raises(ValueError, match="causal"):
        layer(tf.zeros((1, 1, 24)), cache=tf.zeros((1, 2, 3, 4, 8)), cache_index=0)


@pytest.mark.parametrize(
    "dtype", ["float32", pytest.param("mixed_bfloat16", marks=pytest.mark.slow)]
)
def test_cached_greedy_equals_repeated_full_forward(dtype):
    model = _model(dtype=dtype)
    out = model.generate(PROMPTS, 8, temperature=0.0)
    assert isinstance(out, tf.RaggedTensor)
    for row, prompt in zip(out.to_list(), PROMPTS):
        assert row == _greedy_by_full_forward(model, prompt, 8), (dtype, prompt)


@pytest.mark.parametrize(
    "length",
    [1, 5, pytest.param(16, marks=pytest.mark.slow), pytest.param(30, marks=pytest.mark.slow)],
)
def test_dense_prompts_of_several_lengths(length):
    model = _model()
    prompts = np.random.default_rng(length).integers(0, VOCAB, size=(2, length)).astype("int32")
    out = model.generate(prompts, 6, temperature=0.0, **PLAIN)
    assert out.shape == (2, length + 6) and out.dtype == tf.int32
    for row, prompt in zip(np.asarray(out).tolist(), prompts.tolist()):
        assert row == _greedy_by_full_forward(model, prompt, 6)


@pytest.mark.slow  # XLA compiles the decode loop for several shapes
def test_xla_and_plain_graph_agree():
    model = _model()
    np.testing.assert_array_equal(
        model.generate(PROMPTS, 6, temperature=0.0, jit_compile=True).to_tensor(),
        model.generate(PROMPTS, 6, temperature=0.0, jit_compile=False).to_tensor(),
    )


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = _model()
    first = model.generate(PROMPTS, 10, temperature=1.0, seed=7).to_list()
    assert model.generate(PROMPTS, 10, temperature=1.0, seed=7).to_list() == first
    assert model.generate(PROMPTS, 10, temperature=1.0, seed=8).to_list() != first


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = _model()
    greedy = model.generate(PROMPTS, 8, temperature=0.0, **PLAIN).to_list()
    for settings in (
        dict(temperature=1.0, top_k=1, seed=3),
        dict(temperature=1.0, top_p=1e-6, seed=3),
        dict(temperature=5.0, top_p=1e-6, top_k=9, seed=4),
    ):
        assert model.generate(PROMPTS, 8, **settings, **PLAIN).to_list() == greedy, settings


def _first_token_frequencies(model, prompt, samples, **settings):
    out = model.generate(
        np.tile(np.array([prompt], "int32"), (samples, 1)), 1, seed=2024, **settings, **PLAIN
    )
    return np.bincount(np.asarray(out)[:, -1], minlength=VOCAB) / samples


@pytest.mark.slow  # 40,000 draws
def test_sampled_frequencies_match_the_softmax():
    # 20,000 draws over 37 tokens: the expected total-variation distance of the empirical
    # distribution is about 0.02; 0.05 leaves > 5 standard deviations (and the seed is fixed).
    model, prompt, samples = _model(), [3, 1, 4, 1, 5], 20_000
    logits = np.asarray(model(np.array([prompt], "int32")))[0, -1].astype("float64")

    def softmax(values):
        values = np.exp(values - values.max())
        return values / values.sum()

    expected = softmax(logits)
    assert expected.max() < 0.9  # a real distribution, not a point mass
    got = _first_token_frequencies(model, prompt, samples, temperature=1.0)
    assert 0.5 * np.abs(got - expected).sum() < 0.05

    # Temperature 0.7 and top-k 5: the softmax of logits / 0.7 renormalised over the top 5.
    top5 = np.argsort(-logits)[:5]
    expected = np.zeros(VOCAB)
    expected[top5] = softmax(logits[top5] / 0.7)
    got = _first_token_frequencies(model, prompt, samples, temperature=0.7, top_k=5)
    assert set(np.nonzero(got)[0]) <= set(top5)
    assert 0.5 * np.abs(got - expected).sum() < 0.05


def test_top_p_keeps_the_smallest_nucleus():
    logits = tf.math.log(tf.constant([[0.1, 0.5, 0.3, 0.1]]))
    seen = set()
    for step in range(200):
        token = generation.sample_next_token(
            logits,
            tf.constant(1.0),
            tf.constant(0),
            tf.constant(0.75),
            tf.constant([[5, 6]]),
            tf.constant(step),
        )
        seen.add(int(token[0]))
    assert seen == {1, 2}  # 0.5 < 0.75 <= 0.5 + 0.3


def test_end_id_stops_a_row_and_pads_the_rest():
    model = _model()
    greedy = model.generate(PROMPTS[:2], 8, temperature=0.0, **PLAIN).to_list()
    end_id = greedy[0][len(PROMPTS[0]) + 2]  # the third new token of row 0
    stops = [
        len(p) + row[len(p) :].index(end_id) + 1 if end_id in row[len(p) :] else len(row)
        for p, row in zip(PROMPTS[:2], greedy)
    ]
    ragged = model.generate(PROMPTS[:2], 8, temperature=0.0, end_id=end_id, **PLAIN).to_list()
    assert ragged == [row[:stop] for row, stop in zip(greedy, stops)]
    dense = np.asarray(
        model.generate(
            np.array([PROMPTS[0]]), 8, temperature=0.0, end_id=end_id, pad_id=36, **PLAIN
        )
    )
    assert dense.tolist() == [greedy[0][: stops[0]] + [36] * (len(greedy[0]) - stops[0])]


def test_long_prompts_are_truncated_from_the_left():
    model = _model()
    prompt = list(np.random.default_rng(0).integers(0, VOCAB, 60))
    out = model.generate([prompt], 8, temperature=0.0, **PLAIN).to_list()[0]
    kept = prompt[-(TINY["max_length"] - 8) :]
    assert out == _greedy_by_full_forward(model, kept, 8)


def test_zero_new_tokens_returns_the_prompts():
    model = _model()
    assert model.generate(PROMPTS, 0, **PLAIN).to_list() == PROMPTS


@pytest.mark.slow  # XLA compiles the decode loop for several shapes
def test_settings_and_prompts_do_not_retrace_the_decode_loop():
    model = _model()
    rng = np.random.default_rng(0)
    settings = [
        dict(temperature=0.0),
        dict(temperature=1.0, seed=1),
        dict(top_k=3, seed=2),
        dict(top_p=0.8, seed=3),
        dict(temperature=0.5, top_k=4, top_p=0.9, seed=4),
    ]
    for call in range(10):
        prompts = [list(rng.integers(0, VOCAB, rng.integers(1, 30))) for _ in range(3)]
        model.generate(prompts, int(rng.integers(1, 12)), **settings[call % len(settings)])
    for function in (generation.start_function, generation.steps_function):
        assert function(model).experimental_get_tracing_count() == 1
    assert generation.generate_function(model).experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(max_new_tokens=48), "max_new_tokens"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=-1), "seed"),
        (dict(end_id=VOCAB), "end_id"),
        (dict(token_ids=[[1, 2], []]), "token_ids"),
        (dict(token_ids=[[1, VOCAB]]), "token_ids"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, argument):
    model = _model()
    kwargs = {"token_ids": [[1, 2]], "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}`"):
        model.generate(**kwargs)


@pytest.mark.parametrize(
    "name, value, argument",
    [
        ("max_new_tokens", 48, "max_new_tokens"),
        ("max_new_tokens", -1, "max_new_tokens"),
        ("temperature", -1.0, "temperature"),
        ("temperature", float("nan"), "temperature"),
        ("top_k", -1, "top_k"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.01, "top_p"),
        ("end_id", VOCAB, "end_id"),
    ],
)
@pytest.mark.slow
def test_in_graph_checks_name_the_input(name, value, argument):
    model = _model()  # the function holds its model weakly
    fn = generation.generate_function(model)
    settings = generation.GenerationSettings(4).as_tensors()
    settings[name] = tf.constant(value, settings[name].dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"`{argument}`"):
        fn(tf.ragged.constant([[1, 2]]), settings)


def test_in_graph_generation_of_an_empty_batch_is_empty():
    prompts = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    settings = generation.GenerationSettings(5, seed=1).as_tensors()
    model = _model()
    _, new_tokens, new_lengths = generation.generate_function(model)(prompts, settings)
    assert new_tokens.shape == (0, 5) and new_lengths.shape == (0,)


# ---------------------------------------------------------------- settings as one value
def test_settings_are_checked_once_and_encoded_once():
    settings = generation.GenerationSettings(np.int64(8), top_k=np.int32(3), seed=7)
    assert (settings.max_new_tokens, settings.top_k) == (8, 3)
    assert type(settings.max_new_tokens) is int and type(settings.temperature) is float
    tensors = settings.as_tensors()
    assert set(tensors) == set(generation.SETTINGS_SIGNATURE)
    assert {name: t.numpy().item() for name, t in tensors.items()} == dict(
        max_new_tokens=8, temperature=1.0, top_k=3, top_p=1.0, seed=7, end_id=-1, pad_id=0
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1
    with pytest.raises(ValueError, match="`temperature` must be a number >= 0, got inf"):
        generation.GenerationSettings(8, temperature=float("inf"))
    with pytest.raises(ValueError, match="`top_k`"):
        generation.GenerationSettings(8, top_k=True)


def test_model_checks_need_the_model():
    model = _model()
    settings = generation.GenerationSettings(TINY["max_length"] - 1, end_id=VOCAB - 1)
    assert settings.check_model(model) is settings
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be an integer in \[0, 47\]"):
        generation.GenerationSettings(TINY["max_length"]).check_model(model)
    with pytest.raises(ValueError, match="`end_id`"):
        generation.GenerationSettings(4, end_id=VOCAB).check_model(model)


# ---------------------------------------------------------------- seeds
def _continuations(model, prompts, **settings):
    out = model.generate(prompts, 12, **settings).to_list()
    return [row[len(prompt) :] for row, prompt in zip(out, prompts)]


def test_one_seed_gives_different_prompts_independent_draws():
    # At a very high temperature every prompt's distribution is almost uniform, so what is drawn
    # is decided by the random numbers alone: if they did not depend on the prompt, every prompt
    # would get the same continuation (Gumbel-max with equal noise and near-equal logits).
    model = _model()
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, VOCAB, 6)) for _ in range(8)]
    texts = [_continuations(model, [p], temperature=1e4, seed=11, **PLAIN)[0] for p in prompts]
    first, *others = texts
    agreement = np.mean([a == b for other in others for a, b in zip(first, other)])
    assert agreement < 0.2  # independent uniform draws agree with probability 1 / 37
    assert len({tuple(t) for t in texts}) == len(texts)


def test_rows_of_one_batch_draw_independently():
    model = _model()
    copies = _continuations(model, [[1, 2, 3]] * 6, temperature=1e4, seed=5, **PLAIN)
    assert len({tuple(c) for c in copies}) == 6


@pytest.mark.slow  # XLA compiles the decode loop for several shapes
def test_a_prompt_gives_the_same_text_alone_and_in_a_batch():
    model = _model()
    alone = [_continuations(model, [p], temperature=1.0, seed=4)[0] for p in PROMPTS[:3]]
    assert _continuations(model, PROMPTS[:3], temperature=1.0, seed=4) == alone
    reordered = _continuations(model, [PROMPTS[2], PROMPTS[0]], temperature=1.0, seed=4)
    assert reordered == [alone[2], alone[0]]


# ---------------------------------------------------------------- decode state and streaming
@pytest.fixture(scope="module")
def byte_model():
    """One byte-level model for the streaming tests, so that XLA compiles each shape once."""
    keras.utils.set_random_seed(1)
    return _model(vocab_size=258, num_layers=1)


def test_decoding_in_chunks_equals_one_call():
    model = _model()
    settings = generation.GenerationSettings(20, temperature=1.0, top_k=9, seed=3)
    tensors = settings.as_tensors()
    prompts, state = generation.start_function(model, **PLAIN)(
        tf.ragged.constant(PROMPTS), tensors, tf.constant(0)
    )
    for stop in (1, 2, 9, 16, 20):
        state = generation.steps_function(model, **PLAIN)(state, tf.constant(stop), tensors)
        assert int(state["step"]) == stop
    one_call = generation.generate(model, PROMPTS, settings, **PLAIN).to_list()
    chunked = tf.concat(
        [prompts, tf.RaggedTensor.from_tensor(state["tokens"][:, :20])], axis=1
    ).to_list()
    assert chunked == one_call


def test_streamed_text_equals_generated_text_for_one_seed(byte_model):
    from tf_bigmodels.export import stream_text
    from tf_bigmodels.tokenizers import ByteTokenizer

    tokenizer, model = ByteTokenizer(), byte_model
    for prompt, seed in (("To be", 1), ("你好", 2), ("", 3)):
        ids = tokenizer.tokenize([prompt]).to_list()[0] or [tokenizer.end_id]
        out = model.generate(
            [ids], 30, temperature=1.0, seed=seed, end_id=tokenizer.end_id, pad_id=tokenizer.pad_id
        ).to_list()[0][len(ids) :]
        expected = tokenizer.detokenize(tf.constant(out, tf.int32)).numpy().decode()
        pieces = list(stream_text(model, prompt, 30, temperature=1.0, seed=seed, chunk_tokens=7))
        assert "".join(pieces) == expected.rstrip("\ufffd"), prompt
        assert len(pieces) > 1 or len(out) <= 7  # one piece per chunk of 7 tokens


def test_a_stream_returns_its_token_count_and_whether_the_end_token_ended_it(byte_model):
    from helpers import drain

    from tf_bigmodels.export import stream_text
    from tf_bigmodels.tokenizers import ByteTokenizer

    tokenizer, model = ByteTokenizer(), byte_model
    ends = set()
    for seed in range(100):  # until a text ends at the end token and another at the limit
        out = model.generate(
            [[104]],
            30,
            temperature=1.0,
            seed=seed,
            end_id=tokenizer.end_id,
            pad_id=tokenizer.pad_id,
        ).to_list()[0][1:]
        ended = out[-1] == tokenizer.end_id
        text, end = drain(stream_text(model, "h", 30, temperature=1.0, seed=seed, chunk_tokens=7))
        # Counted as decoded: a cut-off character or an invalid byte still counts its tokens.
        assert end == (len(out) - ended, ended), seed
        ends.add(ended)
        if ends == {False, True}:
            break
    assert ends == {False, True}


@pytest.mark.slow  # XLA compiles the decode loop for several shapes
def test_streaming_beyond_the_context_does_not_depend_on_the_chunks(byte_model):
    from tf_bigmodels.export import generate_texts, stream_text

    model, settings = byte_model, dict(temperature=1.0, seed=9)
    texts = ["".join(stream_text(model, "abc", 60, chunk_tokens=c, **settings)) for c in (5, 64)]
    assert texts[0] == texts[1]
    assert generate_texts(model, "abc", 60, num_samples=2, **settings)[0] == texts[0]
    assert len(texts[0].encode()) > 48  # windows of 45 and 15 tokens


def test_streamed_text_ends_with_complete_characters(byte_model):
    # A random byte-level model emits many bytes >= 0x80, so most lengths cut a character (or an
    # invalid sequence) at the end; the streamed text drops exactly that tail.
    from tf_bigmodels.export import generate_texts, stream_text
    from tf_bigmodels.tokenizers import ByteTokenizer

    tokenizer, model = ByteTokenizer(), byte_model
    cut = 0
    for n in range(1, 13):
        out = model.generate([[104]], n, temperature=0.0).to_list()[0][1:]
        full = tokenizer.detokenize(tf.constant(out, tf.int32)).numpy().decode()
        streamed = "".join(stream_text(model, "h", n, temperature=0.0))
        assert streamed == full.rstrip("\ufffd") and not streamed.endswith("\ufffd")
        cut += full.endswith("\ufffd")
    assert cut > 0
    assert generate_texts(model, "h", 12, temperature=0.0)[0] == streamed


def test_max_new_chars_counts_characters(byte_model):
    from tf_bigmodels.export import generate_texts, stream_text

    model = byte_model
    text = "".join(stream_text(model, "你", None, max_new_chars=6, temperature=1.0, seed=2))
    # 6 characters cost at most 24 tokens; the text is what 24 tokens give, cut after 6
    # characters (and, like any text, not ending on the U+FFFD of an invalid byte).
    longer = "".join(stream_text(model, "你", 24, temperature=1.0, seed=2))
    assert len(longer) > 6 and text == longer[:6].rstrip("\ufffd") and 0 < len(text) <= 6
    assert generate_texts(model, "你", None, max_new_chars=6, temperature=1.0, seed=2) == [text]
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        next(stream_text(model, "a", None))


def test_a_row_that_ends_at_the_last_position_does_not_stop_its_batch():
    # 12 prompt tokens + 4 new fill the 16 positions; the row that shares the batch goes on
    # after it, so the finished row keeps running with it past the position table's end.
    model = GPTModel(258, 16, 2, 32, 1, rate=0.0, max_length=16)
    start = generation.start_function(model, **PLAIN)

    def rows(prompt, new):
        settings = generation.GenerationSettings(new, temperature=0.0).as_tensors()
        state = start(tf.ragged.constant([prompt]), settings, tf.constant(0))[1]
        return generation.batch_state(state, settings)

    merged = generation.merge_batch_states(
        [(rows(list(range(1, 13)), 4), [0]), (rows([1], 14), [0])]
    )
    steps = generation.batch_steps_function(model, **PLAIN)
    _, tokens, counts = steps(merged, tf.zeros([2, 10], tf.int32))
    assert counts.numpy().tolist() == [4, 10]
    alone = model.generate(tf.constant([[1]]), max_new_tokens=10, temperature=0.0, **PLAIN)
    assert tokens.numpy()[1].tolist() == alone.numpy()[0, 1:].tolist()
