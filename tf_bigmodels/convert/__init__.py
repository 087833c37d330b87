"""keras-hub weights in our models: GPT-2 and BERT backbones, and BERT's masked-LM head.

Nothing else in the package imports this module (it is the only one that needs keras-hub models),
and it imports `models`, never the reverse: the models stay importable and testable without
keras-hub's model code. `gpt_from_keras_hub_preset(dir)` and `bert_from_keras_hub_preset(dir)`
load a keras-hub preset directory already on disk.

Example:

>>> import keras_hub
>>> from tf_bigmodels.convert import gpt_from_keras_hub
>>> backbone = keras_hub.models.GPT2Backbone(
...     vocabulary_size=300, num_layers=2, num_heads=4, hidden_dim=64,
...     intermediate_dim=128, max_sequence_length=32)
>>> model = gpt_from_keras_hub(backbone)
"""

from tf_bigmodels.convert.keras_hub import (
    bert_from_keras_hub,
    bert_from_keras_hub_preset,
    bert_pretrainer_from_keras_hub,
    gpt_from_keras_hub,
    gpt_from_keras_hub_preset,
)

__all__ = [
    "bert_from_keras_hub",
    "bert_from_keras_hub_preset",
    "bert_pretrainer_from_keras_hub",
    "gpt_from_keras_hub",
    "gpt_from_keras_hub_preset",
]
