"""The fit driver: one training run of any task, resumable exactly, under any strategy."""

import contextlib
import dataclasses
import json
import logging
import pathlib
import shlex
import shutil

import keras

from tf_bigmodels.data import lm_split_counts
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training import callbacks as cb
from tf_bigmodels.training import records, storage
from tf_bigmodels.training.accumulation import AccumulatingTrainer
from tf_bigmodels.training.errors import TrainingDiverged
from tf_bigmodels.training.loading import source_model, source_tokenizer
from tf_bigmodels.training.multi_worker import prepare_for_multi_worker
from tf_bigmodels.training.strategy import get_strategy, is_chief
from tf_bigmodels.training.tasks import task_for

logger = logging.getLogger("tf_bigmodels")


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
        prompt: a prompt from the run's validation text to try the model with (GPT), or None.

    Example:

    >>> from tf_bigmodels.training import RunConfig
    >>> result = train(RunConfig(preset="gpt-test", steps=2, samples=0, verbose=0))
    >>> result.run_dir, result.step, result.export_path
    (PosixPath('runs/gpt'), 2, 'runs/gpt/export/1')
    """

    run_dir: pathlib.Path
    model: keras.Model
    tokenizer: object
    history: dict
    step: int
    samples: list
    export_path: str = None
    prompt: str = None

    def report(self):
        """What `tf-bigmodels train` prints when the run ends: where it is, its last validation,
        the samples, the SavedModel, and a command to try it with a prompt of its own text.

        Example:

        >>> result = RunResult(pathlib.Path("runs/poet"), None, None, {}, 20, [], None, "静夜思\\n")
        >>> print(result.report())
        <BLANKLINE>
        The run in runs/poet is complete at step 20; nothing to do (pass a larger --steps to train further).
        TensorBoard: tensorboard --logdir runs/poet/logs
        Try it: tf-bigmodels generate runs/poet --prompt '静夜思\\n'
        """
        run = RunDirectory(self.run_dir)
        if not self.history and self.export_path is None:
            lines = [
                f"\nThe run in {run.path} is complete at step {self.step}; nothing to do "
                "(pass a larger --steps to train further)."
            ]
        else:
            lines = [f"\nRun directory: {run.path} (step {self.step})"]
        if self.history.get("val_loss"):
            lines.append(_validation_summary(self.history))
        lines += [f"\n--- sample {i + 1} ---\n{text}" for i, text in enumerate(self.samples)]
        if self.export_path:
            lines.append(f"\nSavedModel: {self.export_path}")
        lines.append(f"TensorBoard: tensorboard --logdir {shlex.quote(str(run.logs))}")
        if self.prompt is not None:
            prompt = self.prompt.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(
                f"Try it: tf-bigmodels generate {shlex.quote(str(run.path))} "
                f"--prompt {shlex.quote(prompt)}"
            )
        return "\n".join(lines)


def _validation_summary(history):
    """'Validation (last): loss 1.9321 per token (perplexity 6.90), 2.7874 bits per character'."""
    loss = history["val_loss"][-1]
    parts = [f"loss {loss:.4f}"]
    if history.get("val_perplexity"):
        parts[0] += f" per token (perplexity {history['val_perplexity'][-1]:.2f})"
    if history.get("val_bits_per_char"):
        parts.append(f"{history['val_bits_per_char'][-1]:.4f} bits per character")
    return "Validation (last): " + ", ".join(parts)


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

    >>> from tf_bigmodels.training import RunConfig
    >>> config = RunConfig(preset="gpt-test", steps=2, samples=0, export=False, verbose=0)
    >>> train(config).step, train(config).history  # the second call finds the run finished
    (2, {})
    """
    config = records.settled(config)
    run = RunDirectory(pathlib.Path(config.out) / config.name)
    task = task_for(config)
    texts = task.texts()
    fingerprint = records.corpus_fingerprint(texts)
    records.check_run_dir(run, config, fingerprint)
    with _dtype_policy(config.precision):
        strategy = get_strategy(config.strategy, devices=config.devices)
        chief = is_chief(strategy)
        _check_replicas(config, strategy.num_replicas_in_sync)
        writer = storage.lock(run.path, "train") if chief else contextlib.nullcontext()
        with writer:
            if chief:
                # Again: another process may have written it meanwhile.
                if records.check_run_dir(run, config, fingerprint):
                    _remove_untrained_run(run)
                storage.remove_leftovers(run.path)
            return _train(config, task, texts, run, fingerprint, strategy, chief)


def _train(config, task, texts, run, fingerprint, strategy, chief):
    record = records.run_record(config, fingerprint)
    if chief and records.read_config(run.path) != record:
        storage.write_text(run.config, json.dumps(record, indent=2))
    keras.utils.set_random_seed(config.seed)
    # The source's tokenizer first: it is checked (and read) faster than its model.
    start = source_tokenizer(task) if config.init_from is not None else None
    source = source_model(task) if config.init_from is not None else None
    tokenizer = task.tokenizer(texts, run.path, save=chief, source=start)
    train_data, val_data = task.datasets(texts, tokenizer)
    # Every worker computes it, so that every worker's history holds the same metrics.
    val_counts = task.validation_counts(texts, tokenizer)
    with strategy.scope():
        model = task.compiled_model(tokenizer.vocab_size, source)
        if config.lora_rank is not None:
            logger.info(
                "LoRA adapters of rank %d: %d trainable parameters (of %d).",
                config.lora_rank,
                _count(model.trainable_weights),
                _count(model.weights),
            )
        fitted = model
        if config.gradient_accumulation_steps:
            fitted = AccumulatingTrainer(model, config.gradient_accumulation_steps)
            fitted.compile(
                optimizer=model.optimizer,
                jit_compile=task.jit_compile(),
                steps_per_execution=config.steps_per_execution,
            )
        prepare_for_multi_worker(fitted, strategy)
        checkpoint = cb.RunCheckpoint(run.checkpoints, model, chief=chief)
        step = checkpoint.restore()
    history = {}
    if step < config.steps:
        history = _fit(
            config,
            task,
            tokenizer,
            fitted,
            model,
            checkpoint,
            step,
            run,
            chief,
            train_data,
            val_data,
            val_counts,
            # For the memorising warnings: a language model's loss (the tasks that count their
            # validation text) is a per-token cross-entropy over its training text.
            lm_split_counts(texts, tokenizer, "train")[0] if val_counts and chief else None,
        )
    samples, export_path = [], None
    if chief:
        trained = bool(history)
        if trained or not run.model.is_file():
            cb.save_model(model, run.model)
        if trained and config.samples:
            samples = task.samples(model, tokenizer, texts)
        if config.export and (trained or run.newest_export() is None):
            export_path = task.export(model, tokenizer, run.export_dir, **task.sampling)
    return RunResult(
        run.path, model, tokenizer, history, config.steps, samples, export_path, task.prompt(texts)
    )


def _fit(
    config,
    task,
    tokenizer,
    fitted,
    model,
    checkpoint,
    step,
    run,
    chief,
    data,
    val_data,
    counts,
    train_tokens,
):
    """Trains from `step` to `config.steps`; returns the history."""
    if step:
        logger.info("Resuming %s at step %d.", run.path, step)
    if chief:
        _drop_metrics_after(run.metrics, step)
    guard = cb.DivergenceGuard(task.diverged_above(tokenizer.vocab_size))
    # The log comes before the checkpoint: a run killed between the two repeats (and
    # re-logs) that interval, instead of missing its validation line.
    callbacks = [
        guard,
        cb.TrainingLog(
            run.path if chief else None,
            config.steps,
            config.batch_size * config.seq_len,
            every=config.log_every,
            perplexity=task.log_perplexity,
            bits_per_char_counts=counts,
            train_tokens=train_tokens,
            vocab_size=tokenizer.vocab_size if counts else None,
            verbose=config.verbose if chief else 0,
        ),
        cb.SaveProgress(checkpoint, guard, run.best_model if chief else None, model),
    ]
    fit = fitted.fit(
        data.skip(step),
        epochs=(config.steps - step) // config.eval_every,
        steps_per_epoch=config.eval_every,
        validation_data=val_data,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,
    )
    if guard.diverged_at is not None:
        last = run.checkpoint_steps()
        raise TrainingDiverged(
            f"training diverged at step {guard.diverged_at}: the loss reached "
            f"{guard.loss:.4g} (NaN, infinite, or above {guard.limit:.3g}, three times a "
            "uniform guess's); nothing was saved after it. The last good checkpoint is "
            f"{f'of step {last[0]}' if last else 'none (it diverged before the first one)'}. "
            "Lower --lr, keep --clipnorm, or use float32/bfloat16 instead of float16."
        )
    return fit.history


def _count(weights):
    return sum(int(w.numpy().size) for w in weights)


def _remove_untrained_run(run):
    """Removes what a run that failed before its first checkpoint wrote (its settings,
    tokenizer and logs), so that a run with other settings starts afresh there."""
    logger.info("Replacing the run in %s, which never reached a checkpoint.", run.path)
    for path in (run.config, run.metrics, run.best_model):
        path.unlink(missing_ok=True)
    for path in (run.tokenizer, run.logs):
        shutil.rmtree(path, ignore_errors=True)


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


@contextlib.contextmanager
def _dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
