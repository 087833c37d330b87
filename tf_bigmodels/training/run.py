"""The fit driver: one run of GPT or BERT pre-training, resumable, under any strategy."""

import dataclasses
import json
import logging
import os
import pathlib

import keras
import numpy as np
import tensorflow as tf

from tf_bigmodels import __version__
from tf_bigmodels.data import bert_pretraining_dataset, lm_dataset, load_corpus
from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer
from tf_bigmodels.training import callbacks as cb
from tf_bigmodels.training.accumulation import accumulate_gradients
from tf_bigmodels.training.multi_worker import prepare_for_multi_worker
from tf_bigmodels.training.optimizer import build_optimizer
from tf_bigmodels.training.presets import build_model, get_preset
from tf_bigmodels.training.strategy import get_strategy, is_chief

logger = logging.getLogger("tf_bigmodels")

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Settings that fix the model's shape or the meaning of a step: a resumed run must keep them.
_FIXED_ON_RESUME = (
    "model",
    "preset",
    "d_model",
    "num_heads",
    "dff",
    "num_layers",
    "seq_len",
    "batch_size",
    "vocab_size",
    "eval_every",
)


class TrainingDiverged(RuntimeError):
    """Raised when the loss became NaN or infinite; the last good checkpoint is kept.

    Example:

    >>> try:
    ...     train(RunConfig(learning_rate=1e30))
    ... except TrainingDiverged as error:
    ...     print(error)  # names the step and the last good checkpoint
    """


@dataclasses.dataclass
class RunConfig:
    """Everything one training run needs; `None` fields take the preset's value.

    Attributes:
        model: "gpt" or "bert".
        preset: a name from `presets.GPT_PRESETS` / `BERT_PRESETS`; None is "gpt-nano" / "bert-tiny".
        corpus: "shakespeare" (bundled), a path, a glob, or a list of paths.
        steps: training steps (batches).
        batch_size: global batch size (split over the replicas).
        seq_len: tokens per example.
        learning_rate, warmup_steps: peak rate and linear warm-up; then cosine (GPT) or
            linear (BERT) decay to a tenth of the peak.
        weight_decay, clipnorm: AdamW decay of kernels; global-norm gradient clipping.
        gradient_accumulation_steps: run each step's batch as this many micro-batches whose
            gradients are added before the one update (less memory, same update; see
            `accumulate_gradients`).
        d_model, num_heads, dff, num_layers, rate, vocab_size: override the preset's model.
        strategy, devices: see `get_strategy`.
        precision: "float32", "mixed_float16" (with loss scaling) or "mixed_bfloat16".
        jit_compile: compile the train step with XLA.
        steps_per_execution: batches run per call into the compiled function.
        eval_every, eval_steps: validate (and checkpoint) every `eval_every` steps on
            `eval_steps` batches; `steps` must be a multiple of `eval_every`.
        out, name: the run directory is `out/name` (name defaults to `model`).
        resume: continue from the run directory's checkpoint if there is one; if False, a run
            directory that already has checkpoints is an error (nothing is overwritten).
        seed: seeds data order, masks and initialisation.
        samples, sample_tokens: GPT samples printed at the end.
        export: write a SavedModel under `out/name/export/<version>/` at the end.
        verbose: Keras progress bar (1), one line per epoch (2) or silent (0).
        log_every: write a line to `metrics.jsonl` every this many optimizer steps.

    Example:

    >>> config = RunConfig(model="bert", preset="bert-mini", steps=4000, precision="mixed_bfloat16")
    >>> config.resolved().d_model
    256
    """

    model: str = "gpt"
    preset: str = None
    corpus: object = "shakespeare"
    steps: int = None
    batch_size: int = None
    seq_len: int = None
    learning_rate: float = None
    warmup_steps: int = None
    weight_decay: float = 0.1
    clipnorm: float = 1.0
    gradient_accumulation_steps: int = None
    d_model: int = None
    num_heads: int = None
    dff: int = None
    num_layers: int = None
    rate: float = None
    vocab_size: int = None
    strategy: str = "auto"
    devices: list = None
    precision: str = "float32"
    jit_compile: bool = True
    steps_per_execution: int = 1
    eval_every: int = 250
    eval_steps: int = 20
    out: str = "runs"
    name: str = None
    resume: bool = True
    seed: int = 0
    samples: int = 2
    sample_tokens: int = 200
    export: bool = True
    verbose: int = 1
    log_every: int = 10

    def resolved(self):
        """A copy with every `None` filled from the preset, checked; raises ValueError if bad."""
        preset = get_preset(self.model, self.preset)
        values = dataclasses.asdict(self)
        values["preset"] = self.preset or {"gpt": "gpt-nano", "bert": "bert-tiny"}[self.model]
        for field in ("steps", "batch_size", "seq_len", "learning_rate", "warmup_steps"):
            if values[field] is None:
                values[field] = getattr(preset, field)
        for field, value in preset.model.items():
            if values[field] is None:
                values[field] = value
        if values["vocab_size"] is None and self.model == "bert":
            values["vocab_size"] = preset.vocab_size
        if values["name"] is None:
            values["name"] = self.model
        config = RunConfig(**values)
        config._check()
        return config

    def _check(self):
        for field in (
            "steps",
            "batch_size",
            "seq_len",
            "eval_every",
            "eval_steps",
            "steps_per_execution",
            "log_every",
            "d_model",
            "num_heads",
            "dff",
            "num_layers",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{field}` must be a positive integer, got {value!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"`precision` must be one of {list(PRECISIONS)}, got {self.precision!r}."
            )
        for field, low, allowed in (
            ("warmup_steps", 0, "an integer >= 0"),
            ("samples", 0, "an integer >= 0"),
            ("sample_tokens", 0, "an integer >= 0"),
            ("gradient_accumulation_steps", 2, "None or an integer >= 2"),
        ):
            value = getattr(self, field)
            if value is None and field == "gradient_accumulation_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{field}` must be {allowed}, got {value!r}.")
        for field, value in (("weight_decay", self.weight_decay), ("clipnorm", self.clipnorm)):
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"`{field}` must be a number >= 0, got {value!r}.")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"`d_model`={self.d_model} must be divisible by `num_heads`="
                f"{self.num_heads} (each head is d_model // num_heads wide)."
            )
        if self.rate is not None and not (
            isinstance(self.rate, (int, float)) and 0 <= self.rate < 1
        ):
            raise ValueError(f"`rate` (dropout) must be a number in [0, 1), got {self.rate!r}.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(
                f"`learning_rate` must be a positive number, got {self.learning_rate!r}."
            )
        self.eval_every = min(self.eval_every, self.steps)
        if self.steps % self.eval_every:
            raise ValueError(
                f"`steps`={self.steps} must be a multiple of `eval_every`="
                f"{self.eval_every} (validation and checkpoints happen every "
                "`eval_every` steps)."
            )
        if self.warmup_steps >= self.steps:
            self.warmup_steps = self.steps // 10
        if self.seq_len < 5 and self.model == "bert":
            raise ValueError(f"`seq_len` must be at least 5 for BERT, got {self.seq_len}.")


@dataclasses.dataclass
class RunResult:
    """What a finished run produced.

    Attributes:
        run_dir: the run directory.
        model: the trained model (the `GPTModel` or the `BERTPretrainer`).
        tokenizer: its tokenizer.
        history: per-epoch metrics of this invocation (empty if the run was already complete).
        step: the optimizer step reached.
        samples: generated texts (GPT).
        export_path: the SavedModel written, or None.

    Example:

    >>> result = train(RunConfig(preset="gpt-test", steps=20, eval_every=10))
    >>> result.run_dir, result.step, result.export_path
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
    """Trains a GPT or a BERT pre-trainer with `model.fit` as `config` says; resumes if it can.

    The run directory `config.out/config.name/` receives `config.json`, `checkpoints/` (model,
    optimizer and step every `eval_every` steps: a killed run re-run with the same settings
    continues from there), `logs/` (TensorBoard), `metrics.jsonl`, `best.keras` (lowest
    validation loss), `model.keras` (final), the BERT tokenizer's vocabulary in `tokenizer/`,
    and the SavedModel in `export/<version>/`. Under several workers only the
    chief writes.

    Args:
        config: a `RunConfig`.

    Returns:
        A `RunResult`.

    Raises:
        ValueError: bad settings, a corpus too small, or a run directory that does not match.
        TrainingDiverged: the loss became NaN; the last good checkpoint is intact.

    Example:

    >>> result = train(RunConfig(model="gpt", preset="gpt-test", steps=20, eval_every=10))
    >>> result.samples[0]
    """
    config = config.resolved()
    texts = load_corpus(config.corpus)
    run_dir = pathlib.Path(config.out) / config.name
    _check_run_dir(run_dir, config)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        strategy = get_strategy(config.strategy, devices=config.devices)
        chief = is_chief(strategy)
        replicas = strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(
                f"`batch_size`={config.batch_size} must be divisible by the {replicas} replicas "
                f"of the {type(strategy).__name__} (each replica takes batch_size / replicas)."
            )
        micro = config.gradient_accumulation_steps or 1
        if (config.batch_size // replicas) % micro:
            raise ValueError(
                f"`gradient_accumulation_steps`={micro} must divide the batch of each replica "
                f"({config.batch_size} / {replicas} replicas = {config.batch_size // replicas})."
            )
        _prepare_run_dir(run_dir, config, chief)
        keras.utils.set_random_seed(config.seed)
        tokenizer = _tokenizer(config, texts, run_dir, chief)
        train_data, val_data = _datasets(config, texts, tokenizer)
        with strategy.scope():
            model = _compiled_model(config, tokenizer.vocab_size)
            prepare_for_multi_worker(model, strategy)
            checkpoint = cb.RunCheckpoint(run_dir / "checkpoints", model, chief=chief)
            epoch = checkpoint.restore() // config.eval_every
        epochs = config.steps // config.eval_every
        history = {}
        if epoch < epochs:
            if epoch:
                logger.info("Resuming %s at step %d.", run_dir, epoch * config.eval_every)
            guard = cb.StopOnNaN()
            callbacks = [
                guard,
                cb.Throughput(config.batch_size * config.seq_len, perplexity=config.model == "gpt"),
                cb.CheckpointEveryEpoch(checkpoint),
            ]
            if chief:
                callbacks += [
                    cb.MetricsLog(run_dir / "metrics.jsonl", every=config.log_every),
                    keras.callbacks.ModelCheckpoint(
                        run_dir / "best.keras", monitor="val_loss", save_best_only=True
                    ),
                    keras.callbacks.TensorBoard(run_dir / "logs", update_freq=50),
                ]
            fit = model.fit(
                train_data.skip(epoch * config.eval_every),
                epochs=epochs,
                initial_epoch=epoch,
                steps_per_epoch=config.eval_every,
                validation_data=val_data,
                callbacks=callbacks,
                verbose=config.verbose,
                shuffle=False,
            )
            history = fit.history
            if guard.diverged_at is not None:
                last = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
                raise TrainingDiverged(
                    f"The training loss became NaN or infinite at step {guard.diverged_at}; "
                    f"training stopped and nothing was saved after it. The last good checkpoint "
                    f"is {last or 'none (it diverged before the first one)'}. Lower --lr, keep "
                    "--clipnorm, or use float32/bfloat16 instead of float16."
                )
        step = epochs * config.eval_every
        samples, export_path = [], None
        if chief:
            cb.atomic_save_model(model, run_dir / "model.keras")
            if config.model == "gpt" and config.samples:
                samples = _samples(model, tokenizer, config)
            if config.export:
                export_path = _export(model, tokenizer, run_dir / "export", config)
        return RunResult(run_dir, model, tokenizer, history, step, samples, export_path)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def load_run_model(run_dir):
    """Rebuilds a run's model from its `config.json` and newest checkpoint, and its tokenizer.

    For a run that has checkpoints but no `model.keras` yet (interrupted, or still training).

    Args:
        run_dir: str or path. A run directory written by `train`.

    Returns:
        `(model, tokenizer, step)`: the `GPTModel` or `BERTPretrainer` with the checkpoint's
        weights, its tokenizer, and the checkpoint's optimizer step.

    Example:

    >>> model, tokenizer, step = load_run_model("runs/gpt")  # doctest: +SKIP
    """
    run_dir = pathlib.Path(run_dir)
    if tf.train.latest_checkpoint(str(run_dir / "checkpoints")) is None:
        raise ValueError(
            f"the run directory {run_dir} has no model yet: no model.keras, export or "
            "checkpoint (train it first)."
        )
    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"`run_dir`={str(run_dir)!r} has no readable config.json ({error})."
        ) from error
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in saved.items() if k in fields}).resolved()
    if config.model == "gpt":
        tokenizer = ByteTokenizer()
    else:
        tokenizer = WordPieceTokenizer.load(run_dir / "tokenizer")
    model = _compiled_model(config, tokenizer.vocab_size)
    step = cb.RunCheckpoint(run_dir / "checkpoints", model).restore()
    return model, tokenizer, step


def _compiled_model(config, vocab_size):
    """The run's model, built and compiled with its optimizer (whose variables exist already, so
    a checkpoint restores into them at once). Call it inside the strategy's scope."""
    model = build_model(config.model, _model_kwargs(config), vocab_size, config.seq_len)
    model(_dummy_inputs(config))
    optimizer = build_optimizer(
        model,
        learning_rate=config.learning_rate,
        total_steps=config.steps,
        warmup_steps=config.warmup_steps,
        decay="cosine" if config.model == "gpt" else "linear",
        weight_decay=config.weight_decay,
        clipnorm=config.clipnorm,
        # nanoGPT's character-level Shakespeare uses 0.99 (few tokens per step); BERT used 0.999.
        beta_2=0.99 if config.model == "gpt" else 0.999,
        epsilon=1e-8 if config.model == "gpt" else 1e-6,
    )
    loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if config.model == "gpt"
        else None
    )
    model.compile(
        optimizer=optimizer,
        loss=loss,
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    optimizer.build(model.trainable_variables)
    accumulate_gradients(model, config.gradient_accumulation_steps or 1)
    return model


def _model_kwargs(config):
    return {
        field: getattr(config, field)
        for field in ("d_model", "num_heads", "dff", "num_layers", "rate")
        if getattr(config, field) is not None
    }


def _dummy_inputs(config):
    ids = np.zeros((1, config.seq_len), "int32")
    if config.model == "gpt":
        return ids
    return {
        "token_ids": ids,
        "segment_ids": ids,
        "padding_mask": np.ones_like(ids),
        "mask_positions": np.zeros((1, 1), "int32"),
    }


def _run_record(config):
    return {
        "version": __version__,
        **{k: v for k, v in dataclasses.asdict(config).items() if k != "devices"},
    }


def _check_run_dir(run_dir, config):
    """Refuses, before any work, a run directory holding an unreadable run, a run of another
    version or other settings, or a place where no directory can be created."""
    config_path = run_dir / "config.json"
    record = _run_record(config)
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(
            f"cannot write the run directory {run_dir}: {existing} is not a writable directory."
        )
    if config_path.exists():
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{config_path} is unreadable ({error}); choose another --name or --out."
            ) from error
        if not config.resume and tf.train.latest_checkpoint(str(run_dir / "checkpoints")):
            raise ValueError(
                f"{run_dir} already holds a run; re-run with --resume to continue it, or choose "
                "another --name or --out (nothing was overwritten)."
            )
        if saved.get("version") != __version__:
            raise ValueError(
                f"{run_dir} was written by tf_bigmodels {saved.get('version')!r}, this is "
                f"{__version__}; start a new run with another --name or --out."
            )
        changed = [
            f"{key}: {saved.get(key)!r} -> {record[key]!r}"
            for key in _FIXED_ON_RESUME
            if saved.get(key) != record[key]
        ]
        if changed:
            raise ValueError(
                f"{run_dir} holds a run with other settings ({'; '.join(changed)}); resume it "
                "with the same settings, or choose another --name or --out."
            )


def _prepare_run_dir(run_dir, config, chief):
    config_path = run_dir / "config.json"
    record = _run_record(config)
    if chief:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            temporary = config_path.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(record, indent=2), encoding="utf-8")
            os.replace(temporary, config_path)
        except OSError as error:
            raise ValueError(
                f"cannot write the run directory {run_dir}: {error.strerror}."
            ) from error


def _tokenizer(config, texts, run_dir, chief):
    if config.model == "gpt":
        return ByteTokenizer()
    directory = run_dir / "tokenizer"
    if (directory / "vocab.txt").exists():
        return WordPieceTokenizer.load(directory)
    tokenizer = WordPieceTokenizer.train(texts, config.vocab_size, verbose=config.verbose > 0)
    if chief:
        tokenizer.save(directory)
    return tokenizer


def _datasets(config, texts, tokenizer):
    if config.model == "gpt":
        train = lm_dataset(
            texts,
            tokenizer,
            config.seq_len,
            config.batch_size,
            split="train",
            seed=config.seed,
            repeat=True,
        )
        val = lm_dataset(texts, tokenizer, config.seq_len, config.batch_size, split="val")
        return train, _fixed(val, config.eval_steps)
    if len(texts) < 4:
        raise ValueError(
            f"BERT pre-training needs at least 4 documents (2 for validation), "
            f"the corpus has {len(texts)}."
        )
    cut = max(2, len(texts) // 10)
    train = bert_pretraining_dataset(
        texts[:-cut], tokenizer, config.seq_len, config.batch_size, seed=config.seed, repeat=True
    )
    val = bert_pretraining_dataset(
        texts[-cut:], tokenizer, config.seq_len, config.batch_size, seed=config.seed + 1
    )
    return train, _fixed(val, config.eval_steps)


def _fixed(dataset, steps):
    """The first `steps` batches (or all, if fewer), held in memory: every validation sees the
    same examples and masks, however often and on however many replicas it runs."""
    batches = list(dataset.take(steps))
    stacked = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked)


def _samples(model, tokenizer, config):
    """A few sampled continuations; longer than the context through a sliding window."""
    from tf_bigmodels.export import stream_text

    prompts = (["ROMEO:", ""] * config.samples)[: config.samples]
    return [
        prompt
        + "".join(
            stream_text(
                model,
                prompt,
                config.sample_tokens,
                temperature=0.8,
                top_k=40,
                seed=config.seed + index,
                tokenizer=tokenizer,
            )
        )
        for index, prompt in enumerate(prompts)
    ]


def _export(model, tokenizer, directory, config):
    from tf_bigmodels.export import export_bert, export_gpt

    if config.model == "gpt":
        # serving_default continues a prompt by half a context, sampled as the printed samples.
        return export_gpt(
            model,
            tokenizer,
            str(directory),
            max_new_tokens=model.max_length // 2,
            temperature=0.8,
            top_k=40,
        )
    return export_bert(model, tokenizer, str(directory))
