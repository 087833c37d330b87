"""The benchmark command's smoke mode produces its table and JSON (no timing is asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_smoke_writes_table_and_json(tmp_path):
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    result = json.loads(out.read_text())
    rows = [
        (row["section"], row["variant"], row.get("precision"), row.get("batch"))
        for row in result["rows"]
    ]
    assert rows == [
        ("matmul", "float32", None, None),
        ("matmul", "bfloat16", None, None),
        ("matmul", "bfloat16_xla", None, None),
        ("gpt_nano", "ours", "float32", 4),
        ("gpt_nano", "keras_hub", "float32", 4),
        ("gpt_nano", "keras_hub_spe8", "float32", 4),
        ("gpt_124m", "ours", "float32", 2),
        ("gpt_124m", "keras_hub", "float32", 2),
        ("gpt_124m", "ours", "mixed_bfloat16", 2),
        ("gpt_124m", "keras_hub", "mixed_bfloat16", 2),
        ("bert", "ours", "float32", 4),
        ("bert", "keras_hub", "float32", 4),
        ("bert", "keras_hub_spe8", "float32", 4),
        ("generation", "ours", None, 1),
        ("generation", "keras_hub", None, 1),
        ("generation", "ours", None, 2),
        ("generation", "keras_hub", None, 2),
    ]
    for row in result["rows"]:
        rate = row["gflops"] if row["section"] == "matmul" else row["tokens_per_second"]
        assert rate > 0
        if row["section"] == "gpt_124m":
            assert row["peak_rss_mb"] > 0 and 0 < row["mfu"] < 1
    assert set(result["ceilings_gflops"]) == {"float32", "bfloat16", "bfloat16_xla"}
    assert "6 N + 12 L H Q T" in result["flops_per_token"]

    table = completed.stdout[completed.stdout.rindex("| section |") :]
    assert len(table.strip().splitlines()) == 2 + len(rows)
    assert "| gpt_nano | ours |" in table and "| generation | keras_hub |" in table
