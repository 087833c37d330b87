"""The layout of a run directory and of an export directory, known here and nowhere else.

A run directory (`runs/gpt/`) holds what `tf-bigmodels train` writes::

    runs/gpt/
        config.json       the settings the run was started with
        metrics.jsonl     one JSON object per logged step and per evaluation
        model.keras       the model at the last step
        best.keras        the model at its best validation loss
        tokenizer/        the learned vocabulary (SentencePiece and WordPiece runs only)
        checkpoints/      exact training state (weights, optimizer, data position)
        logs/             TensorBoard's event files
        export/<n>/       SavedModel versions, in TF Serving's layout
        litert/           the LiteRT export (model.tflite, its JSON description, tokenizer)

An export directory (`export/` above, or any directory given to `export --out`) holds numbered
version directories; the newest is the largest number. Training, export, the command line and
the server all ask this module for paths and versions, so the layout can change in one place.

This module imports neither TensorFlow nor the rest of the package: the server, which must run
where only an export exists, and the command line's argument checks both use it cheaply.
"""

import os
import pathlib
import re

CONFIG = "config.json"
METRICS = "metrics.jsonl"
MODEL = "model.keras"
BEST_MODEL = "best.keras"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
EXPORT = "export"
LITERT = "litert/model.tflite"
# The files of one checkpoint, `ckpt-<step>.index` and its data shards, as `tf.train.Checkpoint`
# writes them.
_CHECKPOINT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")


def export_versions(export_dir):
    """The numeric version directories of `export_dir`, oldest first (empty if there is none).

    TF Serving's rule: a version is a directory whose name is a positive decimal number. Other
    entries (a `.partial-*` directory an export is still writing, files) are not versions.

    Args:
        export_dir: str or path-like.

    Returns:
        list of int.

    Example:

    >>> os.makedirs("models/gpt/1"); os.makedirs("models/gpt/10"); os.makedirs("models/gpt/.partial-2")
    >>> export_versions("models/gpt"), export_versions("models/none")
    ([1, 10], [])
    """
    try:
        entries = list(os.scandir(export_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        int(entry.name)
        for entry in entries
        if entry.name.isdecimal()
        and entry.name.isascii()
        and int(entry.name) > 0
        and entry.is_dir()
    )


def version_path(export_dir, version):
    """The directory of version `version` in `export_dir` (it need not exist).

    Example:

    >>> version_path("models/gpt", 3)
    'models/gpt/3'
    """
    return os.path.join(os.fspath(export_dir), str(version))


def newest_version(export_dir):
    """The path of the newest version directory of `export_dir`, or None if there is none.

    Example:

    >>> os.makedirs("models/gpt/1"); os.makedirs("models/gpt/2")
    >>> newest_version("models/gpt"), newest_version("models/none")
    ('models/gpt/2', None)
    """
    versions = export_versions(export_dir)
    return version_path(export_dir, versions[-1]) if versions else None


class RunDirectory:
    """The paths of one run directory, and what it holds.

    Args:
        path: str or path-like. The run directory (it need not exist yet).

    Example:

    >>> run = RunDirectory("runs/gpt")
    >>> str(run.config), str(run.export_dir), run.exists()
    ('runs/gpt/config.json', 'runs/gpt/export', False)
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __repr__(self):
        return f"RunDirectory({os.fspath(self.path)!r})"

    def __fspath__(self):
        return os.fspath(self.path)

    @property
    def config(self):
        """`config.json`: the run's settings."""
        return self.path / CONFIG

    @property
    def metrics(self):
        """`metrics.jsonl`: the run's log."""
        return self.path / METRICS

    @property
    def model(self):
        """`model.keras`: the model at the last step."""
        return self.path / MODEL

    @property
    def best_model(self):
        """`best.keras`: the model at its best validation loss."""
        return self.path / BEST_MODEL

    @property
    def tokenizer(self):
        """`tokenizer/`: the learned vocabulary, for runs with a learned tokenizer."""
        return self.path / TOKENIZER

    @property
    def checkpoints(self):
        """`checkpoints/`: the exact training state."""
        return self.path / CHECKPOINTS

    @property
    def logs(self):
        """`logs/`: TensorBoard's event files."""
        return self.path / LOGS

    @property
    def export_dir(self):
        """`export/`: SavedModel versions."""
        return self.path / EXPORT

    @property
    def litert(self):
        """`litert/model.tflite`: the LiteRT export (its description and tokenizer beside it)."""
        return self.path / LITERT

    def exists(self):
        """Whether a run was started here (its `config.json` exists)."""
        return self.config.is_file()

    def checkpoint_steps(self):
        """The steps of the checkpoints in `checkpoints/`, newest first (complete or not).

        Example:

        >>> os.makedirs("runs/gpt/checkpoints")
        >>> for name in ("ckpt-250.index", "ckpt-500.index", "ckpt-500.data-00000-of-00001"):
        ...     open(f"runs/gpt/checkpoints/{name}", "w").close()
        >>> RunDirectory("runs/gpt").checkpoint_steps()
        [500, 250]
        """
        try:
            names = os.listdir(self.checkpoints)
        except (FileNotFoundError, NotADirectoryError):
            return []
        matches = (_CHECKPOINT_FILE.match(name) for name in names)
        return sorted({int(match.group(1)) for match in matches if match}, reverse=True)

    def has_trained(self):
        """Whether anything trained is here: a checkpoint or the final model.

        A run directory with settings but neither (a run that failed before its first
        checkpoint) holds nothing a new run would lose.

        Example:

        >>> RunDirectory("runs/none").has_trained()
        False
        """
        return bool(self.checkpoint_steps()) or self.model.is_file()

    def newest_export(self):
        """The path of the newest exported version (str), or None.

        Example:

        >>> os.makedirs("runs/gpt/export/1")
        >>> RunDirectory("runs/gpt").newest_export()
        'runs/gpt/export/1'
        """
        return newest_version(self.export_dir)

    @classmethod
    def containing(cls, path):
        """The run directory that `path` is, or lies directly in (a `.keras` file, `export/`,
        `export/<n>`), or None.

        Example:

        >>> os.makedirs("runs/gpt/export/3"); open("runs/gpt/config.json", "w").close()
        >>> RunDirectory.containing("runs/gpt/export/3"), RunDirectory.containing("elsewhere")
        (RunDirectory('runs/gpt'), None)
        """
        path = pathlib.Path(path)
        for candidate in (path, path.parent, path.parent.parent):
            if (candidate / CONFIG).is_file():
                return cls(candidate)
        return None
