import math

import keras
import numpy as np
import pytest
from helpers import assert_layer_contract, reference_attention_weights

from tf_bigmodels.models import GPTModel

VOCAB, T = 37, 12
SMALL = dict(
    vocab_size=VOCAB, d_model=24, num_heads=3, dff=48, num_layers=2, rate=0.0, max_length=16
)


def _tokens(seed=0, batch=2, length=T):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype("int32")


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        pytest.param(
            dict(tie_embeddings=False, norm_first=False, activation="gelu", rate=0.1),
            marks=pytest.mark.slow,  # the same checks again, for the other options
        ),
    ],
)
@pytest.mark.slow
def test_common_checks(options, tmp_path):
    assert_layer_contract(
        GPTModel,
        {**SMALL, **options},
        {"token_ids": _tokens(), "padding_mask": np.ones((2, T), "int32")},
        (2, T, VOCAB),
        mixed_dtypes="float32",
        tmp_path=tmp_path,
    )


def test_article_constructor_arguments_are_positional():
    model = GPTModel(VOCAB, 24, 3, 48, 2, 0.0, max_length=16)
    assert (
        model.vocab_size,
        model.d_model,
        model.num_heads,
        model.dff,
        model.num_layers,
        model.rate,
    ) == (VOCAB, 24, 3, 48, 2, 0.0)


def test_logits_at_position_i_ignore_later_tokens():
    model = GPTModel(**SMALL)
    tokens = _tokens()
    base = np.asarray(model(tokens))
    for i in range(T - 1):
        changed = tokens.copy()
        changed[:, i + 1 :] = (tokens[:, i + 1 :] + 1 + i) % VOCAB
        out = np.asarray(model(changed))
        np.testing.assert_allclose(out[:, : i + 1], base[:, : i + 1], atol=1e-6, rtol=0)
        assert np.abs(out[:, i + 1 :] - base[:, i + 1 :]).max() > 1e-4


def test_position_embedding_makes_order_matter():
    # Attention alone is blind to order: the last position's output is the same for any order of
    # the earlier tokens. With position embeddings (the article's GPT has none) it is not.
    model = GPTModel(**dict(SMALL, num_layers=1))
    logits = np.asarray(model(np.array([[1, 2, 3], [2, 1, 3]], "int32")))
    assert np.abs(logits[0, -1] - logits[1, -1]).max() > 1e-4
    model.position_embedding.embeddings.assign(np.zeros((16, 24), "float32"))
    logits = np.asarray(model(np.array([[1, 2, 3], [2, 1, 3]], "int32")))
    np.testing.assert_allclose(logits[0, -1], logits[1, -1], atol=1e-5)


def test_right_padding_does_not_change_real_positions():
    model = GPTModel(**SMALL)
    lengths = np.array([T, 5])
    mask = (np.arange(T)[None] < lengths[:, None]).astype("int32")
    tokens = _tokens()
    other = np.where(mask == 1, tokens, (tokens + 7) % VOCAB)
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(model(other, padding_mask=mask))[real],
        np.asarray(model(tokens, padding_mask=mask))[real],
        atol=1e-6,
        rtol=0,
    )


def test_sequence_longer_than_max_length_is_an_error():
    model = GPTModel(**SMALL)
    with pytest.raises(ValueError, match="max_length"):
        model(np.zeros((1, 17), "int32"))


def test_gpt2_initialisation_scales_residual_projections():
    model = GPTModel(vocab_size=300, d_model=96, num_heads=4, dff=384, num_layers=8)
    model(np.zeros((1, 4), "int32"))
    block = model.blocks[3]
    assert np.std(block.attention.qkv.kernel.numpy()) == pytest.approx(0.02, rel=0.05)
    assert np.std(block.ffn_hidden.kernel.numpy()) == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert np.std(block.attention.output_dense.kernel.numpy()) == pytest.approx(
        residual_std, rel=0.1
    )
    assert np.std(block.ffn_output.kernel.numpy()) == pytest.approx(residual_std, rel=0.1)
    assert not np.allclose(
        model.blocks[0].attention.qkv.kernel.numpy(), model.blocks[1].attention.qkv.kernel.numpy()
    )


def test_tied_and_untied_output():
    tied = GPTModel(**SMALL)
    untied = GPTModel(**SMALL, tie_embeddings=False)
    tokens = _tokens()
    tied(tokens), untied(tokens)
    assert untied.count_params() - tied.count_params() == VOCAB * 24
    hidden = np.asarray(tied.hidden_states(tokens))
    table = tied.token_embedding.embeddings.numpy()
    np.testing.assert_allclose(np.asarray(tied(tokens)), hidden @ table.T, atol=1e-5)


def test_final_norm_only_for_pre_norm():
    assert GPTModel(**SMALL).final_norm is not None
    assert GPTModel(**SMALL, norm_first=False).final_norm is None


@pytest.mark.slow  # hundreds of training steps
def test_memorises_a_repeating_sequence():
    pattern = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], "int32")
    sequence = np.tile(pattern, 8)
    windows = np.stack([sequence[i : i + T + 1] for i in range(0, len(sequence) - T - 1)])
    model = GPTModel(
        vocab_size=10, d_model=32, num_heads=2, dff=64, num_layers=2, rate=0.0, max_length=T
    )
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = model.fit(
        windows[:, :-1], windows[:, 1:], batch_size=len(windows), epochs=60, verbose=0
    )
    losses = history.history["loss"]
    assert losses[0] > 1.5
    assert losses[-1] < 0.25  # after 60 steps the 12-periodic sequence is almost memorised


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(SMALL, num_heads=5), "d_model"),
        (dict(SMALL, vocab_size=0), "vocab_size"),
        (dict(SMALL, num_layers=0), "num_layers"),
        (dict(SMALL, rate=1.5), "rate"),
        (dict(SMALL, max_length=-3), "max_length"),
        (dict(SMALL, dff=2.5), "dff"),
    ],
)
def test_bad_config_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        GPTModel(**kwargs)


def test_attention_weights_are_the_ones_the_forward_pass_uses():
    model = GPTModel(**dict(SMALL, num_layers=3, rate=0.1))  # dropout must be off in the call
    tokens = _tokens(seed=3)
    padding_mask = np.ones((2, T), bool)
    padding_mask[1, -4:] = False
    weights = model.attention_weights(tokens, padding_mask=padding_mask)
    assert len(weights) == 3
    allowed = np.tril(np.ones((T, T), bool))[None] & padding_mask[:, None, :]
    x = model.token_embedding(tokens)
    x = x + model.position_embedding(x)
    for block, got in zip(model.blocks, weights):
        got = keras.ops.convert_to_numpy(got)
        assert got.shape == (2, 3, T, T) and got.dtype == np.float32
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5, rtol=0)
        assert (got[:, :, ~np.tril(np.ones((T, T), bool))] == 0).all()  # causal: exact zeros
        assert (got[1][:, :, -4:] == 0).all()  # padded keys
        want = reference_attention_weights(block, x, allowed)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        x = block(x, padding_mask=padding_mask)
    # The same pass gives the model's logits: the weights come from what `call` computes.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.logits_from_hidden_states(model.final_norm(x))),
        keras.ops.convert_to_numpy(model(tokens, padding_mask=padding_mask)),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("bad", [-1, VOCAB])
def test_token_ids_outside_the_vocabulary_are_refused_in_eager_calls(bad):
    """Keras's gather would wrap -1 around to the last row and read zeros past the end on GPU."""
    model = GPTModel(**SMALL)
    tokens = _tokens()
    tokens[1, 3] = bad
    for call in (model, model.hidden_states, model.attention_weights):
        with pytest.raises(
            ValueError, match=rf"`token_ids` must be ids in \[0, {VOCAB}\), got values from"
        ):
            call(tokens)
