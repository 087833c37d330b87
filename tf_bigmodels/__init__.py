"""tf_bigmodels: the Transformer layer, GPT and BERT as correct, tested Keras 3 code.

`import tf_bigmodels` is cheap: it loads no TensorFlow. Its parts load on first use
(`tfb.layers`, `tfb.models`, `tfb.training`, ...), and the first use of any part that holds
Keras objects registers all of them with Keras: every layer and model, and the optimizer and
learning-rate schedule that a run's `model.keras` and `best.keras` store. From then on
``keras.saving.load_model`` reads any `.keras` file the package writes with no
``custom_objects``. To load a file before using any part, call `register_keras_objects()`.

Example:

>>> import tf_bigmodels as tfb
>>> layer = tfb.layers.TransformerLayer(d_model=64, num_heads=4, dff=256, causal=True)
"""

import importlib
import os

from tf_bigmodels._version import __version__

# TensorFlow's C++ info and warning lines are noise for this package's users; a value the user
# has set is kept. (The lines TensorFlow prints while it loads, before its logging starts, pass
# anyway: the command line hides them itself, see `tf_bigmodels.cli`.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The subpackages and modules reached as attributes (`tfb.models`), loaded on first use.
_PARTS = (
    "convert",
    "data",
    "export",
    "layers",
    "litert",
    "models",
    "plot",
    "run_directory",
    "serving",
    "tokenizers",
    "training",
)
# The parts that hold Keras objects; using one registers them all.
_KERAS_PARTS = ("convert", "export", "layers", "models", "plot", "training")

__all__ = ["__version__", "register_keras_objects", *_PARTS]


def register_keras_objects():
    """Registers every Keras object of the package, so `.keras` files load without custom_objects.

    That is: the layers and models, and the optimizer and learning-rate schedule a run's
    `model.keras` stores. Using `tfb.layers`, `tfb.models`, `tfb.training` (or another part that
    holds Keras objects) calls it.

    Example:

    >>> import keras
    >>> register_keras_objects()
    >>> keras.saving.get_registered_object("tf_bigmodels>GPTModel").__name__
    'GPTModel'
    """
    for module in ("layers", "models", "training.optimizer", "training.schedules"):
        importlib.import_module(f"{__name__}.{module}")


def __getattr__(name):
    if name not in _PARTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _KERAS_PARTS:
        register_keras_objects()
    module = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module


def __dir__():
    return sorted(set(globals()) | set(__all__))
