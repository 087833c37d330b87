import keras
import numpy as np
import pytest
from helpers import assert_layer_contract

from tf_bigmodels.layers import (
    MultiHeadSelfAttention,
    TransformerLayer,
    attention_mask,
    scaled_dot_product_attention,
)

B, T, D, H, DFF = 2, 8, 24, 3, 40


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype("float32")


def _padding(lengths):
    return (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype("int32")


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(causal=True, norm_first=True, activation="gelu_approximate"),
        dict(rate=0.2, epsilon=1e-5, activation="relu", name="block"),
    ],
)
@pytest.mark.slow
def test_common_checks(options, tmp_path):
    assert_layer_contract(
        TransformerLayer,
        dict(d_model=D, num_heads=H, dff=DFF, **options),
        {"x": _x(), "padding_mask": _padding([T, 5])},
        (B, T, D),
        tmp_path=tmp_path,
    )


def test_attention_common_checks(tmp_path):
    assert_layer_contract(
        MultiHeadSelfAttention,
        dict(num_heads=H, rate=0.1),
        {"x": _x()},
        (B, T, D),
        tmp_path=tmp_path,
    )


def test_per_head_width_and_feed_forward_back_to_d_model():
    layer = TransformerLayer(D, H, DFF)
    out = layer(_x())
    assert out.shape == (B, T, D)  # dff != d_model, yet the residual sum works
    assert layer.attention.head_dim == D // H
    attention_params = 4 * D * D + 4 * D  # Q, K, V, O of width d_model in total, not per head
    ffn_params = D * DFF + DFF + DFF * D + D
    norm_params = 2 * 2 * D
    assert layer.count_params() == attention_params + ffn_params + norm_params


def test_causal_position_depends_only_on_earlier_positions():
    layer = TransformerLayer(D, H, DFF, causal=True)
    x = _x()
    base = np.asarray(layer(x))
    for i in range(T - 1):
        changed = x.copy()
        changed[:, i + 1 :] = _x(seed=i + 1)[:, i + 1 :]
        out = np.asarray(layer(changed))
        np.testing.assert_allclose(out[:, : i + 1], base[:, : i + 1], atol=1e-6, rtol=0)
        assert np.abs(out[:, i + 1 :] - base[:, i + 1 :]).max() > 1e-3


def test_non_causal_layer_sees_later_positions():
    layer = TransformerLayer(D, H, DFF)
    x = _x()
    changed = x.copy()
    changed[:, -1] += 1.0
    assert np.abs(np.asarray(layer(changed))[:, 0] - np.asarray(layer(x))[:, 0]).max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_padded_positions_do_not_leak_into_real_ones(causal):
    layer = TransformerLayer(D, H, DFF, causal=causal)
    lengths = [T, 3]
    mask = _padding(lengths)
    x = _x()
    noisy = np.where(mask[..., None] == 1, x, _x(seed=7) * 10)
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(layer(noisy, padding_mask=mask))[real],
        np.asarray(layer(x, padding_mask=mask))[real],
        atol=1e-6,
        rtol=0,
    )
    # Without the mask the padding does leak (for the bidirectional layer), so the test has teeth.
    if not causal:
        assert np.abs(np.asarray(layer(noisy))[real] - np.asarray(layer(x))[real]).max() > 1e-3


def test_left_padding_with_causal_mask():
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * T], "int32")
    layer = TransformerLayer(D, H, DFF, causal=True)
    x = _x()
    noisy = np.where(mask[..., None] == 1, x, -x * 5)
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(layer(noisy, padding_mask=mask))[real],
        np.asarray(layer(x, padding_mask=mask))[real],
        atol=1e-6,
        rtol=0,
    )


def test_attention_mask_combines_padding_and_causal():
    mask = np.asarray(
        attention_mask(np.array([[1, 1, 0]]), causal=True, query_length=3, key_length=3)
    )
    np.testing.assert_array_equal(mask[0], [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    offset = np.asarray(
        attention_mask(None, causal=True, query_length=1, key_length=4, query_offset=2)
    )
    np.testing.assert_array_equal(offset[0], [[1, 1, 1, 0]])
    assert attention_mask(None) is None


def test_post_norm_output_is_normalised_and_pre_norm_is_not():
    x = _x() * 3 + 1
    post = np.asarray(TransformerLayer(D, H, DFF, norm_first=False)(x))
    pre = np.asarray(TransformerLayer(D, H, DFF, norm_first=True)(x))
    np.testing.assert_allclose(post.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(post.std(-1), 1, atol=1e-2)
    assert np.abs(pre.mean(-1)).max() > 0.1


def test_gelu_forms():
    exact = TransformerLayer(D, H, DFF, activation="gelu").ffn_hidden.activation
    tanh = TransformerLayer(D, H, DFF, activation="gelu_approximate").ffn_hidden.activation
    assert float(exact(np.float32(1.0))) == pytest.approx(0.8413447, abs=1e-6)
    assert float(tanh(np.float32(1.0))) == pytest.approx(0.8411920, abs=1e-6)


def test_dropout_only_in_training():
    layer = TransformerLayer(D, H, DFF, rate=0.5)
    x = _x()
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(layer(x, training=False)))
    assert np.abs(np.asarray(layer(x, training=True)) - np.asarray(layer(x))).max() > 1e-3


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_with_masks_stays_finite_and_close(policy):
    reference = TransformerLayer(D, H, DFF, causal=True)
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * T], "int32")
    x = _x()
    want = np.asarray(reference(x, padding_mask=mask))
    mixed = TransformerLayer.from_config({**reference.get_config(), "dtype": policy})
    mixed.build(x.shape)
    mixed.set_weights(reference.get_weights())
    got = np.asarray(keras.ops.cast(mixed(x, padding_mask=mask), "float32"))
    assert mixed.attention_norm.compute_dtype == policy.split("_")[1]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=0.1)
    _, weights = mixed(x, padding_mask=mask, return_attention_scores=True)
    assert keras.backend.standardize_dtype(weights.dtype) == "float32"  # softmax in float32


def test_plain_formula_matches_keras_multi_head_attention():
    ours = MultiHeadSelfAttention(num_heads=H)
    x = _x()
    mask = attention_mask(_padding([T, 4]), causal=True, query_length=T, key_length=T)
    ours_out = np.asarray(ours(x, attention_mask=mask))
    theirs = keras.layers.MultiHeadAttention(num_heads=H, key_dim=D // H)
    theirs(x, x, attention_mask=mask)
    qkv_kernel, qkv_bias = ours.qkv.get_weights()
    out_kernel, out_bias = ours.output_dense.get_weights()
    per_head = lambda a: a.reshape(a.shape[:-1] + (H, D // H))  # noqa: E731
    weights = []
    for i in range(3):
        weights += [
            per_head(qkv_kernel[:, i * D : (i + 1) * D]),
            per_head(qkv_bias[i * D : (i + 1) * D]),
        ]
    theirs.set_weights(weights + [out_kernel.reshape(H, D // H, D), out_bias])
    np.testing.assert_allclose(
        ours_out, np.asarray(theirs(x, x, attention_mask=mask)), atol=1e-5, rtol=0
    )


def test_scaled_dot_product_attention_against_numpy():
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(1, 2, 4, 8)).astype("float32") for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)
    expected = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(weights), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), expected @ v, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(d_model=30, num_heads=4, dff=8), "d_model"),
        (dict(d_model=0, num_heads=4, dff=8), "d_model"),
        (dict(d_model=32, num_heads=-1, dff=8), "num_heads"),
        (dict(d_model=32, num_heads=4, dff=0), "dff"),
        (dict(d_model=32, num_heads=4, dff=8, rate=1.0), "rate"),
        (dict(d_model=32, num_heads=4, dff=8, rate=-0.1), "rate"),
        (dict(d_model=32, num_heads=4, dff=8, epsilon=0), "epsilon"),
        (dict(d_model=32, num_heads=4, dff=8, activation="no_such_fn"), "activation"),
    ],
)
def test_bad_config_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        TransformerLayer(**kwargs)


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match="d_model"):
        TransformerLayer(32, 4, 64)(np.zeros((1, 3, 16), "float32"))


def test_keras_mask_from_embedding_acts_as_padding_mask():
    token_ids = keras.Input((T,), dtype="int32")
    x = keras.layers.Embedding(50, D, mask_zero=True)(token_ids)
    x = TransformerLayer(D, H, DFF)(x)
    model = keras.Model(token_ids, x)
    tokens = np.random.default_rng(0).integers(1, 50, size=(2, T)).astype("int32")
    tokens[1, 5:] = 0
    out = np.asarray(model(tokens))
    # Make the padded positions' embeddings different while keeping their id 0 masked.
    embedding = model.layers[1]
    table = embedding.embeddings.numpy()
    table[0] += 5.0
    embedding.embeddings.assign(table)
    changed = np.asarray(model(tokens))
    np.testing.assert_allclose(changed[1, :5], out[1, :5], atol=1e-6, rtol=0)
    assert np.abs(changed[1, 5:] - out[1, 5:]).max() > 1e-3
