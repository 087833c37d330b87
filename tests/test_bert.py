import re

import keras
import numpy as np
import pytest
from helpers import assert_layer_contract, reference_attention_weights

from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer

VOCAB, T, P = 53, 10, 3
SMALL = dict(
    vocab_size=VOCAB, d_model=24, num_heads=3, dff=48, num_layers=2, rate=0.0, max_length=16
)


def _inputs(lengths=(T, 6), seed=0):
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    mask = (np.arange(T)[None] < np.array(lengths)[:, None]).astype("int32")
    segments = (np.arange(T)[None] >= np.array(lengths)[:, None] // 2).astype("int32") * mask
    return {
        "token_ids": rng.integers(5, VOCAB, size=(batch, T)).astype("int32") * mask,
        "segment_ids": segments,
        "padding_mask": mask,
    }


def _pretraining_inputs(seed=0):
    return dict(_inputs(seed=seed), mask_positions=np.array([[1, 4, 7], [2, 3, 0]], "int32"))


def _labels():
    return {
        "mask_ids": np.array([[7, 8, 9], [10, 11, 0]], "int32"),
        "mask_weights": np.array([[1, 1, 1], [1, 1, 0]], "float32"),
        "next_sentence_labels": np.array([0, 1], "int32"),
    }


@pytest.mark.slow  # the pretrainer's and classifier's checks run the encoder too
def test_encoder_common_checks(tmp_path):
    assert_layer_contract(
        BERTEncoder,
        SMALL,
        {"inputs": _inputs()},
        {"sequence_output": (2, T, 24), "pooled_output": (2, 24)},
        fit=False,
        tmp_path=tmp_path,
    )


def test_pretrainer_common_checks(tmp_path):
    assert_layer_contract(
        BERTPretrainer,
        {"encoder": BERTEncoder(**SMALL)},
        {"inputs": _pretraining_inputs()},
        {"mlm_logits": (2, P, VOCAB), "nsp_logits": (2, 2)},
        mixed_dtypes={"mlm_logits": "float32", "nsp_logits": "float32"},
        fit=False,
        tmp_path=tmp_path,
    )


def test_classifier_common_checks(tmp_path):
    assert_layer_contract(
        BERTClassifier,
        {"encoder": BERTEncoder(**SMALL), "num_classes": 4, "rate": 0.1},
        {"inputs": _inputs()},
        (2, 4),
        mixed_dtypes="float32",
        fit=False,
        tmp_path=tmp_path,
    )


def test_padding_does_not_change_real_positions_or_pooled_output():
    encoder = BERTEncoder(**SMALL)
    inputs = _inputs(lengths=(T, 6, 3))
    real = inputs["padding_mask"].astype(bool)
    other = dict(
        inputs,
        token_ids=np.where(real, inputs["token_ids"], 17).astype("int32"),
        segment_ids=np.where(real, inputs["segment_ids"], 1).astype("int32"),
    )
    a, b = encoder(inputs), encoder(other)
    np.testing.assert_allclose(
        np.asarray(a["sequence_output"])[real],
        np.asarray(b["sequence_output"])[real],
        atol=1e-6,
        rtol=0,
    )
    np.testing.assert_allclose(
        np.asarray(a["pooled_output"]), np.asarray(b["pooled_output"]), atol=1e-6, rtol=0
    )
    # Without the padding mask the same change does reach real positions.
    unmasked = encoder({k: v for k, v in inputs.items() if k != "padding_mask"})
    unmasked_other = encoder({k: v for k, v in other.items() if k != "padding_mask"})
    assert (
        np.abs(
            np.asarray(unmasked["pooled_output"]) - np.asarray(unmasked_other["pooled_output"])
        ).max()
        > 1e-4
    )


def test_encoder_is_bidirectional_and_uses_segments():
    encoder = BERTEncoder(**SMALL)
    inputs = _inputs(lengths=(T, T))
    base = np.asarray(encoder(inputs)["sequence_output"])
    later = dict(inputs, token_ids=inputs["token_ids"].copy())
    later["token_ids"][:, -1] = (later["token_ids"][:, -1] + 1) % VOCAB
    assert np.abs(np.asarray(encoder(later)["sequence_output"])[:, 0] - base[:, 0]).max() > 1e-4
    segments = dict(inputs, segment_ids=1 - inputs["segment_ids"])
    assert np.abs(np.asarray(encoder(segments)["sequence_output"]) - base).max() > 1e-4


def test_pooled_output_is_tanh_dense_of_cls():
    encoder = BERTEncoder(**SMALL)
    out = encoder(_inputs())
    kernel, bias = encoder.pooler.get_weights()
    cls = np.asarray(out["sequence_output"])[:, 0]
    np.testing.assert_allclose(
        np.asarray(out["pooled_output"]), np.tanh(cls @ kernel + bias), atol=1e-5
    )


def test_post_norm_blocks():
    encoder = BERTEncoder(**SMALL)
    assert all(not block.norm_first and not block.causal for block in encoder.blocks)
    sequence = np.asarray(encoder(_inputs())["sequence_output"])
    np.testing.assert_allclose(sequence.std(-1), 1, atol=1e-2)


def test_mlm_head_is_tied_to_the_token_embedding():
    pretrainer = BERTPretrainer(BERTEncoder(**SMALL))
    inputs = _pretraining_inputs()
    before = np.asarray(pretrainer(inputs)["mlm_logits"])
    table = pretrainer.encoder.token_embedding.embeddings
    names = [w.path for w in pretrainer.mlm_head.weights]
    assert not any("kernel" in n and "transform" not in n for n in names), names
    # Changing a row of the embedding used only as an output (not among the inputs) moves only
    # that column of the MLM logits.
    unused = 2
    assert unused not in inputs["token_ids"]
    shift = np.zeros((VOCAB, 24), "float32")
    shift[unused] = np.random.default_rng(1).normal(size=24)
    table.assign(np.asarray(table) + shift)
    after = np.asarray(pretrainer(inputs)["mlm_logits"])
    assert np.abs(after[..., unused] - before[..., unused]).max() > 1e-3
    np.testing.assert_allclose(
        np.delete(after, unused, -1), np.delete(before, unused, -1), atol=1e-6
    )


def test_pretraining_loss_averages_over_real_predictions_only():
    pretrainer = BERTPretrainer(BERTEncoder(**SMALL))
    pretrainer.compile(optimizer="sgd")
    inputs, labels = _pretraining_inputs(), _labels()
    out = pretrainer(inputs)
    loss = float(pretrainer.compute_loss(inputs, labels, out))

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    mlm_lp = log_softmax(np.asarray(out["mlm_logits"]))
    mlm_ce = -np.take_along_axis(mlm_lp, labels["mask_ids"][..., None], -1)[..., 0]
    weights = labels["mask_weights"]
    nsp_lp = log_softmax(np.asarray(out["nsp_logits"]))
    nsp_ce = -nsp_lp[np.arange(2), labels["next_sentence_labels"]]
    expected = (mlm_ce * weights).sum() / weights.sum() + nsp_ce.mean()
    assert loss == pytest.approx(expected, abs=1e-5)
    # The label of an unused slot (weight 0) does not matter.
    other = dict(labels, mask_ids=labels["mask_ids"].copy())
    other["mask_ids"][1, 2] = 40
    assert float(pretrainer.compute_loss(inputs, other, out)) == pytest.approx(loss, abs=1e-6)


@pytest.mark.slow  # hundreds of training steps
def test_pretrainer_learns_mlm_and_nsp_on_synthetic_data():
    rng = np.random.default_rng(0)
    n = 64
    token_ids = rng.integers(5, VOCAB, size=(n, T)).astype("int32")
    next_label = rng.integers(0, 2, size=n).astype("int32")
    token_ids[:, 0] = 1
    token_ids[:, 5] = np.where(next_label == 1, 3, 4)  # NSP is readable from one token
    positions = np.tile(np.array([[2, 6, 8]], "int32"), (n, 1))
    mask_ids = np.take_along_axis(token_ids, positions, 1) % 5 + 5  # a learnable target
    inputs = {
        "token_ids": token_ids,
        "segment_ids": (np.arange(T) >= 5).astype("int32")[None].repeat(n, 0),
        "padding_mask": np.ones((n, T), "int32"),
        "mask_positions": positions,
    }
    labels = {
        "mask_ids": mask_ids,
        "mask_weights": np.ones((n, 3), "float32"),
        "next_sentence_labels": next_label,
    }
    pretrainer = BERTPretrainer(BERTEncoder(**SMALL))
    pretrainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = pretrainer.fit(inputs, labels, batch_size=32, epochs=30, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"token_ids": np.ones((1, 4), "int32"), "segment": np.zeros((1, 4), "int32")}, "segment"),
        ({"segment_ids": np.zeros((1, 4), "int32")}, "token_ids"),
    ],
)
def test_wrong_input_keys_are_named(inputs, message):
    with pytest.raises(ValueError, match=message):
        BERTEncoder(**SMALL)(inputs)


def test_pretrainer_needs_mask_positions():
    with pytest.raises(ValueError, match="mask_positions"):
        BERTPretrainer(BERTEncoder(**SMALL))(_inputs())


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(SMALL, d_model=25), "d_model"),
        (dict(SMALL, type_vocab_size=0), "type_vocab_size"),
        (dict(SMALL, rate=1), "rate"),
    ],
)
def test_bad_config_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        BERTEncoder(**kwargs)


def test_wrappers_take_only_an_encoder():
    with pytest.raises(TypeError, match="encoder"):
        BERTPretrainer("bert")
    with pytest.raises(ValueError, match="num_classes"):
        BERTClassifier(BERTEncoder(**SMALL), num_classes=0)


def test_pretrainer_reports_mlm_accuracy_over_real_predictions_and_nsp_accuracy():
    pretrainer = BERTPretrainer(BERTEncoder(**SMALL))
    pretrainer.compile(optimizer="sgd")
    inputs, labels = _pretraining_inputs(), _labels()
    out = pretrainer(inputs)
    predicted = np.asarray(out["mlm_logits"]).argmax(-1)
    # Make exactly the first real prediction right and the unused slot "right" too: the unused
    # slot must not count.
    labels["mask_ids"] = np.where(np.arange(3)[None] == 0, predicted, (predicted + 1) % VOCAB)
    labels["mask_ids"][1, 2] = predicted[1, 2]
    labels["mask_ids"] = labels["mask_ids"].astype("int32")
    nsp_predicted = np.asarray(out["nsp_logits"]).argmax(-1)
    labels["next_sentence_labels"] = np.array([nsp_predicted[0], 1 - nsp_predicted[1]], "int32")
    results = pretrainer.evaluate(inputs, labels, batch_size=2, verbose=0, return_dict=True)
    assert results["mlm_accuracy"] == pytest.approx(2 / 5)
    assert results["nsp_accuracy"] == pytest.approx(0.5)


def test_attention_weights_are_the_ones_the_forward_pass_uses():
    encoder = BERTEncoder(**dict(SMALL, rate=0.1))  # dropout must be off in the call
    inputs = _inputs(lengths=(T, 6))
    weights = encoder.attention_weights(inputs)
    assert len(weights) == SMALL["num_layers"]
    real = inputs["padding_mask"].astype(bool)
    x = encoder.token_embedding(inputs["token_ids"])
    x = x + encoder.position_embedding(x) + encoder.segment_embedding(inputs["segment_ids"])
    x = encoder.embedding_norm(x)
    for block, got in zip(encoder.blocks, weights):
        got = keras.ops.convert_to_numpy(got)
        assert got.shape == (2, 3, T, T) and got.dtype == np.float32
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5, rtol=0)
        assert (got[1][:, :, 6:] == 0).all() and (got[1][:, :6, :6] > 0).all()  # both directions
        want = reference_attention_weights(block, x, real[:, None, :])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        x = block(x, padding_mask=inputs["padding_mask"])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(x),
        keras.ops.convert_to_numpy(encoder(inputs)["sequence_output"]),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize(
    "key, bad, allowed",
    [
        ("token_ids", -1, f"[0, {VOCAB})"),
        ("token_ids", VOCAB, f"[0, {VOCAB})"),
        ("segment_ids", -1, "[0, 2)"),
        ("segment_ids", 2, "[0, 2)"),
        ("mask_positions", -1, f"[0, {T})"),
        ("mask_positions", T, f"[0, {T})"),
    ],
)
def test_ids_outside_their_range_are_refused_in_eager_calls(key, bad, allowed):
    """Keras's gather would wrap -1 around to the last row and read zeros past the end on GPU."""
    inputs = _pretraining_inputs()
    inputs[key] = inputs[key].copy()
    inputs[key][0, 1] = bad
    pretrainer = BERTPretrainer(BERTEncoder(**SMALL))
    calls = [pretrainer]
    if key != "mask_positions":
        inputs_without = {k: v for k, v in inputs.items() if k != "mask_positions"}
        calls += [lambda _: pretrainer.encoder(inputs_without)]
        calls += [lambda _: pretrainer.encoder.attention_weights(inputs_without)]
    for call in calls:
        with pytest.raises(ValueError, match=rf"`{key}` must be ids in {re.escape(allowed)}, got"):
            call(inputs)
