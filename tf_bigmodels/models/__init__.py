"""Trainable models: GPT, the BERT encoder, its pre-trainer and a classifier.

Example:

>>> from tf_bigmodels.models import GPTModel
>>> model = GPTModel(vocab_size=259, d_model=128, num_heads=4, dff=512, num_layers=4)
"""

from tf_bigmodels.models.bert import BERTClassifier, BERTEncoder, BERTPretrainer
from tf_bigmodels.models.compression import compress_weights
from tf_bigmodels.models.gpt import GPTModel

__all__ = ["BERTClassifier", "BERTEncoder", "BERTPretrainer", "GPTModel", "compress_weights"]
