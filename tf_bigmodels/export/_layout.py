"""TF Serving layout: `export_dir/<version>/`, written to a temporary directory and renamed."""

import os
import shutil
import uuid

import tensorflow as tf

from tf_bigmodels import _checks
from tf_bigmodels.run_directory import export_versions


def write_version(export_dir, version, write):
    """Calls `write(path)` on a fresh temporary directory, then renames it to `export_dir/<version>`.

    The temporary directory sits inside `export_dir` (same file system, so the rename is atomic)
    and its name starts with a dot, which TF Serving ignores. If `write` raises, the temporary
    directory is removed and no version directory appears; existing versions are never touched.

    Args:
        export_dir: str or path-like. Created if missing.
        version: positive int, or None for one more than the largest numeric version present (1
            if none).
        write: callable taking the temporary path.

    Returns:
        The path of the new version directory (str).

    Raises:
        OSError: the SavedModel could not be written (a full disk, no permission), naming
            `export_dir`; nothing is left behind.

    Example:

    >>> write = lambda path: open(os.path.join(path, "saved_model.pb"), "wb").close()
    >>> write_version("models/gpt", None, write), write_version("models/gpt", None, write)
    ('models/gpt/1', 'models/gpt/2')
    """
    export_dir = os.fspath(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    # TF Serving's version directories are positive numbers.
    version = _checks.integer("version", version, low=1, none_ok=True)
    if version is None:
        version = 1 + max(export_versions(export_dir), default=0)
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise ValueError(
            f"`version` must be a new version ({final} already exists and an export never "
            f"overwrites one; pass None for the next), got {version}."
        )
    # Not `mkdtemp`: its 0700 would make the export unreadable to a server running as another
    # user; `mkdir` applies the umask as for any other directory.
    temporary = os.path.join(export_dir, f".partial-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(temporary)
        write(temporary)
        os.rename(temporary, final)
    except (OSError, tf.errors.OpError) as error:
        shutil.rmtree(temporary, ignore_errors=True)
        message = error.message if isinstance(error, tf.errors.OpError) else error.strerror
        raise OSError(
            f"cannot write the SavedModel under {export_dir}: "
            f"{' '.join(str(message or error).split())}"
        ) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final
