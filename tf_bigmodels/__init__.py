"""tf_bigmodels: the Transformer layer, GPT and BERT as correct, tested Keras 3 code.

Importing the package registers every layer, model, optimizer and schedule with Keras, so any
`.keras` file the package writes (`model.keras` and `best.keras` of a run included) loads with
``keras.saving.load_model`` and no ``custom_objects``.

Example:

>>> import tf_bigmodels as tfb
>>> layer = tfb.layers.TransformerLayer(d_model=64, num_heads=4, dff=256, causal=True)
"""

__version__ = "0.1.0"

import os
import sys

# TensorFlow's C++ info and warning logs after start-up are noise for this package's users (the
# few notices printed before TensorFlow initialises its logging cannot be silenced this way);
# a value the user has set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _starting_the_command():
    """Whether this import is the start of `tf-bigmodels` / `python -m tf_bigmodels`.

    The command parses and checks its arguments before it loads TensorFlow (so `--help` and a
    mistyped flag answer at once), then calls `load_everything` itself. While `python -m`
    locates the package, `sys.argv` is `["-m", ...]`.
    """
    if sys.argv[:1] == ["-m"]:
        started = getattr(sys, "orig_argv", [])
        return "-m" in started and started[started.index("-m") + 1 :][:1] == [__name__]
    return os.path.basename(sys.argv[0] if sys.argv else "") == "tf-bigmodels"


def load_everything():
    """Imports the layers, models and training modules (registering them with Keras).

    `import tf_bigmodels` calls it, except at the start of the command line, which calls it
    once its arguments are checked.

    Example:

    >>> load_everything()
    """
    from tf_bigmodels import layers, models, training  # noqa: F401

    # The optimizer and the schedule that `model.keras` refers to.
    training.AdamW, training.WarmupDecay  # noqa: B018


if not _starting_the_command():
    load_everything()
