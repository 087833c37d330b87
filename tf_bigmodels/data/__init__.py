"""Corpora and tf.data input pipelines for GPT language modelling and BERT pretraining.

- `load_corpus`: a bundled corpus (tiny Shakespeare; 全唐诗, the complete Tang poems, one poem a
  document; Chinese product reviews), or the user's own text files, as a list of documents.
- `load_labelled_corpus`: a bundled labelled corpus (`"chinese_reviews"`, 负面/正面) as a
  `LabelledCorpus` of texts, labels and label names.
- `lm_dataset`: packed `(x, y)` windows for next-token prediction (GPT), streaming from files.
- `bert_pretraining_dataset`: `(features, labels)` for BERT's masked LM and next sentence
  prediction, with masks drawn anew every epoch.

Both pipelines take an optional `tf.distribute.InputContext`, so they plug into
`strategy.distribute_datasets_from_function`.
"""

from tf_bigmodels.data.bert_pretraining_dataset import bert_pretraining_dataset
from tf_bigmodels.data.corpus import LabelledCorpus, load_corpus, load_labelled_corpus
from tf_bigmodels.data.lm_dataset import lm_dataset

__all__ = [
    "LabelledCorpus",
    "bert_pretraining_dataset",
    "lm_dataset",
    "load_corpus",
    "load_labelled_corpus",
]
