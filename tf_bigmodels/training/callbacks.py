"""Callbacks of the fit driver: checkpoints that survive a kill, a NaN stop, throughput, a log."""

import json
import math
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf


class RunCheckpoint:
    """Model weights, optimizer state and step in a `tf.train.CheckpointManager`.

    Only the chief keeps its files: under `MultiWorkerMirroredStrategy` every worker must take
    part in saving (the save runs collective ops), so the others write to a temporary directory
    that is removed right after.

    Args:
        directory: where the chief keeps checkpoints.
        model: a compiled model whose optimizer is built.
        chief: bool. Whether this worker is the chief.
        max_to_keep: int. Checkpoints kept. Defaults to 3.

    Example:

    >>> checkpoint = RunCheckpoint("runs/gpt/checkpoints", model, chief=True)
    >>> step = checkpoint.restore()   # 0 on a fresh run
    """

    def __init__(self, directory, model, *, chief=True, max_to_keep=3):
        self.chief = chief
        self.directory = str(directory) if chief else tempfile.mkdtemp(prefix="tfb-worker-ckpt-")
        self.optimizer = model.optimizer
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=max_to_keep
        )

    def restore(self):
        """Restores the newest checkpoint, if any; returns the optimizer step it holds (else 0)."""
        path = tf.train.latest_checkpoint(self.directory)
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return int(self.optimizer.iterations.numpy())

    def save(self):
        """Writes a checkpoint numbered by the optimizer step; returns its path (chief only)."""
        path = self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))
        if not self.chief:
            shutil.rmtree(self.directory, ignore_errors=True)
        return path if self.chief else None


class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Saves a `RunCheckpoint` at the end of every epoch whose loss is finite.

    Example:

    >>> model.fit(data, epochs=8, callbacks=[CheckpointEveryEpoch(checkpoint)])
    """

    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint

    def on_epoch_end(self, epoch, logs=None):
        if math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.checkpoint.save()


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers the step, so nothing is saved.

    Example:

    >>> guard = StopOnNaN()
    >>> model.fit(data, callbacks=[guard]); guard.diverged_at   # None if all went well
    """

    def __init__(self):
        super().__init__()
        self.diverged_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


class Throughput(keras.callbacks.Callback):
    """Adds "tokens/s" (training) and "perplexity" (exp of the loss, language models) to the logs.

    Place it before the progress bar and TensorBoard so they show the values.

    Args:
        tokens_per_step: int. Tokens in one global batch (batch x sequence length).
        perplexity: bool. Also log exp(loss) and exp(val_loss).

    Example:

    >>> model.fit(data, callbacks=[Throughput(12 * 64, perplexity=True)])
    """

    def __init__(self, tokens_per_step, *, perplexity=False):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.perplexity = perplexity
        self._last = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._last is None:
            self._last = (batch, time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        if logs is None:
            return
        now = time.perf_counter()
        last_batch, last_time = self._last
        steps = batch + 1 - last_batch
        if steps > 0 and now > last_time:
            logs["tokens/s"] = steps * self.tokens_per_step / (now - last_time)
        self._last = (batch + 1, now)
        if self.perplexity and "loss" in logs:
            logs["perplexity"] = _exp(logs["loss"])

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None

    def on_epoch_end(self, epoch, logs=None):
        if self.perplexity and logs is not None:
            for key in ("loss", "val_loss"):
                if key in logs:
                    logs[key.replace("loss", "perplexity")] = _exp(logs[key])


def _exp(value):
    value = float(value)
    return math.exp(min(value, 700.0)) if math.isfinite(value) else value


class MetricsLog(keras.callbacks.Callback):
    """Appends one JSON line per logged step and per validation to `path` (the chief's run log).

    Lines look like `{"step": 250, "loss": 1.9, "tokens/s": 11000.0}` and
    `{"step": 250, "val_loss": 2.0, ...}`; `tf-bigmodels plot` and the tests read them.

    Args:
        path: file to append to.
        every: int. Log a training line every this many optimizer steps. Defaults to 10.

    Example:

    >>> model.fit(data, callbacks=[MetricsLog("runs/gpt/metrics.jsonl")])
    """

    def __init__(self, path, every=10):
        super().__init__()
        self.path = str(path)
        self.every = every

    def _write(self, record):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if logs and step % self.every == 0:
            self._write({"step": step, **{k: float(v) for k, v in logs.items()}})

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self._write(
                {"step": self._step(), "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
            )


def atomic_save_model(model, path):
    """Saves a `.keras` file next to its destination and renames it into place.

    An interrupted save leaves the previous file intact.

    Example:

    >>> atomic_save_model(model, "runs/gpt/model.keras")
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(suffix=".keras", dir=directory)
    os.close(handle)
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
