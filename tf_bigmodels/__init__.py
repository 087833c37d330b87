"""tf_bigmodels: the Transformer layer, GPT and BERT as correct, tested Keras 3 code.

Importing the package registers every layer and model with Keras, so a saved ``.keras`` file
loads with ``keras.saving.load_model`` and no ``custom_objects``.

Example:

>>> import tf_bigmodels as tfb
>>> layer = tfb.layers.TransformerLayer(d_model=64, num_heads=4, dff=256, causal=True)
"""

__version__ = "0.1.0"

import os

# TensorFlow's C++ info and warning logs after start-up are noise for this package's users (the
# few notices printed before TensorFlow initialises its logging cannot be silenced this way);
# a value the user has set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_bigmodels import layers, models  # noqa: E402,F401  (registers serializables)
