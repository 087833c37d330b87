"""`benchmarks/sentiment_seeds.py`: the sentiment comparison's median, range and verdict."""

import doctest
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "sentiment_seeds.py"


@pytest.fixture()
def sentiment_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sentiment_seeds

    return sentiment_seeds


def _run_dir(tmp_path, seed, bert, ngram, split_seed=0):
    directory = tmp_path / f"s{seed}-{split_seed}"
    directory.mkdir()
    results = {
        "majority-class baseline": {"accuracy": 0.52, "macro_f1": 0.34},
        "char 1-2-gram logistic regression": {"accuracy": ngram, "macro_f1": ngram - 0.001},
        "BERT, fully fine-tuned": {"accuracy": bert, "macro_f1": bert - 0.001},
    }
    summary = {"split_seed": split_seed, "seed": seed, "results": results}
    (directory / "results.json").write_text(json.dumps(summary))
    return str(directory)


def _command(*runs):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *runs], capture_output=True, text=True, timeout=60
    )


def test_the_examples_run(sentiment_seeds):
    results = doctest.testmod(sentiment_seeds)
    assert results.attempted > 0 and results.failed == 0


def test_median_range_and_a_missed_goal(tmp_path):
    # BERT wins one seed of three: its median (0.84) is below the baseline's (0.85).
    runs = [
        _run_dir(tmp_path, 0, 0.84, 0.85),
        _run_dir(tmp_path, 1, 0.86, 0.85),
        _run_dir(tmp_path, 2, 0.83, 0.851),
    ]
    done = _command(*runs)
    assert done.returncode == 0, done.stderr
    assert (
        "| BERT, fully fine-tuned | 0.8400 | 0.8600 | 0.8300 | 0.8400 (0.8300–0.8600) |"
        in done.stdout
    )
    assert "missed, 0.8400 against 0.8500 over seeds [0, 1, 2]" in done.stdout


def test_a_median_at_the_baseline_s_meets_the_goal(sentiment_seeds, tmp_path):
    runs = [
        json.loads((pathlib.Path(_run_dir(tmp_path, s, b, n)) / "results.json").read_text())
        for s, b, n in ((0, 0.85, 0.85), (1, 0.80, 0.86), (2, 0.90, 0.84))
    ]
    assert sentiment_seeds.summarize(runs)["goal_met"]


def test_runs_of_one_seed_or_of_two_splits_are_refused(tmp_path):
    twice = _command(_run_dir(tmp_path, 0, 0.8, 0.8), _run_dir(tmp_path, 0, 0.8, 0.8, split_seed=1))
    assert (
        twice.returncode == 2
        and "each run must have its own seed, got seeds [0, 0]" in twice.stderr
    )
    splits = _command(
        _run_dir(tmp_path, 1, 0.8, 0.8), _run_dir(tmp_path, 2, 0.8, 0.8, split_seed=1)
    )
    assert splits.returncode == 2 and "one test split, got split seeds [0, 1]" in splits.stderr
    missing = _command(str(tmp_path))
    assert missing.returncode == 2 and "holds no results.json" in missing.stderr
