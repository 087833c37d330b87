"""The run's log (`TrainingLog`): the ETA, standard JSON, no symlinks, memorising warnings."""

import io
import json
import logging
import math
import os

import keras
import numpy as np
import pytest

from tf_bigmodels.data import lm_split_counts, load_corpus
from tf_bigmodels.tokenizers import ByteTokenizer
from tf_bigmodels.training import RunConfig, train
from tf_bigmodels.training import callbacks as cb


class _Optimizer:
    def __init__(self):
        self.iterations = keras.Variable(0, dtype="int64")


def _drive(log, losses, steps_per_epoch, val_losses=None, clock_times=None):
    """Feeds `log` a run's batch losses (and validation losses) as `fit` would."""
    log.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    log.model.optimizer = _Optimizer()
    log.on_train_begin()
    for epoch in range(len(losses) // steps_per_epoch):
        log.on_epoch_begin(epoch)
        seen = []
        for batch in range(steps_per_epoch):
            seen.append(losses[epoch * steps_per_epoch + batch])
            log.model.optimizer.iterations.assign_add(1)
            log.on_train_batch_end(batch, {"loss": float(np.mean(seen))})
        val = val_losses[epoch] if val_losses else seen[-1]
        log.on_epoch_end(epoch, {"loss": float(np.mean(seen)), "val_loss": val})
    log.on_train_end()


def _strict_json(line):
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


# ---- ETA ------------------------------------------------------------------------------------


def test_progress_line_shows_the_time_left_at_the_measured_speed():
    # A fake clock: every call is 0.5 s after the one before, so each 5-step interval of
    # 100-token steps takes 1 s at a steady 500 tokens/s (the first interval, compilation, is
    # not measured).
    ticks = iter(np.arange(0.0, 100.0, 0.5))
    stream = io.StringIO()
    log = cb.TrainingLog(
        None, 40, 100, every=5, verbose=2, stream=stream, clock=lambda: float(next(ticks))
    )
    _drive(log, [2.0] * 40, steps_per_epoch=20)
    lines = [line for line in stream.getvalue().splitlines() if "tokens/s" in line]
    assert lines[0].startswith("step 10/40")
    for line in lines:
        step = int(line.split()[1].split("/")[0])
        speed = float(line.split("  ")[-2].split()[0].replace(",", ""))
        left = (40 - step) * 100 / speed
        assert line.endswith(f"eta {cb._clock_time(left)}")
    first = stream.getvalue().splitlines()[0]
    assert first.startswith("step 5/40") and "eta" not in first  # no speed yet: no estimate


def test_clock_time_format():
    assert [cb._clock_time(s) for s in (0, 59.6, 61, 3600 + 125)] == [
        "0:00:00",
        "0:01:00",
        "0:01:01",
        "1:02:05",
    ]


# ---- metrics.jsonl --------------------------------------------------------------------------


def test_metrics_are_standard_json_with_null_for_values_that_are_not_finite(tmp_path):
    log = cb.TrainingLog(tmp_path, 10, 100, every=5, perplexity=True, verbose=0)
    _drive(log, [2.0] * 5 + [1000.0] * 4 + [math.inf], steps_per_epoch=5)
    raw = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines = [_strict_json(line) for line in raw]
    assert lines[0]["perplexity"] == pytest.approx(math.exp(2.0))
    overflowed = [r for r in lines if r["step"] == 10 and "epoch" not in r][0]
    assert overflowed["loss"] is None and overflowed["perplexity"] is None
    assert "Infinity" not in "".join(raw) and "NaN" not in "".join(raw)


def test_metrics_file_that_is_a_symlink_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(outside, run_dir / "metrics.jsonl")
    log = cb.TrainingLog(run_dir, 10, 100, every=5, verbose=0)
    with pytest.raises(OSError, match="symbolic link") as error:
        _drive(log, [2.0] * 10, steps_per_epoch=5)
    assert str(run_dir / "metrics.jsonl") in str(error.value)
    assert outside.read_text() == "precious\n"


def test_metrics_are_appended_across_fit_calls(tmp_path):
    for _ in range(2):
        _drive(cb.TrainingLog(tmp_path, 10, 100, every=5, verbose=0), [2.0] * 5, 5)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


# ---- memorising warnings --------------------------------------------------------------------


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_many_passes_over_a_small_text_warn_and_the_shakespeare_defaults_do_not(caplog):
    tokenizer = ByteTokenizer()
    shakespeare = RunConfig(model="gpt").resolved()
    tokens_per_step = shakespeare.batch_size * shakespeare.seq_len
    train_tokens = lm_split_counts(load_corpus("shakespeare"), tokenizer, "train")[0]
    with caplog.at_level(logging.WARNING, logger="tf_bigmodels"):
        _drive(
            cb.TrainingLog(
                None, shakespeare.steps, tokens_per_step, train_tokens=train_tokens, verbose=0
            ),
            [],
            1,
        )
    assert _warnings(caplog) == []

    small = ["A line of a small poem, one of 199.\n" * 199]
    small_tokens = lm_split_counts(small, tokenizer, "train")[0]
    with caplog.at_level(logging.WARNING, logger="tf_bigmodels"):
        _drive(
            cb.TrainingLog(
                None, shakespeare.steps, tokens_per_step, train_tokens=small_tokens, verbose=0
            ),
            [],
            1,
        )
    (warning,) = _warnings(caplog)
    passes = shakespeare.steps * tokens_per_step / small_tokens
    assert (
        f"reads its training text {passes:.0f} times" in warning
        and f"the text has {small_tokens} tokens" in warning
    )


@pytest.mark.parametrize(
    "val_losses, vocab_size, warns",
    [
        ([10.9, 11.5, 12.8, 15.0, 15.2], 1500, True),  # rising, and worse than 7.3 = ln 1500
        ([10.9, 11.5, 9.0, 12.8, 15.0], 1500, False),  # a new best in between: not 3 in a row
        ([2.0, 1.8, 1.7, 1.75, 1.8, 1.85, 1.9], 258, False),  # slight overfitting, still learned
        ([10.9, 11.5, 12.8, 15.0, 15.2], None, False),  # not a language model's loss
    ],
)
def test_rising_validation_loss_warns_once(caplog, val_losses, vocab_size, warns):
    log = cb.TrainingLog(None, 2 * len(val_losses), 100, every=2, vocab_size=vocab_size, verbose=0)
    with caplog.at_level(logging.WARNING, logger="tf_bigmodels"):
        _drive(log, [1.0] * 2 * len(val_losses), 2, val_losses=val_losses)
    messages = _warnings(caplog)
    assert len(messages) == warns
    if warns:
        assert "risen for 3 evaluations in a row (15.00 now, best 10.90)" in messages[0]


class _Stop(Exception):
    pass


def test_training_on_a_tiny_corpus_warns_before_the_first_step(tmp_path, caplog, monkeypatch):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("".join(f"line {i} of a very small corpus\n" for i in range(40)))
    # 200 steps of 4 x 16 tokens read the ~1,100-byte training text 12 times.
    config = RunConfig(
        model="gpt",
        preset="gpt-test",
        corpus=str(corpus),
        steps=200,
        eval_every=200,
        batch_size=4,
        seq_len=16,
        eval_steps=1,
        samples=0,
        export=False,
        verbose=0,
        out=str(tmp_path),
    )
    begin = cb.TrainingLog.on_train_begin

    def begin_then_stop(self, logs=None):
        begin(self, logs)
        raise _Stop

    monkeypatch.setattr(cb.TrainingLog, "on_train_begin", begin_then_stop)
    with caplog.at_level(logging.WARNING, logger="tf_bigmodels"), pytest.raises(_Stop):
        train(config)  # stopped before its first step: the warning came first
    (warning,) = [m for m in _warnings(caplog) if "reads its training text" in m]
    assert "200 steps x 64 tokens" in warning
