"""Weight-compressed decoding: bfloat16 and int8 copies decode like float32 and read fewer bytes."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_all_here

from tf_bigmodels.export import export_gpt, load_generator
from tf_bigmodels.models import GPTModel, compress_weights
from tf_bigmodels.models.compression import CompressedDense
from tf_bigmodels.tokenizers import ByteTokenizer

TEXT = (
    b"To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    b"the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    b"and by opposing end them. "
) * 4
PROMPT = "To be, or not to be"
NEW_TOKENS = 32
# max |logit difference| / std(float32 logits) on the trained model below; measured 0.009
# (bfloat16) and 0.020 (int8).
LOGIT_TOLERANCE = {"bfloat16": 0.03, "int8": 0.06}


@pytest.fixture(scope="module")
def trained():
    """A byte-level GPT trained for 150 steps on TEXT, so its greedy choices are not near-ties."""
    keras.utils.set_random_seed(0)
    model = GPTModel(258, 64, 4, 256, 2, rate=0.0, max_length=64)
    data = np.frombuffer(TEXT, np.uint8).astype("int32")
    starts = np.random.default_rng(0).integers(0, len(data) - 33, 16 * 150)
    x = np.stack([data[s : s + 32] for s in starts])
    y = np.stack([data[s + 1 : s + 33] for s in starts])
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model


def _prompt_ids():
    return np.array([list(PROMPT.encode())], "int32")


def _greedy(model):
    return model.generate(_prompt_ids(), NEW_TOKENS, temperature=0.0).numpy()[0].tolist()


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
@pytest.mark.slow
def test_compressed_model_decodes_the_float32_greedy_text(trained, weights):
    compressed = compress_weights(trained, weights)
    reference = trained(_prompt_ids()).numpy()
    difference = np.abs(compressed(_prompt_ids()).numpy() - reference).max()
    assert difference / reference.std() < LOGIT_TOLERANCE[weights]
    assert difference > 0  # the weights really changed
    assert _greedy(compressed) == _greedy(trained)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_compressed_copy_stores_matrices_compressed_and_leaves_the_model(trained, weights):
    before = [w.copy() for w in trained.get_weights()]
    compressed = compress_weights(trained, weights)
    matrices = [
        *(layer.kernel for block in compressed.blocks for layer in _dense_layers(block)),
        compressed.token_embedding.embeddings,
    ]
    assert {m.dtype for m in matrices} == {weights}
    assert all(isinstance(layer, CompressedDense) for layer in _dense_layers(compressed.blocks[0]))
    assert {w.dtype for w in trained.weights} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))
    assert compress_weights(trained, "float32") is trained


def _dense_layers(block):
    return [block.attention.qkv, block.attention.output_dense, block.ffn_hidden, block.ffn_output]


def test_int8_dense_is_the_per_unit_weight_only_product():
    dense = keras.layers.Dense(5, activation="relu")
    x = keras.random.normal((3, 7), seed=1)
    dense(x)
    compressed = CompressedDense.from_dense(dense, "int8")
    kernel = dense.kernel.numpy()
    scale = np.abs(kernel).max(axis=0) / 127.0
    q = np.round(kernel / scale)
    expected = np.maximum(x.numpy() @ (q * scale) + dense.bias.numpy(), 0.0)
    np.testing.assert_allclose(compressed(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(compressed.kernel.numpy()).max() == 127


def test_bad_weights_are_refused(trained, tmp_path):
    message = r"`weights` must be one of \['float32', 'bfloat16', 'int8'\], got 'int4'\."
    with pytest.raises(ValueError, match=message):
        compress_weights(trained, "int4")
    with pytest.raises(ValueError, match=message):
        export_gpt(trained, ByteTokenizer(), str(tmp_path), weights="int4")
    with pytest.raises(ValueError, match=message):
        load_generator(trained, weights="int4")
    assert not os.listdir(tmp_path)


def _weight_bytes(version_dir):
    """Bytes of the numeric variables of a SavedModel, from its checkpoint."""
    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return sum(
        int(np.prod(shapes[name])) * dtypes[name].size
        for name in shapes
        if dtypes[name] != tf.string
    )


_SERVE = """
import json, sys
import tensorflow as tf
out = {}
for path in sys.argv[1:]:
    loaded = tf.saved_model.load(path)
    completions = loaded.signatures["serving_default"](prompts=tf.constant([%r]))["completions"]
    logits = loaded.signatures["logits"](token_ids=tf.constant([%r]))["logits"]
    out[path] = {"text": completions.numpy()[0].decode(), "logits": logits.numpy().tolist(),
                 "weights": json.loads(loaded.generation_config.numpy())["weights"]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_compressed_exports_serve_in_a_fresh_process_like_the_compressed_model(trained, tmp_path):
    tokenizer = ByteTokenizer()
    settings = dict(max_new_tokens=NEW_TOKENS, temperature=0.0)
    # float32 exports are served in a fresh process by the export tests; here, the compressed:
    # bfloat16 on the plain graph (no XLA compilation when served), int8 as the command line
    # exports it by default (through XLA).
    paths = {
        "bfloat16": export_gpt(
            trained,
            tokenizer,
            str(tmp_path / "bfloat16"),
            weights="bfloat16",
            jit_compile=False,
            **settings,
        )
    }
    # int8 through the command line, with `generate --weights` and a refused format beside it.
    trained.save(tmp_path / "model.keras")
    keras_file = str(tmp_path / "model.keras")
    exported, generated, refused = run_all_here(
        ["export", keras_file, "--out", tmp_path / "int8", "--weights", "int8"]
        + ["--temperature", "0", "--max-new-tokens", NEW_TOKENS],
        ["generate", keras_file, "--weights", "int8", "--prompt", PROMPT]
        + ["--temperature", "0", "--max-new-tokens", NEW_TOKENS],
        ["export", keras_file, "--out", tmp_path / "int4", "--weights", "int4"],
    )
    assert exported.returncode == 0, exported.stderr
    paths["int8"] = str(tmp_path / "int8" / "1")
    int8_text = bytes(_greedy(compress_weights(trained, "int8"))).decode()
    assert generated.returncode == 0 and generated.stdout == int8_text + "\n", generated.stderr
    assert refused.returncode == 2 and "--weights" in refused.stderr and "int4" in refused.stderr
    assert not (tmp_path / "int4").exists()

    script = _SERVE % (PROMPT, list(PROMPT.encode()))
    served = subprocess.run(
        [sys.executable, "-c", script, *paths.values()], capture_output=True, text=True
    )
    assert served.returncode == 0, served.stderr
    served = json.loads(served.stdout.strip().splitlines()[-1])

    int8_dtypes = tf.train.load_checkpoint(
        os.path.join(paths["int8"], "variables", "variables")
    ).get_variable_to_dtype_map()
    matrices = 4 * trained.num_layers + 1  # four Dense kernels per block and the embedding
    assert sum(dtype == tf.int8 for dtype in int8_dtypes.values()) == matrices
    sizes = {weights: _weight_bytes(path) for weights, path in paths.items()}
    # A float32 export stores the model's weights and nothing else numeric: 4 bytes a number.
    float32_bytes = sum(4 * int(np.prod(w.shape)) for w in trained.weights)
    assert sizes["bfloat16"] / float32_bytes < 0.55
    assert sizes["int8"] / float32_bytes < 0.30
    for weights, path in paths.items():
        result = served[path]
        assert result["weights"] == weights
        compressed = compress_weights(trained, weights)
        new_ids = _greedy(compressed)[len(PROMPT) :]
        assert result["text"] == bytes(new_ids).decode("utf-8", "replace")
        np.testing.assert_allclose(
            result["logits"], compressed(_prompt_ids()).numpy(), rtol=1e-4, atol=1e-4
        )

    with pytest.raises(ValueError, match=r"`weights` must be None or 'int8' .*got 'bfloat16'\."):
        load_generator(paths["int8"], weights="bfloat16")


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
@pytest.mark.slow
def test_a_mixed_precision_model_compresses_to_a_float32_policy_copy(weights):
    keras.utils.set_random_seed(2)
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32, dtype="mixed_bfloat16")
    model.build((None, None))
    compressed = compress_weights(model, weights)
    assert compressed.dtype_policy.name == "float32"
    float32 = GPTModel.from_config({**model.get_config(), "dtype": "float32"})
    float32.build((None, None))
    float32.set_weights(model.get_weights())
    ids = _prompt_ids()
    logits = compressed(ids).numpy()
    reference = float32(ids).numpy()
    assert logits.dtype == np.float32
    assert np.abs(logits - reference).max() / reference.std() < LOGIT_TOLERANCE[weights]
    assert compressed.generate(ids, 4, temperature=0.0).shape == (1, ids.shape[1] + 4)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
@pytest.mark.slow
def test_untied_output_matrix_is_compressed_too(weights):
    keras.utils.set_random_seed(3)
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32, tie_embeddings=False)
    model.build((None, None))
    compressed = compress_weights(model, weights)
    assert compressed.token_embedding.reverse_embeddings.dtype == weights
    reference = model(_prompt_ids()).numpy()
    difference = np.abs(compressed(_prompt_ids()).numpy() - reference).max()
    assert difference / reference.std() < LOGIT_TOLERANCE[weights]


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
@pytest.mark.slow
def test_a_compressed_copy_saved_as_keras_loads_back_compressed_with_equal_outputs(
    weights, tmp_path
):
    keras.utils.set_random_seed(4)
    model = GPTModel(258, 32, 2, 64, 2, rate=0.0, max_length=64, tie_embeddings=False)
    compressed = compress_weights(model, weights)
    compressed.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    assert isinstance(loaded, GPTModel)
    assert all(isinstance(layer, CompressedDense) for layer in _dense_layers(loaded.blocks[1]))
    assert loaded.token_embedding.reverse_embeddings.dtype == weights
    ids = _prompt_ids()
    np.testing.assert_array_equal(loaded(ids).numpy(), compressed(ids).numpy())
    # Already compressed: kept as it is, never compressed a second time from lost weights.
    assert compress_weights(loaded, weights) is loaded
    assert compress_weights(loaded, "float32") is loaded
    other = "int8" if weights == "bfloat16" else "bfloat16"
    with pytest.raises(ValueError, match=rf"^`weights` must be 'float32' or '{weights}' for a"):
        compress_weights(loaded, other)


def _softmax_warnings(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [w for w in caught if "softmax" in str(w.message)]


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
@pytest.mark.slow
def test_compressing_and_generating_warn_of_no_one_key_softmax(weights):
    """Building a model by a call on one token ran the attention softmax over a single key,
    which Keras reports as a likely mistake: compress_weights builds the copy instead."""
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)

    def compress_and_generate():
        compress_weights(model, weights).generate(
            _prompt_ids()[:, :4], 2, temperature=0.0, jit_compile=False
        )

    assert not _softmax_warnings(compress_and_generate)


@pytest.mark.slow
def test_exporting_an_unbuilt_model_warns_of_no_one_key_softmax(tmp_path):
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)

    def export():
        export_gpt(model, ByteTokenizer(), tmp_path, max_new_tokens=4, jit_compile=False)

    assert not _softmax_warnings(export)
