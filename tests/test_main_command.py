"""The README's main job, end to end through the command line, with few steps."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tf_bigmodels.data import load_corpus

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "tf_bigmodels", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_train_gpt_generate_and_export_from_the_command_line(tmp_path):
    # The default preset (nanoGPT's CPU configuration) with the step count cut for CI.
    trained = _cli(
        "train", "gpt", "--steps", "20", "--eval-every", "10", "--samples", "1", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "runs" / "gpt"
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["num_layers"],
        config["num_heads"],
        config["d_model"],
        config["seq_len"],
        config["batch_size"],
        config["rate"],
    ) == (4, 4, 128, 64, 12, 0.0)
    for name in ("model.keras", "best.keras", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("-20")
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))
    assert (run_dir / "export" / "1" / "saved_model.pb").is_file()
    # The sample's prompt is a line of the corpus's validation text (a speaker's name here).
    prompt = trained.stdout.split("--- sample 1 ---\n", 1)[1].split("\n", 1)[0]
    shakespeare = "\n\n".join(load_corpus("shakespeare"))
    assert prompt and f"\n{prompt}\n" in shakespeare[-len(shakespeare) // 10 :]
    assert "tokens/s" in trained.stdout and "val_loss" in trained.stdout
    assert "\r" not in trained.stdout  # plain lines when not a terminal
    assert "Assets written" not in trained.stderr  # TensorFlow's INFO names a temporary path
    assert f"Try it: tf-bigmodels generate {run_dir.relative_to(tmp_path)}" in trained.stdout

    generated = _cli(
        "generate",
        str(run_dir),
        "--prompt",
        "KING:",
        "--max-new-tokens",
        "40",
        "--seed",
        "3",
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.startswith("KING:") and len(generated.stdout) > len("KING:\n")

    exported = _cli("export", str(run_dir), "--no-xla", "--temperature", "0", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (run_dir / "export" / "2" / "saved_model.pb").is_file()
    assert (run_dir / "export" / "1" / "saved_model.pb").is_file()  # the first one is kept
