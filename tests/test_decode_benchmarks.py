"""The decode benchmarks run end to end at a tiny size (no timing is asserted): one
`decode.py --smoke --litert` run gives the Keras rows of each weight format and the LiteRT rows;
`litert_quality.py`, in a process of its own (it must load a run's model without the training
code), compares the LiteRT exports' validation loss."""

import json
import pathlib

import keras
import pytest
from helpers import run_script, run_script_here

from tf_bigmodels.models import GPTModel
from tf_bigmodels.training import build_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def decode_smoke(tmp_path_factory):
    """(stdout, result JSON) of `decode.py --smoke --litert`."""
    cwd = tmp_path_factory.mktemp("decode")
    completed = run_script_here(
        ROOT / "benchmarks" / "decode.py", "--smoke", "--litert", "--out", "decode.json", cwd=cwd
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, json.loads((cwd / "decode.json").read_text())


@pytest.mark.slow
def test_decode_benchmark_smoke_reports_fewer_bytes_per_token(decode_smoke):
    _, result = decode_smoke
    per_token = {row["weights"]: row["bytes_per_token"] for row in result["rows"]}
    assert per_token["bfloat16"] / per_token["float32"] < 0.55
    assert per_token["int8"] / per_token["float32"] < 0.35
    for row in result["rows"]:
        bound = result["gemv_bandwidth_gb_per_s"] * 1e9 / row["bytes_per_token"]
        assert row["fraction_of_bound"] == pytest.approx(row["tokens_per_second"] / bound)
    assert all(goal["met"] is None for goal in result["goals"].values())  # smoke judges nothing
    changes = {row["weights"]: row["relative_change"] for row in result["quality"]["rows"]}
    assert abs(changes["bfloat16"]) < 0.01 and abs(changes["int8"]) < 0.02


@pytest.mark.slow
def test_decode_benchmark_smoke_adds_litert_rows(decode_smoke):
    stdout, result = decode_smoke
    litert = result["litert"]
    assert [row["weights"] for row in litert["rows"]] == ["float32", "int8"]
    for row in litert["rows"]:
        assert row["tokens_per_second"] > 0 and row["conversion_peak_rss_bytes"] > 2**20
        assert 0 < row["bytes_per_token"] <= row["file_bytes"]
    assert set(litert["goals"]) == {
        "int8_speedup_vs_keras_float32",
        "int8_file_fraction",
        "float32_not_slower_than_keras",
        "conversion_peak_gib",
    }
    assert "litert int8" in stdout


@pytest.mark.slow
def test_litert_quality_script_reports_loss_and_first_difference(tmp_path):
    keras.utils.set_random_seed(0)
    model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)
    model.build((None, None))
    # Compiled with the package's own optimizer, as a trained run's model.keras is: the script
    # must load it without the training code.
    model.compile(
        optimizer=build_optimizer(model, learning_rate=1e-3, total_steps=10, warmup_steps=1)
    )
    model.save(tmp_path / "model.keras")
    arguments = ["model.keras", "--windows", "4", "--new-tokens", "10", "--out", "q.json"]
    completed = run_script(ROOT / "benchmarks" / "litert_quality.py", *arguments, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "q.json").read_text())
    assert set(result["val_loss"]) == {"float32", "int8"}
    assert result["new_tokens"] == 10 and "first greedy difference" in completed.stdout
    assert result["file_bytes"]["int8"] < result["file_bytes"]["float32"]
