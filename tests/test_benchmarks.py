"""The benchmark command's smoke mode produces its table and JSON (no timing is asserted)."""

import importlib
import json
import pathlib
import sys
from types import SimpleNamespace

import pytest
from helpers import run_script

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The default sections, in the order the command runs them.
DEFAULT_SECTIONS = ("matmul", "gpt_nano", "gpt_124m", "bert", "generation")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`benchmarks/run.py --smoke` over every section, once: (stdout, result dict). One process
    for all of them, as a full measurement runs (the optional sections after the default ones).

    All but `decode`: `benchmarks/decode.py`'s own smoke run is tested in
    test_decode_benchmarks.py, and how this command reports it in
    `test_the_decode_section_reports_decode_py_s_result` below."""
    cwd = tmp_path_factory.mktemp("benchmarks")
    sections = (*DEFAULT_SECTIONS[1:], "bf16_execution", "time_to_quality")
    completed = run_script(
        ROOT / "benchmarks" / "run.py",
        *("--smoke", "--sections", ",".join(sections), "--out", "results.json"),
        cwd=cwd,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, json.loads((cwd / "results.json").read_text())


@pytest.mark.slow
def test_run_smoke_writes_table_and_json(smoke):
    stdout, result = smoke
    rows = [
        (row["section"], row["variant"], row.get("precision"), row.get("batch"))
        for row in result["rows"]
        if row["section"] in DEFAULT_SECTIONS
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
    for row in (r for r in result["rows"] if r["section"] in DEFAULT_SECTIONS):
        rate = row["gflops"] if row["section"] == "matmul" else row["tokens_per_second"]
        assert rate > 0
        if row["section"] in ("gpt_nano", "gpt_124m", "bert"):
            assert row["jit_compile"] is False  # smoke mode: no seconds of XLA per tiny model
        if row["section"] == "gpt_124m":
            assert row["peak_rss_mb"] > 0 and 0 < row["mfu"] < 1
    assert set(result["ceilings_gflops"]) == {"float32", "bfloat16", "bfloat16_xla"}
    assert "6 N + 12 L H Q T" in result["flops_per_token"]

    # The last table holds the default sections' rows; the optional sections' tables follow it.
    table = stdout[stdout.rindex("| section |") :].split("\n\n", 1)[0]
    assert len(table.strip().splitlines()) == 2 + len(rows)
    assert "| gpt_nano | ours |" in table and "| generation | keras_hub |" in table


def _benchmark(monkeypatch, name):
    """The module `benchmarks/<name>.py`, imported as the scripts import each other."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def _first_at_or_below(curve, target):
    return next((p["seconds"] for p in curve if p["val_loss"] <= target), None)


@pytest.mark.slow
def test_time_to_quality_smoke_times_come_from_the_eval_curve(smoke):
    stdout, result = smoke
    config = result["time_to_quality"]["config"]
    first, second = config["targets"]
    rows = [row for row in result["rows"] if row["section"] == "time_to_quality"]
    assert [row["system"] for row in rows] == ["ours", "keras_hub", "nanogpt"]
    assert rows[2]["runs"] == []  # no --nanogpt given
    for row in rows[:2]:
        (run,) = row["runs"]  # smoke: one seed, so the median is that seed's value
        curve = run["curve"]
        steps = list(range(0, config["steps"] + 1, config["eval_every"]))
        assert [p["step"] for p in curve] == steps
        seconds = [p["seconds"] for p in curve]
        assert seconds[0] == 0 and seconds == sorted(seconds) and seconds[-1] > 0
        for target in (first, second):
            assert row[f"seconds_to_{target}"] == _first_at_or_below(curve, target)
        assert row["final_val_loss"] == curve[-1]["val_loss"]
        assert row["steps_per_second"] == pytest.approx(config["steps"] / seconds[-1])
        # The training loss falls from log(258) at initialisation.
        assert curve[-1]["val_loss"] < curve[0]["val_loss"]

    table = stdout[stdout.rindex("| system | recipe |") :].strip().splitlines()
    assert table[0].startswith(f"| system | recipe | s to {first} | s to {second} |")
    lines = {line.split(" | ")[0]: line for line in table[2:5]}
    assert set(lines) == {"| ours", "| keras_hub", "| nanogpt"}
    assert "not run (pass --nanogpt DIR)" in lines["| nanogpt"]
    for row in rows[:2]:
        for target in (first, second):
            if row[f"seconds_to_{target}"] is None:
                assert f"not reached in {config['steps']} steps" in lines[f"| {row['system']}"]
    goals = result["time_to_quality"]["goals"]
    assert len(goals) == 2 and all(g in stdout for g in goals)
    assert all(" met (" in g or " missed (" in g for g in goals)


def test_nanogpt_curve_counts_training_time_only(monkeypatch):
    ttq = _benchmark(monkeypatch, "time_to_quality")
    lines = [
        (0.0, "tokens per iteration will be: 768"),
        (5.0, "step 0: train loss 5.5000, val loss 5.5100"),  # start-up before this
        (6.0, "iter 0: loss 5.5000, time 1000.00ms, mfu -100.00%"),
        (7.0, "iter 1: loss 4.0000, time 1000.00ms, mfu -100.00%"),
        (10.0, "step 2: train loss 3.9000, val loss 3.9500"),  # 3 s of evaluation
        (10.1, "saving checkpoint to out"),
        (11.0, "iter 2: loss 3.5000, time 4000.00ms, mfu -100.00%"),
        (12.0, "iter 3: loss 3.0000, time 1000.00ms, mfu -100.00%"),
        (20.0, "step 4: train loss 2.9000, val loss 2.9500"),
    ]
    curve = ttq.nanogpt_curve(lines)
    assert [(p["step"], p["seconds"], p["val_loss"]) for p in curve] == [
        (0, 0.0, 5.51),
        (2, 2.0, 3.95),
        (4, 4.0, 2.95),
    ]
    assert [p["eval_seconds"] for p in curve] == [0.0, 3.0, 8.0]
    assert ttq.time_to(curve, 3.95) == 2.0 and ttq.time_to(curve, 2.0) is None


def test_time_to_quality_goals_are_judged_from_the_numbers(monkeypatch):
    ttq = _benchmark(monkeypatch, "time_to_quality")

    def row(system, to_first, to_second):
        return {
            "system": system,
            "runs": [{}],
            "seconds_to_1.886": to_first,
            "seconds_to_1.75": to_second,
        }

    goals = ttq.goal_check(
        [row("ours", 40.0, 90.0), row("keras_hub", 100.0, None), row("nanogpt", 80.0, None)],
        (1.886, 1.75),
    )
    assert goals[0].startswith("ours <= half the fastest peer's time to 1.886: met")
    assert "40.0 s / nanogpt 80.0 s = 0.50" in goals[0]
    assert goals[1].startswith("ours reaches 1.75 where the peers do not: met")

    goals = ttq.goal_check([row("ours", 41.0, 90.0), row("keras_hub", 80.0, 150.0)], (1.886, 1.75))
    assert ": missed (" in goals[0] and "= 0.51" in goals[0]
    assert ": missed (" in goals[1] and "peers reaching it: keras_hub" in goals[1]

    goals = ttq.goal_check([row("ours", None, None), row("keras_hub", 80.0, None)], (1.886, 1.75))
    assert ": missed (ours not reached)" in goals[0] and ": missed (" in goals[1]

    assert ttq.goal_check([row("ours", 40.0, 90.0)], (1.886, 1.75)) == [
        "goals not judged: no peer was run"
    ]


def test_time_to_quality_median_counts_unreached_seeds_as_late(monkeypatch):
    ttq = _benchmark(monkeypatch, "time_to_quality")
    assert ttq._median([3.0, None, 1.0]) == 3.0
    assert ttq._median([3.0, None, None]) is None


@pytest.mark.slow
def test_bf16_execution_smoke_from_the_one_command(smoke):
    stdout, result = smoke
    rows = [r for r in result["rows"] if r["section"] == "bf16_execution"]
    assert [(r["variant"], r["precision"], r["jit_compile"]) for r in rows] == [
        ("float32_xla", "float32", True),
        ("bf16_xla", "mixed_bfloat16", True),
        ("bf16_no_xla", "mixed_bfloat16", False),
    ]
    assert rows[0]["vs_float32"] == 1.0
    faster_is_xla = rows[1]["tokens_per_second"] >= rows[2]["tokens_per_second"]
    for row in rows:
        assert row["auto_jit_compile"] is True  # 64 wide: below the width where XLA is left off
        assert row["auto_picked_faster"] == faster_is_xla
    table = stdout[stdout.rindex("| width |") :].strip().splitlines()
    assert table[2].startswith("| 64 |") and table[2].endswith(
        f"| {'yes' if faster_is_xla else 'no'} |"
    )


def test_the_decode_section_reports_decode_py_s_result(monkeypatch, tmp_path, capsys):
    # The command's part: decode.run called as named, its rows in the table's JSON under
    # "decode", its other figures beside them, and decode.print_result printing it.
    run = _benchmark(monkeypatch, "run")
    measured = {"rows": [{"weights": "int8", "tokens_per_second": 9.0}], "gemv": 1.5}
    calls = []
    monkeypatch.setattr(run.decode, "run", lambda **kw: calls.append(kw) or measured)
    monkeypatch.setattr(run.decode, "print_result", lambda result: print("printed", result))
    monkeypatch.setattr(run, "section_matmul", lambda shape, repeats: ({}, []))
    out = tmp_path / "r.json"
    argv = ["run.py", "--smoke", "--sections", "decode", "--nano-model", "m.keras"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    run.main()
    assert calls == [{"smoke": True, "nano_model": "m.keras"}]
    result = json.loads(out.read_text())
    assert result["rows"] == [{"weights": "int8", "tokens_per_second": 9.0, "section": "decode"}]
    assert result["decode"] == {"gemv": 1.5}
    assert f"printed {measured}" in capsys.readouterr().out


@pytest.mark.parametrize("smoke, processes", [(False, 4), (True, 1)])
def test_memory_workers_are_one_process_per_configuration_but_one_in_smoke_mode(
    monkeypatch, smoke, processes
):
    run = _benchmark(monkeypatch, "run")
    started = []

    class Worker:
        def __init__(self, command, **_):
            self.specs = json.loads(command[-1])
            self.returncode = 0
            started.append(self)

        def communicate(self):
            lines = [
                json.dumps({"key": [s["library"], s["precision"]], "peak_rss_mb": 1.0})
                for s in self.specs
            ]
            return "TensorFlow's noise\n" + "\n".join(lines), ""

    # The script's own name for the module, so that no other Popen in this process is touched.
    monkeypatch.setattr(run, "subprocess", SimpleNamespace(Popen=Worker, PIPE=None))
    args = SimpleNamespace(smoke=smoke, bf16_jit=None)
    peaks = run._collect(run._start_memory_workers(args))
    assert len(started) == processes
    assert sorted(peaks) == sorted(
        (library, precision)
        for library in ("ours", "keras_hub")
        for precision in ("float32", "mixed_bfloat16")
    )


def test_speaker_rule_predicts_next_when_a_speaker_name_is_shared(monkeypatch):
    import tensorflow as tf

    bert_nsp = _benchmark(monkeypatch, "bert_nsp")

    class Vocabulary:  # ids: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK], 4 ":", 5 romeo, 6 juliet, 7 love
        vocabulary = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", ":", "romeo", "juliet", "love")
        pad_id, cls_id, sep_id, mask_id = 0, 1, 2, 3

    rows = [
        # A names romeo; B mentions romeo: "next" (0) predicted; label 0: right.
        ([1, 5, 4, 7, 2, 7, 5, 2, 0], [0, 0, 0, 0, 0, 1, 1, 1, 0], 0),
        # A names romeo; B names juliet only: "random" (1) predicted; label 1: right.
        ([1, 5, 4, 7, 2, 6, 4, 7, 2], [0, 0, 0, 0, 0, 1, 1, 1, 1], 1),
        # No colon anywhere: "random" predicted; label 0: wrong.
        ([1, 7, 7, 2, 7, 2, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0], 0),
    ]
    features = [
        {
            "token_ids": tf.constant([r[0] for r in rows]),
            "segment_ids": tf.constant([r[1] for r in rows]),
        }
    ]
    labels = [{"next_sentence_labels": tf.constant([r[2] for r in rows])}]
    assert bert_nsp.speaker_rule(features, labels, Vocabulary()) == pytest.approx(2 / 3)


def test_startup_times_fresh_processes_for_ours_and_the_peer(monkeypatch, tmp_path):
    import ml_dtypes

    startup = _benchmark(monkeypatch, "startup")
    # The peer: a directory put first on PYTHONPATH, here holding a stand-in ml_dtypes.
    (tmp_path / "ml_dtypes").mkdir()
    (tmp_path / "ml_dtypes" / "__init__.py").write_text('__version__ = "9.9.9"\n')
    # TensorFlow's import is left out: its seconds would only make this test slower.
    commands = {k: v for k, v in startup.COMMANDS.items() if k != "import tensorflow"}
    monkeypatch.setattr(startup, "COMMANDS", commands)
    result = startup.run(2, str(tmp_path))

    rows = {(row["setup"], row["command"]): row for row in result["rows"]}
    assert set(rows) == {(setup, command) for setup in ("ours", "peer") for command in commands}
    for (setup, _), row in rows.items():
        assert row["ml_dtypes"] == {"ours": ml_dtypes.__version__, "peer": "9.9.9"}[setup]
        assert len(row["cpu_rounds"]) == 2 and row["cpu_s"] == sum(row["cpu_rounds"]) / 2
        assert row["cpu_s"] > 0 and row["wall_s"] > 0
    for command in commands:
        ratio = rows["peer", command]["cpu_s"] / rows["ours", command]["cpu_s"]
        assert result["peer_cpu_ratio"][command] == pytest.approx(ratio)
    table = startup.table(result).splitlines()
    assert len(table) == 2 + len(rows) and table[-1].startswith("| peer | 9.9.9 |")

    env = startup._environment(None)
    with pytest.raises(RuntimeError, match="failed"):
        startup.time_command([sys.executable, "-c", "raise SystemExit(3)"], env)


def test_startup_refuses_bad_arguments(tmp_path):
    script = ROOT / "benchmarks" / "startup.py"
    for args, message in (
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--peer", tmp_path / "missing"], "--peer must be a directory"),
    ):
        completed = run_script(script, *args, cwd=tmp_path)
        assert completed.returncode == 2 and message in completed.stderr
