"""Files of a run directory: atomic writes, one writer at a time, leftovers of a killed run.

Every file is written next to its destination under a temporary name and renamed into place, so
a killed process leaves the previous file or the new one, never a half-written one. Temporary
files are created with the process's umask (as any other file), so the results are as readable
as the user's other files. A run directory (or an export directory) takes one writer at a time:
an OS-level lock (`fcntl.flock` on the directory) that the kernel releases when its holder dies.
"""

import contextlib
import fcntl
import glob
import logging
import os
import shutil

from tf_bigmodels import run_directory

logger = logging.getLogger("tf_bigmodels")

# What a killed run can leave behind: partial exports, TensorFlow's checkpoint staging
# directories, temporary model, tokenizer and text files of this module.
_LEFTOVERS = (
    f"{run_directory.EXPORT}/.partial-*",
    f"{run_directory.CHECKPOINTS}/*_temp",
    f"{run_directory.CHECKPOINTS}/*_temp_*",
    ".*.tmp-*",
    "tmp*.keras",
)


class DirectoryInUse(RuntimeError):
    """Another process holds the lock of a run or export directory.

    Example:

    >>> import subprocess, sys
    >>> holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, time; "
    ...     "h = os.open('.', os.O_RDONLY); fcntl.flock(h, fcntl.LOCK_EX); print(flush=True); "
    ...     "time.sleep(60)"], stdout=subprocess.PIPE)
    >>> _ = holder.stdout.readline()  # it holds the lock of the working directory
    >>> try:
    ...     with lock(".", "train"):
    ...         pass
    ... except DirectoryInUse as error:
    ...     print(str(error).split(":")[0])
    `train` cannot use .
    >>> holder.kill(); _ = holder.wait()
    """


def temporary_path(path):
    """A name beside `path` for a temporary file, unique to this process; it keeps the suffix
    (Keras insists on `.keras`).

    Example:

    >>> temporary_path("runs/gpt/model.keras").startswith("runs/gpt/.model.keras.tmp-")
    True
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    suffix = os.path.splitext(name)[1]
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write `path` to; renames it into place if the block succeeds.

    If the block raises, the temporary file is removed and `path` is unchanged.

    Example:

    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with atomic_path(target) as temporary:
    ...     _ = open(temporary, "w").write("done")
    >>> open(target).read()
    'done'
    """
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically.

    Example:

    >>> os.makedirs("notes")
    >>> write_text("notes/todo.txt", "train\\n")
    >>> open("notes/todo.txt").read(), os.listdir("notes")
    ('train\\n', ['todo.txt'])
    """
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


@contextlib.contextmanager
def lock(directory, command):
    """Holds the lock of `directory` (created if missing) for the duration of the block.

    The lock is `flock` on the directory itself, so no file is added to it; the kernel drops it
    when the holder exits or is killed. On Linux the refusal names the holder's PID (read from
    `/proc/locks`).

    Args:
        directory: path. A run directory, or an export directory.
        command: str. What takes the lock ("train", "export"), for the refusal's message.

    Raises:
        DirectoryInUse: another process holds it.

    Example:

    >>> import tempfile
    >>> with lock(tempfile.mkdtemp(), "train"):
    ...     pass
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(os.fstat(handle))
            raise DirectoryInUse(
                f"`{command}` cannot use {directory}: another process is writing it "
                f"({f'PID {holder}' if holder else 'its PID is unknown'}); wait until it ends, "
                "or choose another directory."
            ) from None
        yield
    finally:
        os.close(handle)  # releases the lock


def _lock_holder(stat):
    """The PID holding an flock on the file `stat` describes, from Linux's /proc/locks."""
    try:
        with open("/proc/locks", encoding="ascii") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if (
            len(fields) >= 6
            and fields[1] == "FLOCK"
            and fields[5].split(":")[-1] == str(stat.st_ino)
        ):
            return fields[4]
    return None


def remove_leftovers(run_dir):
    """Removes what a killed run left in `run_dir` (hold its lock); returns the paths removed.

    Example:

    >>> os.makedirs("runs/gpt")
    >>> open(temporary_path("runs/gpt/model.keras"), "w").close()  # a killed save's file
    >>> remove_leftovers("runs/gpt") == [temporary_path("runs/gpt/model.keras")], os.listdir("runs/gpt")
    (True, [])
    """
    removed = []
    for pattern in _LEFTOVERS:
        for path in glob.glob(os.path.join(glob.escape(os.fspath(run_dir)), pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
    if removed:
        logger.info("Removed what an interrupted run left: %s", ", ".join(sorted(removed)))
    return removed
