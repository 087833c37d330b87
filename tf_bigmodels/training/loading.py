"""Models and tokenizers read back: a run's own, and the ones a new run starts from.

- `load_run_model`, `load_run_tokenizer`: what a run directory holds (its newest checkpoint,
  the tokenizer it recorded).
- `source_model`, `source_tokenizer`: what `init_from` names (a run directory, a `.keras` file
  or a keras-hub preset directory), checked against the run that starts from it.
- `run_generator`, `export_source`: a run or a model file, read for `tf-bigmodels generate`
  and `tf-bigmodels export`.

Tasks (`tf_bigmodels.training.tasks`) build models and tokenizers; this module only finds and
reads them, so the tasks never import it.
"""

import contextlib
import logging
import pathlib
import zipfile

import keras

from tf_bigmodels._version import __version__
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training import storage
from tf_bigmodels.training.callbacks import RunCheckpoint
from tf_bigmodels.training.config import TOKENIZERS
from tf_bigmodels.training.records import read_config, run_config
from tf_bigmodels.training.tasks import task_class_for, task_for, tokenizer_class

logger = logging.getLogger("tf_bigmodels")


def load_run_model(run_dir):
    """Rebuilds a run's model from its settings and newest checkpoint, and its tokenizer.

    For a run that has checkpoints but no final model yet (interrupted, or still training).
    The tokenizer is the one the run recorded (a learned one is read from the run directory).

    Args:
        run_dir: str or path-like. A run directory written by `train`.

    Returns:
        `(model, tokenizer, step)`: the `GPTModel` or `BERTPretrainer` with the checkpoint's
        weights, its tokenizer, and the checkpoint's optimizer step.

    Raises:
        ValueError: the run has no checkpoint yet.

    Example:

    >>> from tf_bigmodels.training import RunConfig, train
    >>> _ = train(RunConfig(preset="gpt-test", steps=2, samples=0, export=False, verbose=0))
    >>> model, tokenizer, step = load_run_model("runs/gpt")
    >>> type(model).__name__, step
    ('GPTModel', 2)
    """
    run = RunDirectory(run_dir)
    config = run_config(run_dir)
    if not run.checkpoint_steps():
        raise ValueError(
            f"the run directory {run.path} has no model yet: no final model, export or "
            "checkpoint (train it first)."
        )
    task = task_for(config)
    tokenizer = task.load_tokenizer(run_dir)
    source = source_model(task) if config.init_from is not None else None
    model = task.compiled_model(tokenizer.vocab_size, source)
    step = RunCheckpoint(run.checkpoints, model).restore()
    return model, tokenizer, step


def load_run_tokenizer(run_dir):
    """The tokenizer a run directory recorded (its settings name it).

    Args:
        run_dir: str or path-like. A run directory written by `train`.

    Example:

    >>> import os
    >>> os.makedirs("runs/tiny")
    >>> _ = open("runs/tiny/config.json", "w").write('{"model": "gpt", "preset": "gpt-test"}')
    >>> load_run_tokenizer("runs/tiny").vocab_size
    258
    """
    return task_for(run_config(run_dir)).load_tokenizer(run_dir)


def source_model(task):
    """The trained model `task.config.init_from` names, with the step it reached (logged).

    A run directory gives its final model, else its newest checkpoint; a `.keras` file its
    model; any other directory is read as a keras-hub preset (`task.keras_hub_model`).

    Args:
        task: the `Task` of the run that starts from it.

    Raises:
        ValueError: `init_from` is none of these, or not a readable `.keras` file.

    Example:

    >>> from tf_bigmodels.training import RunConfig, task_for
    >>> _ = open("garbage.keras", "w").write("not a model")
    >>> source_model(task_for(RunConfig(preset="gpt-test", init_from="garbage.keras").resolved()))
    Traceback (most recent call last):
    ValueError: `init_from`='garbage.keras' is not a readable .keras file (a .keras file is a zip archive that Keras wrote; this is not one).
    """
    name = task.config.init_from
    source = pathlib.Path(name)
    run = RunDirectory(source)
    if run.exists() and run.has_trained():
        if run.model.is_file():
            model = _load_keras(run.model, name)
            step = run.checkpoint_steps()[:1] or [int(model.optimizer.iterations)]
            logger.info("Starting from %s (its model at step %d).", name, step[0])
            return model
        model, _, step = load_run_model(source)
        logger.info("Starting from %s (its checkpoint of step %d).", name, step)
        return model
    if source.is_file() and source.suffix == ".keras":
        model = _load_keras(source, name)
        optimizer = getattr(model, "optimizer", None)
        step = f"step {int(optimizer.iterations)}" if optimizer is not None else "untrained"
        logger.info("Starting from %s (%s).", name, step)
        return model
    if source.is_dir():  # a keras-hub preset also holds a config.json, but nothing trained
        model = task.keras_hub_model(source)
        logger.info("Starting from the keras-hub preset %s.", name)
        return model
    raise ValueError(
        "`init_from` must be a run directory (with a model or checkpoints), a .keras "
        f"file or a keras-hub preset directory, got {name!r}."
    )


def source_tokenizer(task):
    """The tokenizer of `task.config.init_from`: the one its run recorded (a `.keras` file's
    run is the directory that holds it); a `.keras` file outside a run directory has the byte
    tokenizer, if the run uses it; a keras-hub preset its own (`task.keras_hub_tokenizer`).

    Args:
        task: the `Task` of the run that starts from it.

    Raises:
        ValueError: the source's tokenizer is not the run's `tokenizer`.

    Example:

    >>> from tf_bigmodels.training import RunConfig, task_for
    >>> config = RunConfig(preset="gpt-test", tokenizer="sentencepiece", vocab_size=300,
    ...                    init_from="elsewhere.keras")
    >>> source_tokenizer(task_for(config.resolved()))
    Traceback (most recent call last):
    ValueError: `tokenizer` must be the tokenizer of `init_from`='elsewhere.keras' (unknown: a .keras file outside a run directory has none saved), got 'sentencepiece'.
    """
    config = task.config
    source = pathlib.Path(config.init_from)
    if source.is_dir() and not RunDirectory(source).has_trained():  # a keras-hub preset
        return task.keras_hub_tokenizer(source)
    run = RunDirectory.containing(source)
    if run is not None:
        stored = run_config(run.path)
        if stored.model != config.model:
            raise ValueError(
                f"`init_from`={config.init_from!r} is a {stored.model!r} run; this run "
                f"trains a {config.model!r} model."
            )
        name = stored.tokenizer
        if name == config.tokenizer:
            return task_for(stored).load_tokenizer(run.path)
    else:
        name = None if TOKENIZERS[config.tokenizer].learned else config.tokenizer
        if name is not None:
            return tokenizer_class(TOKENIZERS[name])()
    raise ValueError(
        f"`tokenizer` must be the tokenizer of `init_from`={config.init_from!r} "
        f"({name or 'unknown: a .keras file outside a run directory has none saved'}), "
        f"got {config.tokenizer!r}."
    )


def _load_keras(path, source):
    """The model in the `.keras` file `path`; a file that is not one is named as such."""
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise ValueError(
            f"`init_from`={source!r} is not a readable .keras file (a .keras file is a zip "
            "archive that Keras wrote; this is not one)."
        )
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 (Keras raises many types for a bad file)
        raise ValueError(
            f"`init_from`={source!r} is not a readable .keras file (a zip archive that Keras "
            f"wrote): {' '.join(str(error).split())}"
        ) from None


def run_generator(source, *, weights=None):
    """What `tf_bigmodels.export.stream_text` generates from, for any source `tf-bigmodels
    generate` takes: a run directory (its newest SavedModel, else its final model, else its
    newest checkpoint), a `.keras` file (with its run's tokenizer when it lies in one), a
    SavedModel or an export directory.

    Args:
        source: str or path-like.
        weights: None, "float32", "bfloat16" or "int8", as in `load_generator`.

    Raises:
        FileNotFoundError: `source` does not exist.
        ValueError: a run that is not a GPT's, or a model file that cannot be read (naming the
            package version that wrote the run when it is not this one).

    Example:

    >>> from tf_bigmodels.training import RunConfig, train
    >>> _ = train(RunConfig(preset="gpt-test", steps=2, samples=0, export=False, verbose=0))
    >>> generator, tokenizer = run_generator("runs/gpt")
    >>> type(generator).__name__, tokenizer.vocab_size
    ('GPTModel', 258)
    """
    from tf_bigmodels.export import load_generator

    if not pathlib.Path(source).exists():
        raise FileNotFoundError(2, "No such file or directory", str(source))
    run = RunDirectory.containing(source)
    if run is None:
        with reading(source):
            return load_generator(source, weights=weights)
    kind = run_config(run.path).model
    if kind != "gpt":
        raise ValueError(
            f"{run.path} is a {kind!r} run; generate continues text with a GPT run "
            "(tf-bigmodels train gpt)."
        )
    tokenizer = load_run_tokenizer(run.path)
    if run.newest_export() is None and not run.model.is_file():
        model, tokenizer, step = load_run_model(run.path)
        logger.info("Using the checkpoint of step %d.", step)
        return load_generator(model, tokenizer, weights=weights)
    with reading(source):
        return load_generator(source, tokenizer, weights=weights)


@contextlib.contextmanager
def reading(path):
    """Turns a model file that cannot be read into a one-line ValueError naming it; when the
    run that wrote it has another package version, the message says so.

    Example:

    >>> with reading("broken.keras"):
    ...     raise OSError("bad marshal data")
    Traceback (most recent call last):
    ValueError: cannot load broken.keras: bad marshal data
    """
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001 (Keras and TensorFlow raise many types here)
        hint = ""
        run = RunDirectory.containing(path)
        version = (read_config(run.path) or {}).get("version") if run else __version__
        if version != __version__:
            hint = (
                f" (its run directory was written by tf_bigmodels {version!r}, this is "
                f"{__version__}: retrain with this version or load it with that one)"
            )
        raise ValueError(f"cannot load {path}: {' '.join(str(error).split())}{hint}") from None


def export_source(source, out=None, *, tokenizer=None, format="savedmodel", **options):
    """Exports the model of a run directory or a `.keras` file; returns the path written.

    `format="savedmodel"` writes a SavedModel version (TF Serving's layout) under `out`;
    `format="litert"` writes a `.tflite` file (`out`, or the run's `litert/model.tflite`) with its
    description and tokenizer beside it, and takes only the `weights` option.

    What `tf-bigmodels export` does: the model's task (`task_class_for`) writes it, with the
    tokenizer the run recorded (or the one saved in `tokenizer`, or a GPT's byte tokenizer),
    holding the lock of the run directory (or of `out`, outside it).

    Args:
        source: str or path-like. A run directory or a `.keras` file.
        out: str, path-like or None. The export directory; None is the run's.
        tokenizer: str, path-like or None. A saved tokenizer's directory.
        format: "savedmodel" or "litert". Defaults to "savedmodel".
        **options: the task's export options (`Task.export`); others are refused.

    Example:

    >>> from tf_bigmodels.training import RunConfig, train
    >>> _ = train(RunConfig(preset="gpt-test", steps=2, samples=0, export=False, verbose=0))
    >>> export_source("runs/gpt", jit_compile=False)
    'runs/gpt/export/1'
    >>> export_source("runs/gpt", top_k=5, weights="int4")
    Traceback (most recent call last):
    ValueError: `weights` must be one of ['float32', 'bfloat16', 'int8'], got 'int4'.
    """
    from tf_bigmodels import _checks, register_keras_objects

    format = _checks.one_of("format", format, ("savedmodel", "litert"))
    if format == "litert" and set(options) - {"weights"}:
        raise ValueError(
            f"`{sorted(set(options) - {'weights'})[0]}` must not be given with format='litert' "
            "(a LiteRT export takes only `weights`; decoding settings are the runner's)."
        )
    source = pathlib.Path(source)
    run = RunDirectory(source) if source.is_dir() else RunDirectory(source.parent)
    model_path = run.model if source.is_dir() else source
    if not model_path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(model_path))
    if out is not None:
        out = pathlib.Path(out)
    else:
        out = run.export_dir if format == "savedmodel" else run.litert
    register_keras_objects()
    with reading(model_path):
        model = keras.saving.load_model(model_path)
    task = task_class_for(model)
    tokenizer = tokenizer_for(run, task, tokenizer)
    # One writer per run directory (a training run exports into it too), else per `out`.
    inside_run = run.exists() and out.resolve().is_relative_to(run.path.resolve())
    outside = out if format == "savedmodel" else out.parent
    with storage.lock(run.path if inside_run else outside, "export"):
        if format == "litert":
            from tf_bigmodels.litert import export_litert

            return export_litert(model, tokenizer, out, **options)
        return task.export(model, tokenizer, out, **options)


def tokenizer_for(run, task, directory=None):
    """The tokenizer of a model in the run directory `run`: the one saved in `directory` if
    given, else the one the run recorded (a run of the model's kind), else one saved in its
    tokenizer directory, else a GPT's byte tokenizer.

    Args:
        run: a `RunDirectory` (it need not hold a run: a `.keras` file's directory).
        task: the `Task` class of the model.
        directory: str, path-like or None. A saved tokenizer's directory.

    Raises:
        ValueError: a BERT model with no saved tokenizer to be found.

    Example:

    >>> from tf_bigmodels.training.tasks import BERTTask, GPTTask
    >>> type(tokenizer_for(RunDirectory("models"), GPTTask)).__name__
    'ByteTokenizer'
    >>> tokenizer_for(RunDirectory("models"), BERTTask)
    Traceback (most recent call last):
    ValueError: `tokenizer` must name the saved tokenizer of a bert model outside a run directory, got None.
    """
    from tf_bigmodels.export.streaming import load_saved_tokenizer
    from tf_bigmodels.tokenizers import ByteTokenizer

    if directory is not None:
        return load_saved_tokenizer(directory)
    if (read_config(run.path) or {}).get("model") == task.kind:  # a run of this model
        return load_run_tokenizer(run.path)
    if run.tokenizer.is_dir():
        return load_saved_tokenizer(run.tokenizer)
    if task.kind == "gpt":
        return ByteTokenizer()
    raise ValueError(
        f"`tokenizer` must name the saved tokenizer of a {task.kind} model outside a run "
        "directory, got None."
    )
