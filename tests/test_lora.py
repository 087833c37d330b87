"""LoRA: adapters on the projections, everything else frozen, merged when saved."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_bigmodels.export import export_bert, export_gpt
from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer, GPTModel
from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

D_MODEL, DFF, LAYERS, RANK = 16, 32, 2, 4
VOCAB = ByteTokenizer().vocab_size
TOKENS = np.random.default_rng(0).integers(1, 256, (4, 8)).astype("int32")
BERT_INPUTS = {"token_ids": TOKENS % 50, "padding_mask": np.ones_like(TOKENS)}
LABELS = np.array([0, 1, 1, 0], "int32")


def _gpt():
    keras.utils.set_random_seed(0)
    model = GPTModel(VOCAB, D_MODEL, 2, DFF, LAYERS, rate=0.0, max_length=8)
    model(TOKENS)
    return model


def _encoder(vocab_size=50):
    keras.utils.set_random_seed(0)
    return BERTEncoder(vocab_size, D_MODEL, 2, DFF, LAYERS, rate=0.0, max_length=8)


def _classifier(encoder=None, inputs=BERT_INPUTS):
    classifier = BERTClassifier(encoder or _encoder(), num_classes=2, rate=0.0)
    classifier(inputs)
    return classifier


def _values(model):
    values = {w.path: np.array(w.numpy()) for w in model.weights}
    assert len(values) == len(model.weights)  # every weight has its own path
    return values


def _changed_after_fit(model, x, y):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = _values(model)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    after = _values(model)
    return {path for path in before if not np.array_equal(before[path], after[path])}


def _lora_paths(model):
    return {w.path for w in model.weights if "lora_kernel" in w.path}


@pytest.mark.slow
def test_only_the_adapters_change_when_a_gpt_trains():
    model = _gpt()
    model.enable_lora(RANK)
    lora = _lora_paths(model)
    assert len(lora) == 2 * 2 * LAYERS  # A and B of the qkv and output projections
    assert _changed_after_fit(model, TOKENS, TOKENS) == lora


@pytest.mark.slow
def test_lora_on_a_trained_model_needs_a_new_compile_and_then_trains_the_adapters_only():
    model = _gpt()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-2), loss, jit_compile=False)
    model.fit(TOKENS, TOKENS, batch_size=4, verbose=0)
    before = model.predict(TOKENS, verbose=0)
    model.enable_lora(RANK)
    frozen = _values(model)
    with pytest.raises(ValueError, match=r"You must call `compile\(\)`"):
        model.fit(TOKENS, TOKENS, batch_size=4, verbose=0)
    model.compile(keras.optimizers.Adam(1e-2), loss, jit_compile=False)
    model.fit(TOKENS, TOKENS, batch_size=4, epochs=2, verbose=0)
    after = _values(model)
    changed = {path for path in frozen if not np.array_equal(frozen[path], after[path])}
    assert changed == _lora_paths(model)
    # predict runs the adapters too (not a function traced before they existed)
    assert not np.allclose(model.predict(TOKENS, verbose=0), before)


@pytest.mark.slow
def test_only_the_adapters_and_the_new_head_change_when_a_classifier_trains():
    classifier = _classifier()
    classifier.enable_lora(RANK)
    head = {w.path for w in classifier.output_dense.weights}
    assert _changed_after_fit(classifier, BERT_INPUTS, LABELS) == _lora_paths(classifier) | head


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("target", ["attention", "all"])
def test_trainable_parameters_are_the_adapters(target):
    # Per block: qkv (d -> 3d) and output (d -> d) adapters, (d + 3d) r + (d + d) r = 6 d r;
    # "all" adds the feed-forward layers, (d + dff) r + (dff + d) r.
    per_block = 6 * D_MODEL * RANK + (2 * (D_MODEL + DFF) * RANK if target == "all" else 0)
    gpt, encoder = _gpt(), _encoder()
    encoder(BERT_INPUTS)
    for model in (gpt, encoder):
        model.enable_lora(RANK, target=target)
        assert _trainable_count(model) == LAYERS * per_block
    classifier = _classifier()
    classifier.enable_lora(RANK, target=target)
    assert _trainable_count(classifier) == LAYERS * per_block + D_MODEL * 2 + 2  # + the head


def test_pretrainer_heads_stay_trainable():
    pretrainer = BERTPretrainer(_encoder())
    pretrainer({**BERT_INPUTS, "mask_positions": np.zeros((4, 2), "int32")})
    pretrainer.enable_lora(RANK)
    heads = sum(
        int(np.prod(w.shape)) for w in pretrainer.mlm_head.weights + pretrainer.nsp_head.weights
    )
    assert _trainable_count(pretrainer) == LAYERS * 6 * D_MODEL * RANK + heads
    assert not any(w.trainable for w in pretrainer.encoder.token_embedding.weights)


def test_outputs_at_initialisation_equal_the_base_model():
    gpt = _gpt()
    base = gpt(TOKENS).numpy()
    gpt.enable_lora(RANK, target="all")
    np.testing.assert_array_equal(gpt(TOKENS).numpy(), base)  # B = 0: the update is exactly 0
    classifier = _classifier()
    base = classifier(BERT_INPUTS).numpy()
    classifier.enable_lora(RANK)
    np.testing.assert_array_equal(classifier(BERT_INPUTS).numpy(), base)


@pytest.mark.slow
def test_keras_file_holds_the_merged_model(tmp_path):
    model = _gpt()
    base = model(TOKENS).numpy()
    model.enable_lora(RANK)
    _changed_after_fit(model, TOKENS, TOKENS)
    adapted = model(TOKENS).numpy()
    assert np.abs(adapted - base).max() > 1e-3  # training moved the model away from its base
    model.save(tmp_path / "adapted.keras")
    reloaded = keras.saving.load_model(tmp_path / "adapted.keras")  # no custom_objects
    np.testing.assert_allclose(reloaded(TOKENS).numpy(), adapted, atol=1e-5, rtol=0)
    assert _lora_paths(reloaded) == set()  # merged: a plain model, every weight trainable
    assert all(w.trainable for w in reloaded.weights)


@pytest.mark.slow  # exports a SavedModel
def test_gpt_savedmodel_equals_the_adapted_model(tmp_path):
    model = _gpt()
    model.enable_lora(RANK)
    _changed_after_fit(model, TOKENS, TOKENS)
    path = export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=2, jit_compile=False)
    served = tf.saved_model.load(path).signatures["logits"](token_ids=tf.constant(TOKENS))
    np.testing.assert_allclose(served["logits"].numpy(), model(TOKENS).numpy(), atol=1e-5)


@pytest.mark.slow  # exports a SavedModel
def test_classifier_savedmodel_equals_the_adapted_model(tmp_path):
    texts = ["the cat sat on the mat", "a dog ran in the park"]
    tokenizer = WordPieceTokenizer.train(texts * 20, vocab_size=40, verbose=False)
    ids = [[tokenizer.cls_id, *tokenizer.tokenize(t).numpy().tolist(), tokenizer.sep_id]
           for t in texts]  # fmt: skip
    width = max(map(len, ids))
    token_ids = np.array([row + [tokenizer.pad_id] * (width - len(row)) for row in ids], "int32")
    inputs = {"token_ids": token_ids, "padding_mask": (token_ids != tokenizer.pad_id) * 1}
    classifier = _classifier(_encoder(tokenizer.vocab_size), inputs)
    classifier.enable_lora(RANK)
    _changed_after_fit(classifier, inputs, LABELS[:2])
    path = export_bert(
        classifier, tokenizer, tmp_path, class_names=["no", "yes"], jit_compile=False
    )
    served = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(texts))
    expected = keras.ops.softmax(classifier(inputs)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("rank", [0, -2, 1.5, True, "4", None])
def test_bad_rank_is_refused(rank):
    with pytest.raises(ValueError, match="`rank` must be an integer >= 1, got"):
        _gpt().enable_lora(rank)


def test_bad_target_unbuilt_model_and_second_call_are_refused():
    model = _gpt()
    with pytest.raises(ValueError, match=r"`target` must be one of \['attention', 'all'\]"):
        model.enable_lora(RANK, target="ffn")
    with pytest.raises(ValueError, match="needs a built GPTModel"):
        GPTModel(VOCAB, D_MODEL, 2, DFF, LAYERS).enable_lora(RANK)
    model.enable_lora(RANK)
    with pytest.raises(ValueError, match="already enabled"):
        model.enable_lora(RANK)
