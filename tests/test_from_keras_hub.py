"""`convert.gpt_from_keras_hub_preset` / `bert_from_keras_hub_preset` on preset directories written here.

No preset can be downloaded in CI, so each test builds a randomly initialised keras-hub backbone,
writes it with `save_to_preset`, and loads that directory: outputs must match to 1e-5.
"""

import ast
import pathlib

import keras
import keras_hub
import numpy as np
import pytest

import tf_bigmodels
from tf_bigmodels.convert import bert_from_keras_hub_preset, gpt_from_keras_hub_preset
from tf_bigmodels.models import BERTEncoder, GPTModel

ATOL = 1e-5


def randomize(model, seed=0):
    """Random values for every weight (biases and norms too), so a dropped weight shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0.0, 0.2, variable.shape) + variable.path.endswith("gamma")
        variable.assign(value.astype("float32"))


@pytest.fixture(scope="module")
def gpt2_preset(tmp_path_factory):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=120,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=24,
    )
    randomize(backbone)
    directory = tmp_path_factory.mktemp("presets") / "gpt2_random"
    backbone.save_to_preset(str(directory))
    return directory, backbone


@pytest.fixture(scope="module")
def bert_preset(tmp_path_factory):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=90,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=24,
    )
    randomize(backbone, seed=1)
    directory = tmp_path_factory.mktemp("presets") / "bert_random"
    backbone.save_to_preset(str(directory))
    return directory, backbone


def test_gpt_from_preset_directory_matches_the_backbone(gpt2_preset):
    directory, backbone = gpt2_preset
    model = gpt_from_keras_hub_preset(directory)
    assert isinstance(model, GPTModel) and model.num_layers == 2 and model.max_length == 24
    token_ids = np.random.default_rng(0).integers(0, 120, (2, 24)).astype("int32")
    padding_mask = np.ones_like(token_ids)
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    want = keras.ops.convert_to_numpy(
        keras.ops.matmul(hidden, keras.ops.transpose(backbone.token_embedding.embeddings))
    )
    got = keras.ops.convert_to_numpy(model(token_ids, padding_mask=padding_mask))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_bert_from_preset_directory_matches_the_backbone(bert_preset):
    directory, backbone = bert_preset
    encoder = bert_from_keras_hub_preset(str(directory))
    assert isinstance(encoder, BERTEncoder) and encoder.num_layers == 2
    rng = np.random.default_rng(1)
    inputs = {
        "token_ids": rng.integers(0, 90, (2, 24)).astype("int32"),
        "segment_ids": np.repeat([[0] * 12 + [1] * 12], 2, axis=0).astype("int32"),
        "padding_mask": np.ones((2, 24), "int32"),
    }
    want, got = backbone(inputs), encoder(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got[key]),
            keras.ops.convert_to_numpy(want[key]),
            atol=ATOL,
            rtol=0,
        )


def test_bad_preset_directories_name_the_argument(gpt2_preset, bert_preset, tmp_path):
    with pytest.raises(
        ValueError, match=r"^`preset_dir` must be .*got 'gpt2_base_en', which is not"
    ):
        gpt_from_keras_hub_preset("gpt2_base_en")
    with pytest.raises(ValueError, match=r"`preset_dir`=.*no config.json"):
        gpt_from_keras_hub_preset(tmp_path)
    with pytest.raises(ValueError, match=r"`preset_dir`=.*BertBackbone"):
        gpt_from_keras_hub_preset(bert_preset[0])
    with pytest.raises(ValueError, match=r"`preset_dir`=.*GPT2Backbone"):
        bert_from_keras_hub_preset(gpt2_preset[0])


# Each package part and what it must never import, anywhere in its files (inside functions too).
FORBIDDEN = {
    "layers": ("models", "tokenizers", "data", "training", "export", "convert", "cli"),
    "models": ("training", "data", "export", "convert", "cli", "keras_hub"),
    "tokenizers": ("models", "data", "training", "export", "convert", "cli"),
}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part):
    """`convert` imports `models`; the reverse import would be a cycle models <-> convert."""
    forbidden = tuple(
        name if name == "keras_hub" else f"tf_bigmodels.{name}" for name in FORBIDDEN[part]
    )
    package = pathlib.Path(tf_bigmodels.__file__).parent / part
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [f"{path.name}: {n}" for n in names if n.startswith(forbidden)]
    assert found == []
