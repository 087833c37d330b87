"""The training driver under failure: resume, damaged files, re-runs, locks, atomic files, logs."""

import io
import json
import math
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from helpers import TINY_GPT

from tf_bigmodels.training import RunConfig, load_run_tokenizer, storage, train
from tf_bigmodels.training import callbacks as cb
from tf_bigmodels.training.config import tokenizer_choices


def _config(tmp_path, **overrides):
    return RunConfig(
        **{**TINY_GPT, "steps": 20, "eval_every": 10, "out": str(tmp_path), **overrides}
    )


def _files(directory):
    """Every file under `directory` with its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


class _Interrupt(Exception):
    pass


def _interrupt_after_checkpoints(monkeypatch, count):
    """Makes the run stop (as if killed) right after its `count`-th checkpoint."""
    save = cb.RunCheckpoint.save
    saved = []

    def save_then_stop(self):
        path = save(self)
        saved.append(path)
        if len(saved) == count:
            raise _Interrupt(path)
        return path

    monkeypatch.setattr(cb.RunCheckpoint, "save", save_then_stop)


# ---- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(steps=100), dict(eval_every=100, warmup_steps=5)),
        (dict(steps=2000), dict(eval_every=250, warmup_steps=5)),
        (dict(steps=20, warmup_steps=0), dict(eval_every=20, warmup_steps=0)),
    ],
)
def test_documented_defaults(overrides, expected):
    config = RunConfig(model="gpt", preset="gpt-test", **overrides).resolved()
    assert {key: getattr(config, key) for key in expected} == expected
    # warmup None: the preset's (5 for gpt-test), at most a tenth of steps
    assert RunConfig(model="gpt", preset="gpt-test", steps=20).resolved().warmup_steps == 2


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(warmup_steps=20), "`warmup_steps` must be an integer in [0, 19], got 20"),
        (dict(seed=-1), "`seed` must be an integer in [0, 4294967295], got -1"),
        # NumPy's and TensorFlow's seeds are 32-bit: a larger one is refused up front.
        (dict(seed=2**40), "`seed` must be an integer in [0, 4294967295]"),
        # A name the file system cannot take as text (bytes undecodable as UTF-8).
        (dict(name="caf\udce9"), "`name` must be one directory name"),
        (dict(vocab_size=300), "`vocab_size` must be None with the byte tokenizer"),
        (dict(tokenizer="wordpiece"), "`tokenizer` must be one of ['byte', 'sentencepiece']"),
        (dict(name="../x"), "`name` must be one directory name"),
        (dict(name="/tmp/x"), "`name` must be one directory name"),
        (dict(name=""), "`name` must be one directory name"),
        (dict(name="."), "`name` must be one directory name"),
        (dict(steps=True), "`steps` must be an integer >= 1, got True"),
        (dict(eval_every=30), "`eval_every` must be an integer in [1, 20], got 30"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, overrides, fragment):
    config = RunConfig(**{**TINY_GPT, "steps": 20, "out": str(tmp_path / "runs"), **overrides})
    with pytest.raises(ValueError) as error:
        train(config)
    assert fragment in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_tokenizer_registry_choices(monkeypatch):
    from tf_bigmodels.training import config as config_module

    assert tokenizer_choices("gpt")[0] == "byte"
    assert tokenizer_choices("bert") == ("wordpiece",)
    # What the registry says decides: a learned tokenizer takes (and needs) a vocabulary size.
    learned = config_module.TokenizerEntry("ByteTokenizer", learned=True)
    monkeypatch.setitem(config_module.TOKENIZERS, "byte", learned)
    with pytest.raises(ValueError, match="`vocab_size` must be given with the byte tokenizer"):
        RunConfig(model="gpt", preset="gpt-test").resolved()
    assert RunConfig(model="gpt", preset="gpt-test", vocab_size=300).resolved().vocab_size == 300


# ---- exact resume, best model ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(rate=0.3),
        pytest.param(
            dict(model="bert", preset="bert-test", vocab_size=300, seq_len=24),
            marks=pytest.mark.slow,  # learns a WordPiece vocabulary and trains three times
        ),
    ],
    ids=["gpt-dropout", "bert"],
)
@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(
    tmp_path, monkeypatch, small_corpus, overrides
):
    config = dict(steps=30, corpus=str(small_corpus), **overrides)
    whole = train(_config(tmp_path / "a", **config))
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoints(patch, 1)
        with pytest.raises(_Interrupt):
            train(_config(tmp_path / "b", **config))
    resumed = train(_config(tmp_path / "b", **config))
    assert resumed.history and len(resumed.history["loss"]) == 2  # steps 10-30 only
    for got, want in zip(resumed.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_array_equal(got, want)
    kind = overrides.get("model", "gpt")
    logged = [
        [
            (r["step"], r.get("loss"), r.get("val_loss"))
            for r in map(json.loads, (tmp_path / run / kind / "metrics.jsonl").open())
        ]
        for run in ("a", "b")
    ]
    assert logged[0] == logged[1]  # each step logged once, with the same losses


def test_best_model_is_kept_across_resumes_and_never_worse(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.optimizer.build(model.trainable_variables)
    checkpoint = cb.RunCheckpoint(tmp_path / "ckpt", model)
    guard = cb.DivergenceGuard()
    best = tmp_path / "best.keras"
    saver = cb.SaveProgress(checkpoint, guard, best, model)
    saver.on_epoch_end(0, {"val_loss": 2.0})
    first = best.read_bytes()
    # A new invocation restores the best loss from the checkpoint: a worse model is not saved.
    again = cb.RunCheckpoint(tmp_path / "ckpt", model)
    again.restore()
    assert float(again.best_loss.numpy()) == 2.0
    model.layers[0].kernel.assign(np.full((2, 1), 5.0, "float32"))  # the model changes
    cb.SaveProgress(again, guard, best, model).on_epoch_end(1, {"val_loss": 3.0})
    assert best.read_bytes() == first
    cb.SaveProgress(again, guard, best, model).on_epoch_end(2, {"val_loss": math.nan})
    assert best.read_bytes() == first
    cb.SaveProgress(again, guard, best, model).on_epoch_end(3, {"val_loss": 1.0})
    assert best.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "ckpt"]


def test_save_model_is_atomic_respects_the_umask_and_refuses_nan(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "model.keras"
    previous = os.umask(0o022)
    try:
        cb.save_model(model, path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    before = path.read_bytes()

    def fail(self, filepath, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"half")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", fail)
        with pytest.raises(OSError, match="cannot write .*model.keras: No space left on device"):
            cb.save_model(model, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.keras"]
    model.layers[0].kernel.assign(np.full((2, 1), np.nan, "float32"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        cb.save_model(model, path)
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_finite_but_huge_loss_is_divergence(tmp_path):
    from tf_bigmodels.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="diverged at step") as error:
        train(_config(tmp_path, learning_rate=5.0, clipnorm=None, steps=40))
    assert "The last good checkpoint is" in str(error.value)
    assert not (tmp_path / "gpt" / "model.keras").exists()
    lines = [json.loads(line) for line in (tmp_path / "gpt" / "metrics.jsonl").open()]
    assert all(v is None or isinstance(v, (int, float)) for r in lines for v in r.values())
    assert any(v is None for r in lines for v in r.values())  # the diverged values, as null


def test_tensorboard_and_perplexity_survive_a_huge_loss():
    assert cb._exp(1000.0) == math.inf and cb._exp(2.0) == pytest.approx(math.exp(2.0))


def test_registering_the_package_loads_a_runs_model_in_a_fresh_process(tmp_path):
    from tf_bigmodels.training.tasks import task_for

    model = task_for(RunConfig(**TINY_GPT).resolved()).compiled_model(vocab_size=258)
    model.save(tmp_path / "model.keras")  # with its AdamW and WarmupDecay
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras, tf_bigmodels; tf_bigmodels.register_keras_objects(); "
            "model = keras.saving.load_model(sys.argv[1]); "
            "print(type(model.optimizer).__name__, type(model.optimizer._learning_rate).__name__)",
            str(tmp_path / "model.keras"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split() == ["AdamW", "WarmupDecay"]


# ---- damaged files ------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    train(_config(tmp_path, steps=20))
    checkpoints = tmp_path / "gpt" / "checkpoints"
    (checkpoints / "ckpt-20.index").unlink()
    (tmp_path / "gpt" / "model.keras").unlink()
    caplog.set_level("INFO", logger="tf_bigmodels")
    result = train(_config(tmp_path, steps=20))
    assert "ckpt-20 is damaged" in caplog.text and "resuming from" in caplog.text
    assert "Resuming" in caplog.text and "at step 10" in caplog.text
    assert len(result.history["loss"]) == 1  # steps 10-20 again, not 0-20


@pytest.mark.slow
def test_unreadable_checkpoints_stop_the_run_naming_the_file(tmp_path):
    train(_config(tmp_path, steps=20))
    checkpoints = tmp_path / "gpt" / "checkpoints"
    for data in checkpoints.glob("ckpt-*.data-*"):
        data.write_bytes(data.read_bytes()[:10])  # truncated
    before = _files(tmp_path / "gpt")
    with pytest.raises(ValueError, match="no checkpoint .* can be read: .*ckpt-20 is damaged"):
        train(_config(tmp_path, steps=20))
    assert _files(tmp_path / "gpt") == before


@pytest.mark.parametrize("content", ["[1, 2]", "", '"text"'])
def test_a_config_json_that_is_not_settings_is_refused(tmp_path, content):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(content)
    with pytest.raises(ValueError, match="config.json is unreadable"):
        train(_config(tmp_path))


@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    train(_config(tmp_path, steps=10))
    run_dir = tmp_path / "gpt"
    (run_dir / "export" / ".partial-1-123-abc").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-5_temp").mkdir()
    (run_dir / "tmpx1y2.keras").write_bytes(b"")
    (run_dir / ".model.keras.tmp-99.keras").write_bytes(b"")
    (run_dir / ".tokenizer.tmp-99").mkdir()
    train(_config(tmp_path, steps=10))
    assert not list((run_dir / "export").iterdir())
    assert not list(run_dir.glob("*tmp*")) and not list((run_dir / "checkpoints").glob("*temp*"))


# ---- re-runs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_run_re_run_writes_nothing(tmp_path):
    config = _config(tmp_path, steps=10, export=True)
    previous = os.umask(0o022)
    try:
        first = train(config)
    finally:
        os.umask(previous)
    assert first.export_path.endswith("1")
    # Readable by others (a server running as another user), as the umask asks.
    assert os.stat(first.export_path).st_mode & 0o777 == 0o755
    for name in ("model.keras", "best.keras", "config.json"):
        assert (tmp_path / "gpt" / name).stat().st_mode & 0o777 == 0o644, name
    before = _files(tmp_path / "gpt")
    again = train(config)
    assert again.history == {} and again.export_path is None and again.step == 10
    assert _files(tmp_path / "gpt") == before


@pytest.mark.slow
def test_re_run_rules(tmp_path):
    train(_config(tmp_path, steps=20))
    run_dir = tmp_path / "gpt"
    config_before = (run_dir / "config.json").read_text()
    with pytest.raises(ValueError, match="`steps` must be at least the 20 steps"):
        train(_config(tmp_path, steps=10))
    corpus = tmp_path / "mine.txt"
    corpus.write_text("Hello there. " * 2000)
    with pytest.raises(ValueError, match="other settings \\(corpus: 'shakespeare' ->"):
        train(_config(tmp_path, steps=20, corpus=str(corpus)))
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        train(_config(tmp_path, steps=20, seed=1))
    with pytest.raises(ValueError, match="`eval_every` must divide the 10 steps left"):
        train(_config(tmp_path, steps=30, eval_every=15))
    assert (run_dir / "config.json").read_text() == config_before
    # Allowed: more steps continue the run, another eval_every; both are honoured and recorded.
    result = train(_config(tmp_path, steps=30, eval_every=5))
    assert result.step == 30 and len(result.history["loss"]) == 2
    stored = json.loads((run_dir / "config.json").read_text())
    assert (stored["steps"], stored["eval_every"]) == (30, 5)
    assert cb.checkpoint_prefixes(run_dir / "checkpoints")[0].endswith("ckpt-30")


@pytest.mark.slow
def test_run_records_and_reloads_its_tokenizer(tmp_path):
    train(_config(tmp_path, steps=10))
    stored = json.loads((tmp_path / "gpt" / "config.json").read_text())
    assert stored["tokenizer"] == "byte"
    assert type(load_run_tokenizer(tmp_path / "gpt")).__name__ == "ByteTokenizer"


# ---- one writer ---------------------------------------------------------------------------


def test_a_run_directory_takes_one_writer(tmp_path):
    run_dir = tmp_path / "gpt"
    with (
        storage.lock(run_dir, "train"),
        pytest.raises(storage.DirectoryInUse, match=f"PID {os.getpid()}"),
    ):
        train(_config(tmp_path))
    assert not list(run_dir.iterdir())


def test_a_killed_holder_releases_the_lock(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; h = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with (
        pytest.raises(storage.DirectoryInUse, match=f"PID {holder.pid}"),
        storage.lock(tmp_path, "export"),
    ):
        pass
    holder.kill()
    holder.wait()
    with storage.lock(tmp_path, "export"):
        pass


# ---- the log ------------------------------------------------------------------------------


class _Iterations:
    def __init__(self):
        self.value = 0

    def numpy(self):
        return self.value


class _FakeModel:
    """What `TrainingLog` reads of a model: its optimizer's step."""

    def __init__(self):
        self.optimizer = types.SimpleNamespace(iterations=_Iterations())


def _drive_log(log, batch_losses, steps_per_epoch):
    """Feeds `log` the running means Keras reports for `batch_losses`, epoch by epoch."""
    model = _FakeModel()
    log.set_model(model)
    log.on_train_begin()
    for epoch in range(len(batch_losses) // steps_per_epoch):
        log.on_epoch_begin(epoch)
        seen = []
        for batch in range(steps_per_epoch):
            seen.append(batch_losses[epoch * steps_per_epoch + batch])
            model.optimizer.iterations.value += 1
            log.on_train_batch_end(batch, {"loss": float(np.mean(seen))})
        log.on_epoch_end(epoch, {"loss": float(np.mean(seen)), "val_loss": seen[-1]})
    log.on_train_end()


def test_logged_loss_is_the_interval_mean_with_no_step_at_epoch_boundaries(tmp_path):
    losses = list(np.linspace(3.0, 1.0, 40))  # a smooth decreasing curve
    log = cb.TrainingLog(tmp_path, 40, 100, every=4, perplexity=True, verbose=0)
    _drive_log(log, losses, steps_per_epoch=10)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    train_lines = [r for r in lines if "epoch" not in r]
    for record in train_lines:
        step = record["step"]
        previous = max([r["step"] for r in train_lines if r["step"] < step], default=0)
        assert record["loss"] == pytest.approx(np.mean(losses[previous:step]), abs=1e-6)
    curve = [r["loss"] for r in train_lines]
    assert all(b < a for a, b in zip(curve, curve[1:]))  # as smooth as the losses themselves
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents*"))


def test_console_log_is_plain_lines_when_not_a_terminal(tmp_path):
    stream = io.StringIO()
    log = cb.TrainingLog(None, 20, 1000, every=5, verbose=1, stream=stream)
    _drive_log(log, [2.0] * 20, steps_per_epoch=10)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("step 5/20  loss 2.0000")
    assert any(line.startswith("step 10/20  val_loss") for line in lines)
    assert len(lines) == 4 + 2  # one line per interval and per validation
    speeds = [p for line in lines for p in line.split("  ") if p.endswith("tokens/s")]
    assert speeds and all(s.replace(",", "").split()[0].isdigit() for s in speeds)


def test_console_log_rewrites_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    log = cb.TrainingLog(None, 20, 1000, every=5, verbose=1, stream=stream)
    _drive_log(log, [2.0] * 20, steps_per_epoch=10)
    assert stream.getvalue().count("\r") >= 4 and stream.getvalue().count("\n") == 2


@pytest.mark.slow
def test_a_failed_command_leaves_nothing_that_refuses_the_corrected_one(tmp_path):
    """A run that fails after writing its settings (here: a corpus too short for --seq-len)
    trained nothing; the corrected command starts afresh instead of being refused as "a run
    with other settings"."""
    corpus = tmp_path / "short.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 150)
    settings = dict(TINY_GPT, corpus=str(corpus), steps=2, eval_every=2, out=str(tmp_path))
    with pytest.raises(ValueError, match="too short"):
        train(RunConfig(**settings, seq_len=256))
    result = train(RunConfig(**settings))
    assert result.step == 2 and load_run_tokenizer(result.run_dir).vocab_size == 258
    assert json.loads((result.run_dir / "config.json").read_text())["seq_len"] == 32
