"""The fit driver: one training run of any task, resumable exactly, under any strategy."""

import contextlib
import dataclasses
import json
import logging
import os
import pathlib

import keras
import tensorflow as tf

from tf_bigmodels import __version__
from tf_bigmodels.data import lm_split_counts
from tf_bigmodels.training import callbacks as cb
from tf_bigmodels.training import storage
from tf_bigmodels.training.accumulation import AccumulatingTrainer
from tf_bigmodels.training.config import RERUN_MAY_CHANGE, RunConfig
from tf_bigmodels.training.multi_worker import prepare_for_multi_worker
from tf_bigmodels.training.strategy import get_strategy, is_chief
from tf_bigmodels.training.tasks import task_for

logger = logging.getLogger("tf_bigmodels")

CONFIG_FILE = "config.json"


class TrainingDiverged(RuntimeError):
    """Raised when the training loss became NaN, infinite or implausibly large.

    Nothing is saved after the step where it happened; the message names the last good
    checkpoint.

    Example:

    >>> try:  # doctest: +SKIP
    ...     train(RunConfig(learning_rate=1e30))
    ... except TrainingDiverged as error:
    ...     print(error)  # names the step and the last good checkpoint
    """


@dataclasses.dataclass
class RunResult:
    """What a run produced.

    Attributes:
        run_dir: the run directory.
        model: the trained model (the `GPTModel` or the `BERTPretrainer`).
        tokenizer: its tokenizer.
        history: per-epoch metrics of this invocation (empty if the run was already complete).
        step: the optimizer step reached.
        samples: generated texts (GPT).
        export_path: the SavedModel written by this invocation, or None.

    Example:

    >>> result = train(RunConfig(preset="gpt-test", steps=20))  # doctest: +SKIP
    >>> result.run_dir, result.step, result.export_path  # doctest: +SKIP
    (PosixPath('runs/gpt'), 20, 'runs/gpt/export/1')
    """

    run_dir: pathlib.Path
    model: keras.Model
    tokenizer: object
    history: dict
    step: int
    samples: list
    export_path: str = None


def train(config):
    """Trains the model `config` describes with `model.fit`; continues the run if it can.

    The run directory `config.out/config.name/` receives `config.json` (the settings),
    `checkpoints/` (weights, optimizer, random state and best loss every `eval_every` steps: a
    killed run re-run continues exactly where it stopped), `logs/` (TensorBoard),
    `metrics.jsonl`, `best.keras` (lowest validation loss), `model.keras` (final), a learned
    tokenizer in `tokenizer/`, and the SavedModel in `export/<version>/`. Every file is written
    atomically; one process at a time may write a run directory. Under several workers only the
    chief writes.

    Re-running a run: a setting left at None takes the stored run's value (not its usual
    default). The settings of `RERUN_MAY_CHANGE` may differ from the stored ones and are honoured
    (more `steps` continue a finished run, with the learning-rate schedule stretched to the new
    total); any other difference (corpus, tokenizer, model, data, optimizer) is refused before
    anything is written, as are fewer `steps` than the run has reached. A finished run re-run
    with its own settings writes nothing.

    Args:
        config: a `RunConfig`.

    Returns:
        A `RunResult`.

    Raises:
        ValueError: bad settings, a corpus too small, or a run directory that does not match.
        TrainingDiverged: the loss diverged; the last good checkpoint is intact.
        DirectoryInUse: another process is writing the run directory.
        OSError: a file could not be written (a full disk); what was written before is intact.

    Example:

    >>> result = train(RunConfig(model="gpt", preset="gpt-test", steps=20))  # doctest: +SKIP
    >>> result.samples[0]  # doctest: +SKIP
    """
    resolved = config.resolved()
    run_dir = pathlib.Path(resolved.out) / resolved.name
    config = _with_stored_defaults(config, _read_config(run_dir))
    config = _with_source_defaults(config).resolved()
    task = task_for(config)
    texts = task.texts()
    _check_run_dir(run_dir, config)
    with _dtype_policy(config.precision):
        strategy = get_strategy(config.strategy, devices=config.devices)
        chief = is_chief(strategy)
        _check_replicas(config, strategy.num_replicas_in_sync)
        writer = storage.lock(run_dir, "train") if chief else contextlib.nullcontext()
        with writer:
            if chief:
                _check_run_dir(run_dir, config)  # again: another process may have written it
                storage.remove_leftovers(run_dir)
            return _train(config, task, texts, run_dir, strategy, chief)


def _train(config, task, texts, run_dir, strategy, chief):
    stored = _read_config(run_dir)
    record = _run_record(config)
    if chief and stored != record:
        storage.write_text(run_dir / CONFIG_FILE, json.dumps(record, indent=2))
    keras.utils.set_random_seed(config.seed)
    tokenizer = task.tokenizer(texts, run_dir, save=chief)
    train_data, val_data = task.datasets(texts, tokenizer)
    # Every worker computes it, so that every worker's history holds the same metrics.
    val_counts = task.validation_counts(texts, tokenizer)
    with strategy.scope():
        model = task.compiled_model(tokenizer.vocab_size)
        fitted = model
        if config.gradient_accumulation_steps:
            fitted = AccumulatingTrainer(model, config.gradient_accumulation_steps)
            fitted.compile(
                optimizer=model.optimizer,
                jit_compile=task.jit_compile(),
                steps_per_execution=config.steps_per_execution,
            )
        prepare_for_multi_worker(fitted, strategy)
        checkpoint = cb.RunCheckpoint(run_dir / "checkpoints", model, chief=chief)
        step = checkpoint.restore()
    history = {}
    if step < config.steps:
        if step:
            logger.info("Resuming %s at step %d.", run_dir, step)
        if chief:
            _drop_metrics_after(run_dir / "metrics.jsonl", step)
        guard = cb.DivergenceGuard(task.diverged_above(tokenizer.vocab_size))
        # The log comes before the checkpoint: a run killed between the two repeats (and
        # re-logs) that interval, instead of missing its validation line.
        callbacks = [
            guard,
            cb.TrainingLog(
                run_dir if chief else None,
                config.steps,
                config.batch_size * config.seq_len,
                every=config.log_every,
                perplexity=task.log_perplexity,
                bits_per_char_counts=val_counts,
                # For the memorising warnings: a language model's loss (the tasks that count
                # their validation text) is a per-token cross-entropy over its training text.
                train_tokens=(
                    lm_split_counts(texts, tokenizer, "train")[0] if val_counts and chief else None
                ),
                vocab_size=tokenizer.vocab_size if val_counts else None,
                verbose=config.verbose if chief else 0,
            ),
            cb.SaveProgress(checkpoint, guard, run_dir / "best.keras" if chief else None, model),
        ]
        fit = fitted.fit(
            train_data.skip(step),
            epochs=(config.steps - step) // config.eval_every,
            steps_per_epoch=config.eval_every,
            validation_data=val_data,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
        history = fit.history
        if guard.diverged_at is not None:
            last = cb.checkpoint_prefixes(run_dir / "checkpoints")
            raise TrainingDiverged(
                f"training diverged at step {guard.diverged_at}: the loss reached "
                f"{guard.loss:.4g} (NaN, infinite, or above {guard.limit:.3g}, three times a "
                "uniform guess's); nothing was saved after it. The last good checkpoint is "
                f"{last[0] if last else 'none (it diverged before the first one)'}. Lower "
                "--lr, keep --clipnorm, or use float32/bfloat16 instead of float16."
            )
    samples, export_path = [], None
    if chief:
        trained = bool(history)
        if trained or not (run_dir / "model.keras").is_file():
            cb.save_model(model, run_dir / "model.keras")
        if trained and config.samples:
            samples = task.samples(model, tokenizer, texts)
        if config.export and (trained or not _exports(run_dir / "export")):
            export_path = _export(task, model, tokenizer, run_dir / "export")
    return RunResult(run_dir, model, tokenizer, history, config.steps, samples, export_path)


def load_run_model(run_dir):
    """Rebuilds a run's model from its `config.json` and newest checkpoint, and its tokenizer.

    For a run that has checkpoints but no `model.keras` yet (interrupted, or still training).
    The tokenizer is the one the run recorded (a learned one is read from `run_dir/tokenizer`).

    Args:
        run_dir: str or path. A run directory written by `train`.

    Returns:
        `(model, tokenizer, step)`: the `GPTModel` or `BERTPretrainer` with the checkpoint's
        weights, its tokenizer, and the checkpoint's optimizer step.

    Example:

    >>> model, tokenizer, step = load_run_model("runs/gpt")  # doctest: +SKIP
    """
    run_dir = pathlib.Path(run_dir)
    config = run_config(run_dir)
    if not cb.checkpoint_prefixes(run_dir / "checkpoints"):
        raise ValueError(
            f"the run directory {run_dir} has no model yet: no model.keras, export or "
            "checkpoint (train it first)."
        )
    task = task_for(config)
    tokenizer = task.load_tokenizer(run_dir)
    model = task.compiled_model(tokenizer.vocab_size)
    step = cb.RunCheckpoint(run_dir / "checkpoints", model).restore()
    return model, tokenizer, step


def load_run_tokenizer(run_dir):
    """The tokenizer a run directory recorded (its `config.json` names it).

    Args:
        run_dir: str or path. A run directory written by `train`.

    Example:

    >>> tokenizer = load_run_tokenizer("runs/gpt")  # doctest: +SKIP
    """
    return task_for(run_config(run_dir)).load_tokenizer(run_dir)


def run_config(run_dir):
    """The resolved `RunConfig` stored in a run directory's `config.json`.

    Runs written before `tokenizer` was recorded used their kind's default tokenizer.

    Raises:
        ValueError: no readable `config.json`, or one that is not a run's settings.

    Example:

    >>> run_config("runs/gpt").steps  # doctest: +SKIP
    2000
    """
    run_dir = pathlib.Path(run_dir)
    saved = _read_config(run_dir)
    if saved is None:
        raise ValueError(f"`run_dir`={str(run_dir)!r} has no {CONFIG_FILE}.")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        return RunConfig(**{k: v for k, v in saved.items() if k in fields}).resolved()
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{run_dir / CONFIG_FILE} does not hold a run's settings ({error})"
        ) from None


# ---- the run directory -----------------------------------------------------------------------
def _run_record(config):
    return {
        "version": __version__,
        **{k: v for k, v in dataclasses.asdict(config).items() if k != "devices"},
    }


def _read_config(run_dir):
    """The stored settings (a dict), None if there are none; ValueError if unreadable."""
    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} is unreadable ({' '.join(str(error).split())}); choose another --name or "
            "--out."
        ) from None
    if not isinstance(saved, dict):
        raise ValueError(
            f"{path} is unreadable (it holds a {type(saved).__name__}, not the run's settings); "
            "choose another --name or --out."
        )
    return saved


def _with_stored_defaults(config, stored):
    """`config` with each None setting taken from the stored run (a re-run continues that run,
    whose defaults may have been resolved against other settings, such as its `steps`)."""
    if stored is None:
        return config
    unset = {
        field.name: stored[field.name]
        for field in dataclasses.fields(RunConfig)
        if getattr(config, field.name) is None and stored.get(field.name) is not None
    }
    return dataclasses.replace(config, **unset)


# Settings that an `init_from` source run decides when left at None: its shape and tokenizer
# (which must be the source's) and its preset (the training defaults it was made with).
_SOURCE_SETTINGS = (
    "preset",
    "tokenizer",
    "vocab_size",
    "seq_len",
    "d_model",
    "num_heads",
    "dff",
    "num_layers",
    "rate",
)


def _with_source_defaults(config):
    """`config` with the `_SOURCE_SETTINGS` left at None taken from the `init_from` run (or the
    run directory that holds an `init_from` `.keras` file)."""
    if config.init_from is None:
        return config
    source = pathlib.Path(config.init_from)
    stored = _read_config(source if source.is_dir() else source.parent)
    if stored is None or stored.get("model") != config.model:
        return config
    unset = {
        field: stored[field]
        for field in _SOURCE_SETTINGS
        if getattr(config, field) is None and stored.get(field) is not None
    }
    if config.tokenizer not in (None, stored.get("tokenizer")):
        unset.pop("vocab_size", None)  # another tokenizer: refused by the task, in its words
    return dataclasses.replace(config, **unset)


def _check_run_dir(run_dir, config):
    """Refuses, before anything is written, a run directory that cannot be written, holds an
    unreadable run or a run of another version, or whose run differs from `config` in a setting
    a re-run may not change."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(
            f"cannot write the run directory {run_dir}: {existing} is not a writable directory."
        )
    saved = _read_config(run_dir)
    checkpoints = cb.checkpoint_prefixes(run_dir / "checkpoints")
    if saved is None:
        if checkpoints:
            raise ValueError(
                f"{run_dir} holds checkpoints but no {CONFIG_FILE}; choose another --name or --out."
            )
        return
    if not config.resume and checkpoints:
        raise ValueError(
            f"{run_dir} already holds a run; re-run with --resume to continue it, or choose "
            "another --name or --out (nothing was overwritten)."
        )
    if saved.get("version") != __version__:
        raise ValueError(
            f"{run_dir} was written by tf_bigmodels {saved.get('version')!r}, this is "
            f"{__version__}; start a new run with another --name or --out."
        )
    record = _run_record(config)
    # A setting added after the run was written is read as its default.
    defaults = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    changed = [
        f"{key}: {saved.get(key, defaults.get(key))!r} -> {record[key]!r}"
        for key in record
        if key not in (*RERUN_MAY_CHANGE, "out", "name")
        and saved.get(key, defaults.get(key)) != record[key]
    ]
    if changed:
        raise ValueError(
            f"{run_dir} holds a run with other settings ({'; '.join(changed)}); re-run it with "
            "the same settings, or choose another --name or --out for a new run."
        )
    reached = int(checkpoints[0].rsplit("-", 1)[1]) if checkpoints else 0
    if config.steps < reached:
        raise ValueError(
            f"`steps` must be at least the {reached} steps {run_dir} has reached (a run never "
            f"goes back), got {config.steps}."
        )
    if (config.steps - reached) % config.eval_every:
        raise ValueError(
            f"`eval_every` must divide the {config.steps - reached} steps left from step "
            f"{reached} to {config.steps}, got {config.eval_every}."
        )


def _check_replicas(config, replicas):
    if config.batch_size % replicas:
        raise ValueError(
            f"`batch_size`={config.batch_size} must be divisible by the {replicas} replicas "
            "(each replica takes batch_size / replicas)."
        )
    micro = config.gradient_accumulation_steps or 1
    if (config.batch_size // replicas) % micro:
        raise ValueError(
            f"`gradient_accumulation_steps`={micro} must divide the batch of each replica "
            f"({config.batch_size} / {replicas} replicas = {config.batch_size // replicas})."
        )


def _drop_metrics_after(path, step):
    """Drops log lines of steps a resumed run repeats, so each step is logged once."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) != len(lines):
        storage.write_text(path, "".join(kept))


def _logged_step(line):
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 0


def _exports(directory):
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _export(task, model, tokenizer, directory):
    try:
        return task.export(model, tokenizer, directory)
    except (OSError, tf.errors.OpError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else error.strerror
        raise OSError(
            f"cannot write the SavedModel under {directory}: "
            f"{' '.join(str(message or error).split())}"
        ) from None


@contextlib.contextmanager
def _dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
