"""The one way the tokenizers write their files: atomically, with the permissions of any file."""

import os
import tempfile


def write_atomically(path, data):
    """Writes `data` (str as UTF-8, or bytes) to a temporary file beside `path`, then renames it.

    An interrupted write (a full disk, a kill) leaves the previous file or the new one, never a
    truncated one. The temporary name `.<name>.tmp-<random>` is the pattern a run directory's
    clean-up of leftovers removes. `mkstemp` creates the file 0600 (private); the file then gets
    the mode the umask gives any new file (0644 under the usual umask 022), like the other
    files of a run.

    Args:
        path: str or path-like. The file to write; its directory must exist.
        data: str or bytes.

    Example:

    >>> write_atomically("vocab.txt", "[PAD]\\n")
    >>> open("vocab.txt").read()
    '[PAD]\\n'
    """
    directory, name = os.path.split(os.fspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory or ".")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _umask():
    # The umask can only be read by setting it; set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask
