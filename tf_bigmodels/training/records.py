"""What a run directory records about its run, read and compared without TensorFlow.

`config.json` holds the settings a run was started with, the package version that wrote it and
a fingerprint of its corpus. A re-run is checked against it here, before TensorFlow loads, so a
command that cannot continue the stored run fails at once and changes nothing.
"""

import dataclasses
import hashlib
import json
import os

from tf_bigmodels._version import __version__
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.training.config import RERUN_MAY_CHANGE, RunConfig

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
# The record's key for the corpus fingerprint (see `corpus_fingerprint`).
FINGERPRINT = "corpus_sha256"


def read_config(run_dir):
    """The settings stored in a run directory (a dict), or None if it holds none.

    Args:
        run_dir: str or path-like.

    Raises:
        ValueError: the file is there but is not a JSON object.

    Example:

    >>> read_config("runs/none") is None
    True
    """
    path = RunDirectory(run_dir).config
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


def run_config(run_dir):
    """The resolved `RunConfig` a run directory stores.

    Args:
        run_dir: str or path-like. A run directory written by `train`.

    Raises:
        ValueError: no readable settings, or ones that are not a run's.

    Example:

    >>> import os
    >>> os.makedirs("runs/tiny")
    >>> _ = open("runs/tiny/config.json", "w").write('{"model": "gpt", "preset": "gpt-test"}')
    >>> run_config("runs/tiny").steps
    20
    """
    saved = read_config(run_dir)
    if saved is None:
        raise ValueError(f"`run_dir`={str(run_dir)!r} holds no run (no settings).")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        return RunConfig(**{k: v for k, v in saved.items() if k in fields}).resolved()
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{RunDirectory(run_dir).config} does not hold a run's settings ({error})"
        ) from None


def run_record(config, fingerprint=None):
    """What `config.json` holds for the resolved `config`: its settings and the version.

    Example:

    >>> run_record(RunConfig(preset="gpt-test").resolved())["steps"]
    20
    """
    record = {"version": __version__}
    record.update((k, v) for k, v in dataclasses.asdict(config).items() if k != "devices")
    if fingerprint is not None:
        record[FINGERPRINT] = fingerprint
    return record


def corpus_fingerprint(texts):
    """A SHA-256 of the run's documents: a corpus file whose text changed under the same path
    gives another fingerprint.

    Example:

    >>> corpus_fingerprint(["a", "b"]) == corpus_fingerprint(["a", "c"])
    False
    """
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def settled(config):
    """`config` resolved as the run it names will run it: settings left at None take the
    stored run's values (a re-run of a run that trained something), else the `init_from`
    run's shape and tokenizer.

    Example:

    >>> settled(RunConfig(preset="gpt-test", out="nowhere")).steps
    20
    """
    resolved = config.resolved()
    run = RunDirectory(os.path.join(resolved.out, resolved.name))
    # A run that trained nothing (a command that failed) is replaced, and decides nothing.
    stored = read_config(run.path) if run.has_trained() else None
    config = _with_defaults(config, stored, dataclasses.fields(RunConfig))
    return _with_source_defaults(config).resolved()


def _with_defaults(config, stored, fields):
    """`config` with each None setting among `fields` taken from `stored` (a dict or None)."""
    if stored is None:
        return config
    names = [field if isinstance(field, str) else field.name for field in fields]
    unset = {
        name: stored[name]
        for name in names
        if getattr(config, name) is None and stored.get(name) is not None
    }
    return dataclasses.replace(config, **unset)


def _with_source_defaults(config):
    """`config` with the `_SOURCE_SETTINGS` left at None taken from the `init_from` run (or the
    run directory that holds an `init_from` `.keras` file)."""
    if config.init_from is None:
        return config
    source = RunDirectory.containing(config.init_from)
    stored = read_config(source.path) if source else None
    if stored is None or stored.get("model") != config.model:
        return config
    settings = list(_SOURCE_SETTINGS)
    if config.tokenizer not in (None, stored.get("tokenizer")):
        settings.remove("vocab_size")  # another tokenizer: refused by the task, in its words
    return _with_defaults(config, stored, settings)


def check_run_dir(run_dir, config, fingerprint=None):
    """Refuses, before anything is written, a run directory that `config` cannot (continue to)
    train: not writable, an unreadable run, another version's, other settings or corpus text
    than a re-run may change, or more steps. A run that never reached a checkpoint or a model
    (a command that failed after writing its settings) has nothing to lose: it is replaced.

    Args:
        run_dir: a `RunDirectory`.
        config: the resolved `RunConfig` of the run (see `settled`).
        fingerprint: str or None. The `corpus_fingerprint` of its documents, when known.

    Returns:
        bool: whether a run that failed before training is replaced (its files are then
        removed by the trainer).

    Example:

    >>> check_run_dir(RunDirectory("runs/new"), RunConfig(preset="gpt-test").resolved())
    False
    """
    _check_writable(run_dir)
    saved = read_config(run_dir.path)
    steps = run_dir.checkpoint_steps()
    if saved is None:
        if steps:
            raise ValueError(
                f"{run_dir.path} holds checkpoints but no settings; choose another --name or --out."
            )
        return False
    if not run_dir.has_trained():
        return saved.get("version") != __version__ or bool(_changes(saved, config, fingerprint))
    if not config.resume:
        raise ValueError(
            f"{run_dir.path} already holds a run; re-run with --resume to continue it, or "
            "choose another --name or --out (nothing was overwritten)."
        )
    if saved.get("version") != __version__:
        raise ValueError(
            f"{run_dir.path} was written by tf_bigmodels {saved.get('version')!r}, this is "
            f"{__version__}; start a new run with another --name or --out."
        )
    _check_same_settings(run_dir, saved, config, fingerprint)
    if not steps:
        raise ValueError(
            f"{run_dir.path} holds a trained model but its checkpoints are gone, so the run "
            "cannot continue (it would train again from step 0). Remove the run directory to "
            "train it anew, or choose another --name or --out."
        )
    reached = steps[0]
    if config.steps < reached:
        raise ValueError(
            f"`steps` must be at least the {reached} steps {run_dir.path} has reached (a run "
            f"never goes back), got {config.steps}."
        )
    if (config.steps - reached) % config.eval_every:
        raise ValueError(
            f"`eval_every` must divide the {config.steps - reached} steps left from step "
            f"{reached} to {config.steps}, got {config.eval_every}."
        )
    return False


def _check_writable(run_dir):
    existing = run_dir.path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(
            f"cannot write the run directory {run_dir.path}: {existing} is not a writable "
            "directory."
        )


def _changes(saved, config, fingerprint):
    """The settings in which `config` differs from the stored run, as 'name: old -> new'."""
    record = run_record(config)
    # A setting added after the run was written is read as its default.
    defaults = {field.name: field.metadata.get("default") for field in RunConfig.settings()}
    changed = [
        f"{key}: {saved.get(key, defaults.get(key))!r} -> {record[key]!r}"
        for key in record
        if key not in (*RERUN_MAY_CHANGE, "out", "name")
        and saved.get(key, defaults.get(key)) != record[key]
    ]
    stored = saved.get(FINGERPRINT)
    if fingerprint is not None and stored is not None and stored != fingerprint:
        changed.append("corpus text: changed")
    return changed


def _check_same_settings(run_dir, saved, config, fingerprint):
    changed = _changes(saved, config, None)
    if changed:
        raise ValueError(
            f"{run_dir.path} holds a run with other settings ({'; '.join(changed)}); re-run it "
            "with the same settings, or choose another --name or --out for a new run."
        )
    stored = saved.get(FINGERPRINT)
    if fingerprint is not None and stored is not None and stored != fingerprint:
        raise ValueError(
            f"{run_dir.path} was trained on other text: the corpus {config.corpus!r} has "
            "changed since the run started (its content's fingerprint differs), and resuming "
            "would train on the new text silently. Restore the original text, or choose "
            "another --name or --out for a run on the new text."
        )
