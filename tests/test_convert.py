"""Parity of the keras-hub converters: same weights, same numbers (max abs difference <= 1e-5 in float32).

Every keras-hub weight is overwritten with random values first (biases, layer-norm betas and
gammas included), so a weight that is dropped or mis-mapped shows up as a difference instead of
hiding behind a zero or a one.
"""

import keras
import keras_hub
import numpy as np
import pytest

from tf_bigmodels.convert import (
    bert_from_keras_hub,
    bert_pretrainer_from_keras_hub,
    gpt_from_keras_hub,
)
from tf_bigmodels.models import BERTPretrainer

ATOL = 1e-5

# (vocabulary_size, hidden_dim, num_heads, intermediate_dim, num_layers, max_sequence_length)
CONFIGS = [
    pytest.param(300, 64, 4, 128, 2, 16, id="d64-h4-l2"),
    pytest.param(97, 48, 3, 96, 1, 12, id="d48-h3-l1"),  # head count not a power of two
    pytest.param(50, 30, 5, 40, 2, 16, id="d30-h5-l2"),  # odd head width (6)
]


def _randomize(model, seed):
    """Gives every weight of `model` random values: gammas near 1, everything else near 0."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0.0, 0.2, variable.shape)
        if variable.path.endswith("gamma"):
            value += 1.0
        variable.assign(value.astype("float32"))


def _batch(vocabulary_size, max_length, seed, side="right"):
    """Three rows padded by different amounts (none, a few, most), junk ids in the padding.

    Right padding is BERT's layout. Left padding is what batched GPT prompts use, and the only
    layout in which a causal model's real positions can see padded ones, so it is the one that
    tests GPT's padding mask.
    """
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(0, vocabulary_size, (3, max_length)).astype("int32")
    lengths = np.array([max_length, max_length - 3, 2])
    positions = np.arange(max_length) if side == "right" else np.arange(max_length)[::-1]
    padding_mask = (positions[None, :] < lengths[:, None]).astype("int32")
    segment_ids = (np.arange(max_length)[None, :] >= lengths[:, None] // 2).astype("int32")
    return {
        "token_ids": token_ids,
        "segment_ids": segment_ids * padding_mask,
        "padding_mask": padding_mask,
    }


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _assert_close(got, want):
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def _bert_backbone(vocab, width, heads, dff, layers, max_length):
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocab,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        intermediate_dim=dff,
        max_sequence_length=max_length,
    )


def _gpt2_backbone(vocab, width, heads, dff, layers, max_length):
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        intermediate_dim=dff,
        max_sequence_length=max_length,
    )


@pytest.mark.parametrize("vocab, width, heads, dff, layers, max_length", CONFIGS)
def test_gpt_logits_match_gpt2_backbone(vocab, width, heads, dff, layers, max_length):
    backbone = _gpt2_backbone(vocab, width, heads, dff, layers, max_length)
    _randomize(backbone, seed=width)
    model = gpt_from_keras_hub(backbone)
    for side in ("right", "left"):
        inputs = _batch(vocab, max_length, seed=vocab, side=side)
        real = inputs["padding_mask"].astype(bool)

        hidden = _numpy(
            backbone({"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]})
        )
        expected = hidden @ _numpy(backbone.token_embedding.embeddings).T  # (B, T, vocab)
        logits = _numpy(model(inputs["token_ids"], padding_mask=inputs["padding_mask"]))

        assert logits.shape == (3, max_length, vocab)
        assert np.abs(expected).max() > 1.0  # the comparison is not between near-zero numbers
        _assert_close(logits[real], expected[real])
    assert (model.num_heads, model.d_model, model.dff) == (heads, width, dff)
    assert (model.activation, model.epsilon, model.norm_first) == ("gelu_approximate", 1e-5, True)


@pytest.mark.parametrize("vocab, width, heads, dff, layers, max_length", CONFIGS)
def test_bert_outputs_match_bert_backbone(vocab, width, heads, dff, layers, max_length):
    backbone = _bert_backbone(vocab, width, heads, dff, layers, max_length)
    _randomize(backbone, seed=width)
    encoder = bert_from_keras_hub(backbone)
    inputs = _batch(vocab, max_length, seed=vocab)
    real = inputs["padding_mask"].astype(bool)

    expected = backbone(inputs)
    outputs = encoder(inputs)

    _assert_close(
        _numpy(outputs["sequence_output"])[real], _numpy(expected["sequence_output"])[real]
    )
    _assert_close(_numpy(outputs["pooled_output"]), _numpy(expected["pooled_output"]))
    # keras-hub's BERT blocks use the tanh GELU; the converter must not keep our exact default.
    assert (encoder.activation, encoder.epsilon) == ("gelu_approximate", 1e-12)


@pytest.mark.parametrize("vocab, width, heads, dff, layers, max_length", CONFIGS)
@pytest.mark.slow
def test_mlm_logits_match_bert_masked_lm_head(vocab, width, heads, dff, layers, max_length):
    masked_lm = keras_hub.models.BertMaskedLM(
        _bert_backbone(vocab, width, heads, dff, layers, max_length)
    )
    _randomize(masked_lm, seed=width)
    pretrainer = bert_pretrainer_from_keras_hub(masked_lm)
    inputs = _batch(vocab, max_length, seed=vocab)
    mask_positions = np.array([[0, 5, 1], [3, 1, 2], [1, 0, 1]], "int32")  # real positions only

    sequence = masked_lm.backbone(inputs)["sequence_output"]
    expected = _numpy(masked_lm.masked_lm_head(sequence, mask_positions))
    outputs = pretrainer({**inputs, "mask_positions": mask_positions})

    assert outputs["mlm_logits"].shape == (3, 3, vocab)
    _assert_close(_numpy(outputs["mlm_logits"]), expected)
    assert outputs["nsp_logits"].shape == (3, 2)  # freshly initialised: no keras-hub counterpart


def test_converted_pretrainer_keeps_parity_through_config_round_trip():
    masked_lm = keras_hub.models.BertMaskedLM(_bert_backbone(97, 48, 3, 96, 1, 12))
    _randomize(masked_lm, seed=0)
    pretrainer = bert_pretrainer_from_keras_hub(masked_lm)
    inputs = {**_batch(97, 12, seed=0), "mask_positions": np.array([[0, 1]] * 3, "int32")}
    expected = _numpy(pretrainer(inputs)["mlm_logits"])

    rebuilt = BERTPretrainer.from_config(pretrainer.get_config())
    rebuilt(inputs)
    rebuilt.set_weights(pretrainer.get_weights())

    _assert_close(_numpy(rebuilt(inputs)["mlm_logits"]), expected)


def test_converted_model_shares_no_variables():
    backbone = _gpt2_backbone(50, 32, 2, 64, 1, 8)
    model = gpt_from_keras_hub(backbone)
    before = _numpy(model(np.ones((1, 4), "int32")))
    _randomize(backbone, seed=1)
    _assert_close(_numpy(model(np.ones((1, 4), "int32"))), before)


@pytest.mark.parametrize(
    "convert, argument, allowed, wrong",
    [
        (
            gpt_from_keras_hub,
            "backbone",
            "GPT2Backbone",
            lambda: _bert_backbone(50, 32, 2, 64, 1, 8),
        ),
        (
            bert_from_keras_hub,
            "backbone",
            "BertBackbone",
            lambda: _gpt2_backbone(50, 32, 2, 64, 1, 8),
        ),
        (
            bert_pretrainer_from_keras_hub,
            "masked_lm",
            "BertMaskedLM",
            lambda: _bert_backbone(50, 32, 2, 64, 1, 8),
        ),
        (gpt_from_keras_hub, "backbone", "GPT2Backbone", lambda: "gpt2_base_en"),
    ],
)
def test_wrong_argument_type_raises(convert, argument, allowed, wrong):
    with pytest.raises(TypeError, match=rf"`{argument}` must be a `keras_hub\.models\.{allowed}`"):
        convert(wrong())


def test_mixed_activations_raise():
    backbone = _gpt2_backbone(50, 32, 2, 64, 2, 8)
    backbone.transformer_layers[
        1
    ]._feedforward_intermediate_dense.activation = keras.activations.relu
    with pytest.raises(ValueError, match="one feed-forward activation"):
        gpt_from_keras_hub(backbone)


def test_unknown_activation_raises():
    backbone = _bert_backbone(50, 32, 2, 64, 1, 8)

    def doubled_relu(x):
        return keras.ops.relu(x) * 2.0

    backbone.transformer_layers[0]._feedforward_intermediate_dense.activation = doubled_relu
    with pytest.raises(ValueError, match="no equivalent in tf_bigmodels"):
        bert_from_keras_hub(backbone)


def test_heads_that_do_not_cover_the_width_raise():
    # keras-hub accepts hidden_dim=50 with 3 heads of 16 (48 dims projected back to 50).
    backbone = _gpt2_backbone(50, 50, 3, 64, 1, 8)
    with pytest.raises(ValueError, match="num_heads"):
        gpt_from_keras_hub(backbone)
