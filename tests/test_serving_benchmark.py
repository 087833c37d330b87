"""benchmarks/serving.py: its verdicts follow its measurements, and its smoke run works end to end.

No timing is asserted: the fast tests feed the summary and the goals made-up measurements and
check that each verdict follows them; the slow test runs `--smoke` against real servers.
"""

import importlib.util
import json
import pathlib

import pytest
from helpers import run_script_here

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serving.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serving_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(bench, *, one=10.0, many=40.0, short=0.2, long=1.0, batched=50.0, alone=40.0, bad=0):
    config = bench.FULL
    rows = []
    for clients in config["levels"]:
        row = {"clients": clients, "other_errors": 0, "clean_503": True}
        rows.append(
            {
                **row,
                "server": "batched",
                "model": "124m",
                "tokens_per_s": one if clients == 1 else many,
                "short_p99_s": short,
                "long_median_s": long,
                "other_errors": bad if clients == 64 else 0,
            }
        )
        rows.append({**row, "server": "batched", "model": "nano", "tokens_per_s": batched})
        rows.append({**row, "server": "one_by_one", "model": "nano", "tokens_per_s": alone})
    return rows


def _verdicts(bench, rows, rss=None):
    rss = rss or {"requests": 2000, "before": 100.0, "after": 105.0}
    return [(g["measured"], g["met"]) for g in bench.goals(rows, rss, bench.FULL)]


def test_the_goals_are_computed_from_the_measurements(bench):
    met = _verdicts(bench, _rows(bench))
    assert met == [(4.0, True), (0.2, True), (1.25, True), (0, True), (0.05, True)]
    missed = _verdicts(
        bench,
        _rows(bench, many=25.0, short=0.5, alone=60.0, bad=2),
        {"requests": 2000, "before": 100.0, "after": 120.0},
    )
    assert missed == [(2.5, False), (0.5, False), (50 / 60, False), (2, False), (0.2, False)]


def test_a_level_summary_counts_statuses_and_splits_short_and_long(bench):
    results = [
        {"status": 200, "latency": 0.1, "max_tokens": 16, "tokens": 16},
        {"status": 200, "latency": 0.3, "max_tokens": 32, "tokens": 30},
        {"status": 200, "latency": 2.0, "max_tokens": 256, "tokens": 256},
        {"status": 503, "latency": 0.01, "max_tokens": 64, "clean": True},
        {"status": 500, "latency": 0.01, "max_tokens": 64},
    ]
    row = bench.summarize(results, 4, 2.0, short=32, long=256)
    assert (row["ok"], row["refused_503"], row["other_errors"]) == (3, 1, 1)
    assert row["tokens_per_s"] == 151 and row["short_p99_s"] == 0.3
    assert row["long_median_s"] == 2.0 and row["p50_s"] == 0.3 and row["clean_503"]
    assert not bench.summarize([{**results[3], "clean": False}], 1, 1.0, short=32, long=256)[
        "clean_503"
    ]


def test_the_workload_mixes_languages_lengths_and_max_tokens(bench):
    requests = bench.workload(200, bench.FULL)
    lengths = [len(prompt.encode("utf-8")) for prompt, _ in requests]
    assert min(lengths) >= 6 and max(lengths) <= 200
    assert any(ord(c) > 0x4E00 for p, _ in requests for c in p)  # Chinese prompts
    assert any(p.isascii() for p, _ in requests)
    assert {m for _, m in requests} == set(bench.FULL["max_tokens"])


@pytest.mark.slow
def test_the_smoke_run_reports_every_level_and_goal(tmp_path):
    out = tmp_path / "serving.json"
    # The script runs here; its servers are processes of their own.
    completed = run_script_here(SCRIPT, "--smoke", "--out", out, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    levels = result["config"]["levels"]
    assert [(r["server"], r["model"], r["clients"]) for r in result["rows"]] == [
        (server, model, clients)
        for server, model in [("batched", "124m"), ("batched", "nano"), ("one_by_one", "nano")]
        for clients in levels
    ]
    assert all(r["ok"] == r["requests"] and r["new_tokens"] > 0 for r in result["rows"])
    rows = {(r["server"], r["model"], r["clients"]): r for r in result["rows"]}
    speedup = (
        rows["batched", "124m", levels[-1]]["tokens_per_s"]
        / rows["batched", "124m", 1]["tokens_per_s"]
    )
    assert result["goals"][0]["measured"] == pytest.approx(speedup)
    assert result["goals"][0]["met"] == (speedup >= 3)
    assert "| goal | measured | target | met |" in completed.stdout
