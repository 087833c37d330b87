import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY_GPT, run_arrays, stop_process

from tf_bigmodels.models import GPTModel
from tf_bigmodels.training import (
    RunConfig,
    TrainingDiverged,
    WarmupDecay,
    build_optimizer,
    get_strategy,
    load_run_model,
    no_decay_variables,
    train,
)
from tf_bigmodels.training.callbacks import (
    DivergenceGuard,
    RunCheckpoint,
    SaveProgress,
    checkpoint_prefixes,
)
from tf_bigmodels.training.multi_worker import keras_is_affected

WORKER = pathlib.Path(__file__).with_name("training_worker.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
# The test preset trains without XLA. The first test below and the mixed-precision ones train
# through XLA, as a run of any other preset does on a CPU.
TINY_GPT_XLA = dict(TINY_GPT, jit_compile=True)


def _run_worker(settings, env=None, **pipes):
    """`training_worker.py` with `settings`; its output is piped unless `pipes` say otherwise."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(settings)],
        env=env or ENV,
        text=True,
        **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **pipes},
    )


def _finish(process, timeout=600):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return process.returncode, stdout, stderr


def _losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "epoch" not in line}


# ---- schedule and optimizer ---------------------------------------------------------------


def test_warmup_cosine_schedule_values():
    schedule = WarmupDecay(1e-3, warmup_steps=100, total_steps=2000, decay="cosine", min_ratio=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-3)
    assert float(schedule(1050)) == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-5)
    assert float(schedule(2000)) == pytest.approx(1e-4)
    assert float(schedule(5000)) == pytest.approx(1e-4)


def test_the_task_schedule_ends_its_decay_where_the_preset_says():
    from tf_bigmodels.training import task_for

    model = GPTModel(258, 32, 2, 64, 1, max_length=16)
    model(np.zeros((1, 4), "int32"))
    nano = task_for(RunConfig(preset="gpt-nano").resolved()).optimizer(model)._learning_rate
    # gpt-nano: peak 4e-3, floor 4e-4 from 60% of the run (step 1200 of 2000) on.
    assert (nano.peak_learning_rate, nano.total_steps) == (4e-3, 1200)
    assert float(nano(1200)) == pytest.approx(4e-4) and float(nano(1999)) == pytest.approx(4e-4)
    assert float(nano(1100)) > 4e-4
    longer = task_for(RunConfig(preset="gpt-nano", steps=5000).resolved())
    assert longer.optimizer(model)._learning_rate.total_steps == 3000
    whole = task_for(RunConfig(preset="gpt-test").resolved()).optimizer(model)._learning_rate
    assert whole.total_steps == 20  # decay_end 1.0: the whole run


def test_warmup_linear_schedule_values_and_serialization():
    schedule = WarmupDecay(2e-3, warmup_steps=10, total_steps=110, decay="linear", min_ratio=0.0)
    assert float(schedule(10)) == pytest.approx(2e-3)
    assert float(schedule(60)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-12)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(60)) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(peak_learning_rate=0, warmup_steps=1, total_steps=10), "peak_learning_rate"),
        (dict(peak_learning_rate=1e-3, warmup_steps=10, total_steps=10), "total_steps"),
        (dict(peak_learning_rate=1e-3, warmup_steps=1, total_steps=10, decay="step"), "decay"),
    ],
)
def test_schedule_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        WarmupDecay(**kwargs)


def test_weight_decay_on_kernels_only():
    model = GPTModel(50, 16, 2, 32, 1, rate=0.0, max_length=8)
    model(np.zeros((1, 8), "int32"))
    optimizer = build_optimizer(
        model, learning_rate=0.1, total_steps=10, warmup_steps=0, weight_decay=0.5, clipnorm=None
    )
    excluded = {v.path for v in no_decay_variables(model)}
    assert any("embeddings" in p for p in excluded) and any("bias" in p for p in excluded)
    assert any("gamma" in p for p in excluded)
    for variable in model.trainable_variables:  # non-zero everywhere, so decay would show
        variable.assign(np.full(variable.shape, 0.5, "float32"))
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    for variable in model.trainable_variables:
        value = np.asarray(variable)
        if variable.path in excluded:
            np.testing.assert_allclose(value, 0.5, err_msg=variable.path)
        else:
            assert len(variable.shape) == 2
            np.testing.assert_allclose(
                value, 0.5 * (1 - 0.1 * 0.5), rtol=1e-5, err_msg=variable.path
            )


# ---- strategy ------------------------------------------------------------------------------


def test_get_strategy_auto_on_one_cpu_is_default(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = get_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    )


@pytest.mark.parametrize("name", ["gpu", "Mirrored", ""])
def test_unknown_strategy_is_named(name):
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        get_strategy(name)


@pytest.mark.parametrize(
    "tf_config",
    ["{not json", '{"cluster": {}}', '{"cluster": {"worker": ["a:1"]}, "task": {"type": 1}}'],
)
def test_malformed_tf_config_is_a_clear_error(monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        get_strategy("auto")


def test_multi_worker_without_tf_config_is_an_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        get_strategy("multi_worker")


def test_keras_version_gate():
    assert keras_is_affected("3.15.1") and keras_is_affected("3.0.0")
    assert not keras_is_affected("3.16.0") and not keras_is_affected("4.0.0")
    assert keras_is_affected()  # the installed Keras needs the fix (see test_multi_worker_*)


# ---- the driver ----------------------------------------------------------------------------


@pytest.mark.slow
def test_train_gpt_writes_its_outputs_and_learns(tmp_path):
    config = RunConfig(**TINY_GPT_XLA, steps=30, eval_every=10, out=str(tmp_path))
    result = train(config)
    run_dir = tmp_path / "gpt"
    for name in ("config.json", "best.keras", "model.keras", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("-30")
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, 31))
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(
        r["perplexity"] == pytest.approx(np.exp(r["loss"])) for r in logged if "epoch" not in r
    )
    assert all("val_perplexity" in r for r in logged if "epoch" in r)
    reloaded = keras.saving.load_model(run_dir / "model.keras")
    tokens = np.arange(16, dtype="int32")[None]
    np.testing.assert_allclose(
        np.asarray(reloaded(tokens)), np.asarray(result.model(tokens)), atol=1e-6
    )


@pytest.mark.slow
def test_rerun_of_a_finished_run_trains_no_more(tmp_path):
    config = RunConfig(**TINY_GPT, steps=10, eval_every=10, out=str(tmp_path))
    first = train(config)
    again = train(config)
    assert again.history == {} and again.step == first.step
    np.testing.assert_array_equal(first.model.get_weights()[0], again.model.get_weights()[0])


@pytest.mark.slow
def test_resume_refuses_other_settings_and_no_resume_refuses_overwrite(tmp_path):
    train(RunConfig(**TINY_GPT, steps=10, eval_every=10, out=str(tmp_path)))
    before = (tmp_path / "gpt" / "model.keras").read_bytes()
    with pytest.raises(ValueError, match="seq_len"):
        train(RunConfig(**TINY_GPT, steps=10, eval_every=10, seq_len=16, out=str(tmp_path)))
    with pytest.raises(ValueError, match="--resume"):
        train(RunConfig(**TINY_GPT, steps=10, eval_every=10, out=str(tmp_path), resume=False))
    assert (tmp_path / "gpt" / "model.keras").read_bytes() == before


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(steps=25, eval_every=10), "steps"),
        (dict(precision="float8"), "precision"),
        (dict(preset="gpt-huge"), "preset"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(strategy="tpu-pod"), "strategy"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, overrides, argument):
    with pytest.raises(ValueError, match=argument):
        train(RunConfig(**{**TINY_GPT, "out": str(tmp_path), **overrides}))
    assert not (tmp_path / "gpt" / "checkpoints").exists()


def test_corpus_too_small_for_one_batch(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="too short"):
        train(RunConfig(**TINY_GPT, corpus=[str(small)], out=str(tmp_path)))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.optimizer.build(model.trainable_variables)
    checkpoint = RunCheckpoint(tmp_path / "ckpt", model)
    x = np.ones((20, 4), "float32")
    x[13] = np.nan  # the 14th step (batch size 1) sees a NaN
    guard = DivergenceGuard()
    model.fit(
        x,
        np.ones((20, 1), "float32"),
        batch_size=1,
        epochs=4,
        steps_per_epoch=5,
        callbacks=[guard, SaveProgress(checkpoint, guard, tmp_path / "best.keras", model)],
        verbose=0,
        shuffle=False,
    )
    assert guard.diverged_at == 14
    assert checkpoint_prefixes(tmp_path / "ckpt")[0].endswith("-10")
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    fresh.compile(keras.optimizers.SGD(0.01), "mse")
    fresh.optimizer.build(fresh.trainable_variables)
    assert RunCheckpoint(tmp_path / "ckpt", fresh).restore() == 10
    assert all(np.all(np.isfinite(w)) for w in fresh.get_weights())


@pytest.mark.slow
def test_train_raises_training_diverged_with_the_checkpoint_named(tmp_path):
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train(
            RunConfig(
                **TINY_GPT,
                steps=20,
                eval_every=10,
                learning_rate=1e30,
                clipnorm=None,
                weight_decay=0.0,
                warmup_steps=0,
                out=str(tmp_path),
            )
        )
    assert not (tmp_path / "gpt" / "model.keras").exists()
    assert not (tmp_path / "gpt" / "best.keras").exists()  # never a non-finite model


# ---- several devices and processes --------------------------------------------------------


# Replicas sum gradients in another order: equal to ~1e-7 relative. Adam turns an entry's gradient
# into its sign, so an entry whose gradient is rounding noise moves by up to +-learning_rate
# either way; BERT has many such entries, hence its small rate here.
_MIRRORED = {
    "gpt": ("gpt", {}),
    "bert": ("bert", {"rate": 0.0, "vocab_size": 400, "seq_len": 24, "learning_rate": 1e-6}),
    "gpt-accumulation": ("gpt", {"gradient_accumulation_steps": 2}),
}
_TWO_CPUS = dict(strategy="mirrored", devices=["/cpu:0", "/cpu:1"])


def _mirrored_settings(case, corpus):
    # XLA is off: it cannot place a mirrored variable on a second *logical* CPU device.
    # A small clip norm makes clipping act on every step: Keras's own AdamW would clip each
    # replica's half-batch gradient separately and drift from one device.
    model, extra = _MIRRORED[case]
    return {
        **TINY_GPT,
        "model": model,
        "preset": f"{model}-test",
        "corpus": corpus,
        "steps": 6,
        "eval_every": 3,
        "batch_size": 8,
        "jit_compile": False,
        "clipnorm": 0.05,
        **extra,
    }


@pytest.fixture(scope="module")
def two_cpus(tmp_path_factory, small_corpus):
    """One process with two logical CPU devices that trains, in turn, each mirrored case and a
    batch the two replicas cannot split, while the tests train their one-device runs here.
    Yields (process, directory): `<case>.npz` appears in it once that case is done.

    Several mirrored runs in one process, as in a notebook, need `get_strategy` to reuse its
    strategy: with a new one per run, the second run's first step fails."""
    directory = tmp_path_factory.mktemp("two_cpus")
    jobs = [
        {
            "config": dict(
                _mirrored_settings(case, small_corpus), out=str(directory / case), **_TWO_CPUS
            ),
            "output": str(directory / f"{case}.npz"),
        }
        for case in _MIRRORED
    ]
    indivisible = dict(TINY_GPT, batch_size=3, out=str(directory / "indivisible"), **_TWO_CPUS)
    jobs.append({"config": indivisible, "output": str(directory / "indivisible.npz")})
    with open(directory / "stdout", "w") as stdout, open(directory / "stderr", "w") as stderr:
        process = _run_worker({"logical_cpus": 2, "jobs": jobs}, stdout=stdout, stderr=stderr)
    yield process, directory
    stop_process(process)


def _job_result(two_cpus, case, timeout=600):
    """The path `case` wrote in the two-CPU process (its NPZ or its ".error"), once it exists."""
    process, directory = two_cpus
    paths = directory / f"{case}.npz", directory / f"{case}.npz.error"
    deadline = time.time() + timeout
    while not any(path.exists() for path in paths):
        stderr = (directory / "stderr").read_text()[-3000:]
        assert process.poll() is None, f"the two-CPU process ended before {case}:\n{stderr}"
        assert time.time() < deadline, f"{case} took over {timeout} s"
        time.sleep(0.1)
    return next(path for path in paths if path.exists())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_MIRRORED))
def test_mirrored_two_cpus_equals_one_device(tmp_path, small_corpus, two_cpus, case):
    base = _mirrored_settings(case, small_corpus)
    # One device: here, while the other process trains (this process has one CPU device).
    single = run_arrays(train(RunConfig(**base, out=str(tmp_path / "one"))))
    output = _job_result(two_cpus, case)
    assert output.suffix == ".npz", output.read_text()
    cases_done = list(_MIRRORED).index(case) + 1  # the process runs them in this order
    stdout = (two_cpus[1] / "stdout").read_text()
    assert stdout.count("Strategy: MirroredStrategy with 2 replica(s).") >= cases_done
    mirrored = np.load(output)
    assert sorted(mirrored.files) == sorted(single)
    for key in single:
        if "perplexity" not in key:  # exp(loss): equal losses, but not to 1e-5 absolute
            np.testing.assert_allclose(mirrored[key], single[key], atol=1e-5, rtol=0, err_msg=key)
    model = base["model"]
    one_losses = _losses(tmp_path / "one" / model)
    two_losses = _losses(two_cpus[1] / case / model)
    assert sorted(one_losses) == list(range(1, 7))
    np.testing.assert_allclose(
        [two_losses[s] for s in one_losses], [one_losses[s] for s in one_losses], atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_mirrored_batch_not_divisible_by_replicas(two_cpus):
    output = _job_result(two_cpus, "indivisible")
    assert output.name == "indivisible.npz.error"
    assert "`batch_size`=3 must be divisible by the 2 replicas" in output.read_text()


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _two_workers(tmp_path, env_extra=None):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(
            ENV,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            **(env_extra or {}),
        )
        config = dict(
            TINY_GPT,
            steps=4,
            eval_every=2,
            strategy="multi_worker",
            jit_compile=False,
            out=str(tmp_path / f"out{index}"),
        )
        job = {"config": config, "output": str(tmp_path / f"w{index}.npz")}
        processes.append(_run_worker({"jobs": [job]}, env=env))
    return [_finish(process, timeout=300) for process in processes]


@pytest.mark.slow
def test_multi_worker_two_processes_end_with_identical_weights(tmp_path):
    results = _two_workers(tmp_path)
    for code, out, err in results:
        assert code == 0 and "WORKER_DONE 4" in out, err[-3000:]
    chief, other = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    for key in chief.files:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    assert tf.train.latest_checkpoint(str(tmp_path / "out0" / "gpt" / "checkpoints"))
    assert not (tmp_path / "out1").exists(), "a non-chief worker wrote files"


@pytest.mark.slow
def test_multi_worker_fit_still_needs_the_keras_fix(tmp_path):
    # If this starts passing, Keras has fixed issue 20585: narrow AFFECTED_KERAS accordingly.
    results = _two_workers(tmp_path, {"TF_BIGMODELS_KERAS_20585_FIX": "0"})
    assert any(code != 0 for code, _, _ in results)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, small_corpus, caplog):
    # A real SIGKILL, at whatever point the run has reached after its first checkpoint. What a
    # kill can leave behind does not depend on the model; BERT's exact resume (its masks and
    # sentence pairs) is tested in-process in test_training_reliability.py.
    settings = dict(TINY_GPT, corpus=str(small_corpus), steps=60, eval_every=10, rate=0.1)
    train(RunConfig(**settings, out=str(tmp_path / "a")))

    checkpoints = tmp_path / "b" / "gpt" / "checkpoints"
    victim = subprocess.Popen(
        [sys.executable, "-m", "tf_bigmodels", "train", "gpt", "--preset", "gpt-test"]
        + ["--corpus", str(small_corpus), "--steps", "60", "--eval-every", "10", "--dropout"]
        + ["0.1", "--samples", "0", "--no-export", "--out", str(tmp_path / "b")],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints / "checkpoint").exists():
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    saved = tf.train.latest_checkpoint(str(checkpoints))
    # Killed after its first checkpoint (step 10), with steps left to resume.
    assert saved is not None and not saved.endswith("-60"), "the kill came too late to test"

    # The resume reads only what the killed process left on disk: it runs here.
    with caplog.at_level("INFO", logger="tf_bigmodels"):
        resumed = train(RunConfig(**settings, out=str(tmp_path / "b")))
    assert f"at step {saved.rsplit('-', 1)[1]}." in caplog.text and resumed.history
    a = keras.saving.load_model(tmp_path / "a" / "gpt" / "model.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "b" / "gpt" / "model.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(y, x)  # exact, dropout included


@pytest.mark.slow
def test_a_run_without_model_file_is_rebuilt_from_its_checkpoint(tmp_path):
    result = train(RunConfig(**TINY_GPT, steps=20, eval_every=10, out=str(tmp_path)))
    run_dir = tmp_path / "gpt"
    (run_dir / "model.keras").unlink()  # as if training had been interrupted before the end
    model, tokenizer, step = load_run_model(run_dir)
    assert step == 20 and tokenizer.vocab_size == 258
    for got, want in zip(model.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(got, want)
    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "tf_bigmodels",
            "generate",
            str(run_dir),
            "--prompt",
            "A",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert "checkpoint of step 20" in generated.stderr and generated.stdout.startswith("A")


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.slow
def test_mixed_precision_training(tmp_path, precision):
    result = train(
        RunConfig(
            **TINY_GPT_XLA,
            steps=10,
            eval_every=10,
            precision=precision,
            out=str(tmp_path),
        )
    )
    block = result.model.blocks[0]
    assert block.compute_dtype == precision.split("_")[1] and block.variable_dtype == "float32"
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "mixed_float16"
    )  # float16 needs loss scaling, bfloat16 does not
    assert np.isfinite(result.history["loss"][-1])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


@pytest.mark.slow
def test_gradient_accumulation_gives_the_full_batch_update(tmp_path):
    whole = train(RunConfig(**TINY_GPT, steps=6, eval_every=3, out=str(tmp_path / "a")))
    sliced = train(
        RunConfig(
            **TINY_GPT,
            steps=6,
            eval_every=3,
            gradient_accumulation_steps=4,
            out=str(tmp_path / "b"),
        )
    )
    np.testing.assert_allclose(sliced.history["loss"], whole.history["loss"], atol=1e-5)
    for got, want in zip(sliced.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        train(
            RunConfig(
                **TINY_GPT,
                steps=6,
                eval_every=3,
                gradient_accumulation_steps=3,
                out=str(tmp_path / "c"),
            )
        )
