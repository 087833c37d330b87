"""Callbacks of the fit driver: exact checkpoints, the best model, divergence, the run's log."""

import errno
import glob
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_bigmodels.data import bits_per_character
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training import storage

logger = logging.getLogger("tf_bigmodels")

_CHECKPOINT_NUMBER = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


class RunCheckpoint:
    """Everything a run needs to continue exactly: weights, optimizer, random state, best loss.

    The checkpoint holds the model's variables, the optimizer's (its step included), the state of
    every random seed generator the model uses (dropout), and the best validation loss so far, so
    a run killed and re-run ends with the same weights as one never interrupted, dropout or not.

    Only the chief keeps its files: under `MultiWorkerMirroredStrategy` every worker must take
    part in saving (the save runs collective ops), so the others write to a temporary directory
    that is removed right after.

    Args:
        directory: where the chief keeps checkpoints.
        model: a compiled model whose optimizer is built.
        chief: bool. Whether this worker is the chief.
        max_to_keep: int. Checkpoints kept. Defaults to 3.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> checkpoint = RunCheckpoint("runs/demo/checkpoints", model)
    >>> checkpoint.restore()  # a fresh run starts at step 0
    0
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), batch_size=2, verbose=0)
    >>> checkpoint.save()
    'runs/demo/checkpoints/ckpt-2'
    >>> RunCheckpoint("runs/demo/checkpoints", model).restore()
    2
    """

    def __init__(self, directory, model, *, chief=True, max_to_keep=3):
        self.chief = chief
        self.directory = str(directory) if chief else tempfile.mkdtemp(prefix="tfb-worker-ckpt-")
        self.optimizer = model.optimizer
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        seeds = [v for v in model.variables if v.path.endswith("seed_generator_state")]
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, random=seeds, best_loss=self.best_loss
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=max_to_keep
        )

    def restore(self):
        """Restores the newest readable checkpoint; returns its optimizer step (0 if none).

        A damaged newest checkpoint (missing or truncated files) is reported in one line and the
        next older one is used.

        Raises:
            ValueError: checkpoints exist but none can be read; names the newest one.
        """
        damaged = []
        for prefix in checkpoint_prefixes(self.directory):
            try:
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
            except Exception as error:  # noqa: BLE001 (a damaged file fails in many ways)
                damaged.append((prefix, " ".join(str(error).split())[:200]))
                continue
            if damaged:
                logger.warning(
                    "Checkpoint %s is damaged (%s); resuming from %s instead.",
                    damaged[0][0],
                    damaged[0][1],
                    prefix,
                )
            return int(self.optimizer.iterations.numpy())
        if damaged:
            raise ValueError(
                f"no checkpoint in {self.directory} can be read: {damaged[0][0]} is damaged "
                f"({damaged[0][1]}); remove the run directory or choose another --name or --out."
            )
        return 0

    def save(self):
        """Writes a checkpoint numbered by the optimizer step; returns its path (chief only).

        Raises:
            OSError: it could not be written (a full disk); the previous checkpoints are intact.
        """
        step = int(self.optimizer.iterations.numpy())
        try:
            path = self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            for partial in glob.glob(
                os.path.join(glob.escape(self.directory), f"ckpt-{step}_temp*")
            ):
                shutil.rmtree(partial, ignore_errors=True)
            message = error.message if isinstance(error, tf.errors.OpError) else str(error)
            message = _TF_NOISE.sub("", message)  # the failing op's name and device
            raise OSError(
                f"cannot write the checkpoint of step {step} in {self.directory}: "
                f"{' '.join(message.split())}"
            ) from None
        if not self.chief:
            shutil.rmtree(self.directory, ignore_errors=True)
        return path if self.chief else None


def checkpoint_prefixes(directory):
    """The checkpoints in `directory`, newest first, whether their files are complete or not.

    Example:

    >>> os.makedirs("ckpts")
    >>> for name in ("ckpt-1750.index", "ckpt-2000.index", "ckpt-2000.data-00000-of-00001"):
    ...     open(os.path.join("ckpts", name), "w").close()
    >>> checkpoint_prefixes("ckpts")
    ['ckpts/ckpt-2000', 'ckpts/ckpt-1750']
    """
    numbers = set()
    for path in glob.glob(os.path.join(glob.escape(os.fspath(directory)), "ckpt-*")):
        match = _CHECKPOINT_NUMBER.match(os.path.basename(path))
        if match:
            numbers.add(int(match.group(1)))
    return [os.path.join(os.fspath(directory), f"ckpt-{n}") for n in sorted(numbers, reverse=True)]


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first loss that is NaN, infinite or above `limit`.

    The step is kept in `diverged_at` and the loss in `loss`; `SaveProgress` saves nothing
    after it.

    Args:
        limit: float. A finite loss above this counts as diverged. Defaults to infinity.

    Example:

    >>> guard = DivergenceGuard(limit=16.6)
    >>> guard.diverged_at is None
    True
    """

    def __init__(self, limit=math.inf):
        super().__init__()
        self.limit = limit
        self.diverged_at = None
        self.loss = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.diverged_at is not None:
            return
        loss = float(loss)
        if not math.isfinite(loss) or loss > self.limit:
            self.diverged_at = int(self.model.optimizer.iterations.numpy())
            self.loss = loss
            self.model.stop_training = True


class SaveProgress(keras.callbacks.Callback):
    """At the end of every epoch: `best.keras` when validation improved, then a checkpoint.

    Nothing is saved after the guard saw divergence, and `best.keras` is written only for a
    finite validation loss lower than every earlier one, this run's and, through the
    checkpoint, every earlier invocation's.

    Args:
        checkpoint: the run's `RunCheckpoint`.
        guard: the run's `DivergenceGuard`.
        best_path: path of `best.keras`, or None (a worker that is not the chief).
        model: the model to save (the trained model, not a trainer around it).

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> guard = DivergenceGuard()
    >>> save = SaveProgress(RunCheckpoint("checkpoints", model), guard, "best.keras", model)
    >>> data = (np.ones((4, 2)), np.ones((4, 1)))
    >>> _ = model.fit(*data, validation_data=data, callbacks=[guard, save], verbose=0)
    >>> sorted(os.listdir("."))
    ['best.keras', 'checkpoints']
    """

    def __init__(self, checkpoint, guard, best_path, model):
        super().__init__()
        self.checkpoint = checkpoint
        self.guard = guard
        self.best_path = best_path
        self.saved_model = model

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.diverged_at is not None:
            return
        val_loss = float((logs or {}).get("val_loss", math.nan))
        if math.isfinite(val_loss) and val_loss < float(self.checkpoint.best_loss.numpy()):
            self.checkpoint.best_loss.assign(val_loss)
            if self.best_path is not None:
                save_model(self.saved_model, self.best_path)
        self.checkpoint.save()


class TrainingLog(keras.callbacks.Callback):
    """The run's log: `metrics.jsonl`, TensorBoard and the console, every `every` steps.

    The training loss logged is the mean of the last `every` steps, not Keras's running mean of
    the epoch so far, so the curve has no jump where an epoch (a validation interval) starts.
    Throughput is a moving average of the last intervals' tokens per second, with the first
    interval of each `fit` call (compilation) left out; from it the console line estimates the
    time left (`eta 0:01:40`: the steps still to run at that speed). On a terminal the console
    line is rewritten in place; otherwise (a file, CI) one plain line is printed per interval.

    Lines of `metrics.jsonl` look like `{"step": 250, "loss": 1.9, "tokens/s": 11000.0}`, and at
    each validation `{"step": 250, "epoch": 1, "val_loss": 2.0, ...}`, with `val_perplexity`
    for a language model. Given the validation text's token and character counts, each
    validation also logs `val_bits_per_char` (`bits_per_character(val_loss, tokens,
    characters)`: the loss in a unit that does not depend on the tokenizer). Both are added to
    the epoch's logs, so `fit`'s history holds them. The file is standard JSON: a value that is
    not finite (a diverged loss, a perplexity that overflows) is written as `null`. It is only
    ever appended to as a regular file of the run directory: a `metrics.jsonl` that is a
    symbolic link is refused (`OSError`), so the log cannot be redirected to another file.

    Two warnings (one line each, on the `tf_bigmodels` logger) catch a run that memorises its
    text: at the start, when the planned tokens (`total_steps * tokens_per_step`) are more than
    `MANY_EPOCHS` passes over `train_tokens`; and once, when `RISING_EVALUATIONS` validations
    in a row are above the best one so far and above the loss of a uniform guess,
    `ln(vocab_size)`.

    Args:
        run_dir: path or None. Where `metrics.jsonl` and `logs/` go; None writes no files (a
            worker that is not the chief).
        total_steps: int. The run's last step (shown as "step 120/2000").
        tokens_per_step: int. Tokens in one global batch.
        every: int. Steps per logged interval.
        perplexity: bool. Also log exp(loss) (language models).
        bits_per_char_counts: `(tokens, characters)` of the validation text (see
            `lm_split_counts`), or None (no bits per character). Defaults to None.
        train_tokens: int or None. Tokens of the training text, for the many-passes warning.
            Defaults to None (no such warning).
        vocab_size: int or None. The vocabulary of a language model whose `val_loss` is a mean
            per-token cross-entropy, for the rising-validation warning. Defaults to None (no
            such warning).
        verbose: int. 1 prints to the console (in place on a terminal), 2 prints one line per
            interval even on a terminal, 0 prints nothing.
        stream: file. The console. Defaults to `sys.stdout`.
        clock: callable returning seconds. Defaults to `time.perf_counter`.

    Example:

    >>> import io
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> console = io.StringIO()
    >>> log = TrainingLog("run", total_steps=4, tokens_per_step=8, every=2, stream=console)
    >>> os.makedirs("run")
    >>> _ = model.fit(np.ones((8, 1)), np.ones((8, 1)), batch_size=2, callbacks=[log], verbose=0)
    >>> console.getvalue().splitlines()[0].startswith("step 2/4  loss ")
    True
    >>> [sorted(json.loads(line)) for line in open("run/metrics.jsonl")][-1]
    ['epoch', 'loss', 'step']
    """

    MANY_EPOCHS = 10  # passes over the training text beyond which a small model memorises it
    RISING_EVALUATIONS = 3  # validations in a row above the best that count as rising

    def __init__(
        self,
        run_dir,
        total_steps,
        tokens_per_step,
        *,
        every=10,
        perplexity=False,
        bits_per_char_counts=None,
        train_tokens=None,
        vocab_size=None,
        verbose=1,
        stream=None,
        clock=time.perf_counter,
    ):
        super().__init__()
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.every = every
        self.perplexity = perplexity
        self.bits_per_char_counts = bits_per_char_counts
        self.train_tokens = train_tokens
        self.vocab_size = vocab_size
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.tty = verbose == 1 and self.stream.isatty()
        self.clock = clock
        self.speed = None
        self._writers = None
        self._metrics = None
        self._open_line = False
        self._best_val_loss = math.inf
        self._rising = 0
        self._warned_rising = False

    # ---- interval bookkeeping ----------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._first_interval = True
        if self.run_dir is not None and self._writers is None:
            self._metrics = _append_only(RunDirectory(self.run_dir).metrics)
            logs_dir = os.fspath(RunDirectory(self.run_dir).logs)
            self._writers = {
                kind: tf.summary.create_file_writer(os.path.join(logs_dir, kind))
                for kind in ("train", "validation")
            }
        passes = many_passes(self.total_steps * self.tokens_per_step, self.train_tokens)
        if passes:
            logger.warning(
                "This run reads its training text %.0f times (%d steps x %d tokens; the text has "
                "%d tokens): a model will memorise so small a text and its validation loss "
                "will rise. Train on more text, or fewer --steps.",
                passes,
                self.total_steps,
                self.tokens_per_step,
                self.train_tokens,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._mark = (0, 0.0, self._step(), self.clock())  # batches, their mean, step, time

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        self._latest = (batch + 1, float(logs["loss"]))
        if self._step() - self._mark[2] >= self.every:
            self._log_interval()

    def _log_interval(self):
        step = self._step()
        batches, mean = self._latest
        last_batches, last_mean, last_step, last_time = self._mark
        # Keras reports the mean since the epoch began; the interval's mean is the difference.
        loss = (mean * batches - last_mean * last_batches) / max(batches - last_batches, 1)
        now = self.clock()
        record = {"step": step, "loss": loss}
        if self.perplexity:
            record["perplexity"] = _exp(loss)
        if not self._first_interval and now > last_time:
            speed = (step - last_step) * self.tokens_per_step / (now - last_time)
            self.speed = speed if self.speed is None else 0.7 * self.speed + 0.3 * speed
        self._first_interval = False
        if self.speed is not None:
            record["tokens/s"] = self.speed
        self._mark = (batches, mean, step, now)
        self._write("train", record)
        eta = None
        if self.speed:
            eta = max(self.total_steps - step, 0) * self.tokens_per_step / self.speed
        self._print(record, final=False, eta=eta)

    def on_epoch_end(self, epoch, logs=None):
        if self._step() > self._mark[2]:  # the epoch's last, shorter interval
            self._log_interval()
        values = {k: float(v) for k, v in (logs or {}).items()}
        if self.perplexity and "val_loss" in values:
            values["val_perplexity"] = _exp(values["val_loss"])
        if self.bits_per_char_counts and "val_loss" in values:
            values["val_bits_per_char"] = _bits_per_character(
                values["val_loss"], *self.bits_per_char_counts
            )
        if logs is not None:  # for the History callback, which comes after this one
            logs.update({k: v for k, v in values.items() if k not in logs})
        record = {"step": self._step(), "epoch": epoch + 1, **values}
        self._write("validation", record)
        shown = {k: v for k, v in record.items() if k == "step" or k.startswith("val_")}
        self._print(shown, final=True)
        if "val_loss" in values:
            self._watch_validation(values["val_loss"])

    def _watch_validation(self, val_loss):
        """Warns once when validation rose `RISING_EVALUATIONS` times in a row past a guess's."""
        if val_loss < self._best_val_loss:
            self._best_val_loss, self._rising = val_loss, 0
            return
        worse_than_guessing = self.vocab_size is not None and not val_loss <= math.log(
            self.vocab_size
        )
        self._rising = self._rising + 1 if worse_than_guessing else 0
        if self._rising >= self.RISING_EVALUATIONS and not self._warned_rising:
            self._warned_rising = True
            logger.warning(
                "Validation loss has risen for %d evaluations in a row (%.2f now, best %.2f) and "
                "is worse than a uniform guess (%.2f = ln %d): the model is memorising its "
                "training text. Use its best model (best.keras), more text, or fewer --steps.",
                self._rising,
                val_loss,
                self._best_val_loss,
                math.log(self.vocab_size),
                self.vocab_size,
            )

    def on_train_end(self, logs=None):
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
        for writer in (self._writers or {}).values():
            writer.flush()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics, self._writers = None, None

    # ---- output -----------------------------------------------------------------------------
    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _write(self, kind, record):
        if self.run_dir is None:
            return
        self._metrics.write(json_line(record))
        self._metrics.flush()
        with self._writers[kind].as_default(step=record["step"]):
            for key, value in record.items():
                if key not in ("step", "epoch") and math.isfinite(value):
                    name = key.removeprefix("val_").replace("/", "_per_")
                    tf.summary.scalar(name, value)

    def _print(self, record, *, final, eta=None):
        if not self.verbose:
            return
        parts = [f"step {record['step']}/{self.total_steps}"]
        for key, value in record.items():
            if key == "step":
                continue
            if key == "tokens/s":
                parts.append(f"{value:,.0f} tokens/s")
            else:
                parts.append(f"{key} {value:.4f}")
        if eta is not None:
            parts.append(f"eta {_clock_time(eta)}")
        line = "  ".join(parts)
        if self.tty and not final:
            self.stream.write("\r" + line + "\033[K")
            self._open_line = True
        else:
            self.stream.write(("\r" if self.tty else "") + line + ("\033[K" if self.tty else ""))
            self.stream.write("\n")
            self._open_line = False
        self.stream.flush()


def many_passes(planned_tokens, train_tokens):
    """How many times a run reads its training text, if more than `TrainingLog.MANY_EPOCHS`.

    Args:
        planned_tokens: int. Tokens the run trains on (steps x tokens per step).
        train_tokens: int or None. Tokens of the training text; None (unknown) never warns.

    Returns:
        float (the passes) when they are more than `TrainingLog.MANY_EPOCHS`, else None.

    Example:

    >>> many_passes(2000 * 768, 7_200), many_passes(2000 * 768, 1_003_000)
    (213.33333333333334, None)
    """
    if not train_tokens:
        return None
    passes = planned_tokens / train_tokens
    return passes if passes > TrainingLog.MANY_EPOCHS else None


def json_line(record):
    """One line of `metrics.jsonl`: standard JSON, with a value that is not finite as `null`.

    Python's `json` writes `NaN` and `Infinity`, which standard JSON (and most readers outside
    Python) refuse; a diverged loss or an overflowing perplexity is written as `null` instead.

    Example:

    >>> json_line({"step": 3, "loss": 2.5, "perplexity": math.inf})
    '{"step": 3, "loss": 2.5, "perplexity": null}\\n'
    """
    finite = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in record.items()
    }
    return json.dumps(finite, allow_nan=False) + "\n"


def _append_only(path):
    """Opens `path` to append text, refusing a symbolic link (which could point anywhere)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP,
                "the run's log is a symbolic link; it is written only as a regular file of the "
                "run directory (remove the link)",
                os.fspath(path),
            ) from None
        raise
    return os.fdopen(descriptor, "a", encoding="utf-8")


def _clock_time(seconds):
    """`h:mm:ss` for a number of seconds."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _bits_per_character(loss, tokens, characters):
    """`bits_per_character`, or infinity for a loss that is not finite."""
    return bits_per_character(loss, tokens, characters) if math.isfinite(loss) else math.inf


def _exp(value):
    """exp(value), or infinity where it would overflow a float32 (TensorBoard's scalars)."""
    return math.exp(value) if value < 88.0 else math.inf


def all_finite(model):
    """Whether every weight of `model` is finite.

    Example:

    >>> all_finite(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    True
    """
    return all(np.all(np.isfinite(w)) for w in model.get_weights() if w.dtype.kind == "f")


def save_model(model, path):
    """Saves a `.keras` file atomically (beside it, then renamed); never a non-finite model.

    An interrupted save leaves the previous file intact; the file gets the umask's permissions.

    Raises:
        ValueError: a weight is NaN or infinite (nothing is written).
        OSError: the file cannot be written (a full disk); the previous one is intact.

    Example:

    >>> save_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), "model.keras")
    >>> os.listdir(".")
    ['model.keras']
    """
    if not all_finite(model):
        raise ValueError(f"not saving {path}: the model has NaN or infinite weights.")
    try:
        with storage.atomic_path(path) as temporary:
            model.save(temporary)
    except OSError as error:
        raise OSError(
            f"cannot write {path}: {error.strerror or ' '.join(str(error).split())}"
        ) from None
