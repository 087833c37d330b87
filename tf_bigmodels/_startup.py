"""TensorFlow loaded for the command line, with its start-up lines kept off the user's screen.

TensorFlow's C++ side prints a few lines while it loads and finds its devices ("oneDNN custom
operations are on", "Could not find cuda drivers", absl's "All log messages before
absl::InitializeLog()"), straight to the process's stderr and before its log level applies, so
`TF_CPP_MIN_LOG_LEVEL` cannot hide them. One more comes later, at an error level, the first time
the process transposes an int64 tensor ("oneDNN supports DT_INT64 only on platforms with
AVX-512"), which training and generation both do; it is printed once per process, so it is
brought forward here and hidden with the rest. Every subcommand shows them only with
`--verbose` (`add_verbose_flag`).
"""

import contextlib
import os
import sys


def add_verbose_flag(parser):
    """Adds `--verbose` to a subcommand's `parser`: its value, `show_tf`, is what the command
    passes to `load_tensorflow`.

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_verbose_flag(parser)
    >>> parser.parse_args([]).show_tf, parser.parse_args(["--verbose"]).show_tf
    (False, True)
    """
    parser.add_argument(
        "--verbose",
        action="store_true",
        dest="show_tf",
        help="show TensorFlow's start-up lines (which devices it found, its CPU kernels)",
    )


def load_tensorflow(show=False):
    """Imports TensorFlow and lets it find its devices, its start-up lines hidden unless `show`.

    Args:
        show: bool. Let the lines through. Defaults to False.

    Example:

    >>> load_tensorflow()
    >>> "tensorflow" in sys.modules
    True
    """
    with contextlib.nullcontext() if show else _stderr_hidden():
        import tensorflow as tf

        tf.config.list_physical_devices()
        tf.transpose(tf.zeros([1, 2], tf.int64))  # the int64 line: once per process


@contextlib.contextmanager
def _stderr_hidden():
    """Points file descriptor 2 at /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
