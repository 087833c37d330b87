"""Corpora and tf.data input pipelines for GPT language modelling and BERT pretraining.

- `load_corpus`: the bundled tiny Shakespeare corpus, or the user's own UTF-8 text files, as a list
  of documents.
- `lm_dataset`: packed `(x, y)` windows for next-token prediction (GPT), streaming from files.
- `bert_pretraining_dataset`: `(features, labels)` for BERT's masked LM and next sentence
  prediction, with masks drawn anew every epoch.

Both pipelines take an optional `tf.distribute.InputContext`, so they plug into
`strategy.distribute_datasets_from_function`.
"""

from tf_bigmodels.data.bert_pretraining_dataset import bert_pretraining_dataset
from tf_bigmodels.data.corpus import load_corpus
from tf_bigmodels.data.lm_dataset import lm_dataset

__all__ = ["bert_pretraining_dataset", "lm_dataset", "load_corpus"]
