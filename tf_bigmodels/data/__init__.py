"""Corpora and tf.data input pipelines for GPT language modelling and BERT pretraining.

- `load_corpus`: a bundled corpus (tiny Shakespeare; 全唐诗, the complete Tang poems, one poem a
  document; Chinese product reviews), or the user's own text files, as a list of documents.
- `load_labelled_corpus`: a bundled labelled corpus (`"chinese_reviews"`, 负面/正面) as a
  `LabelledCorpus` of texts, labels and label names.
- `poem_format_score`, `split_poem`, `is_regulated_couplet`: how well-formed regulated verse is.
- `bits_per_character`, `lm_split_counts`: a language model's loss in bits per character, which
  does not depend on the tokenizer.
- `lm_dataset`: packed `(x, y)` windows for next-token prediction (GPT), streaming from files.
- `bert_pretraining_dataset`: `(features, labels)` for BERT's masked LM and next sentence
  prediction, with masks drawn anew every epoch.

Both pipelines take an optional `tf.distribute.InputContext`, so they plug into
`strategy.distribute_datasets_from_function`.
"""

from tf_bigmodels.data.bert_pretraining_dataset import bert_pretraining_dataset
from tf_bigmodels.data.corpus import LabelledCorpus, load_corpus, load_labelled_corpus
from tf_bigmodels.data.lm_dataset import lm_dataset
from tf_bigmodels.data.poetry import Poem, is_regulated_couplet, poem_format_score, split_poem
from tf_bigmodels.data.text_metrics import bits_per_character, lm_split_counts

__all__ = [
    "LabelledCorpus",
    "Poem",
    "bert_pretraining_dataset",
    "bits_per_character",
    "is_regulated_couplet",
    "lm_dataset",
    "lm_split_counts",
    "load_corpus",
    "load_labelled_corpus",
    "poem_format_score",
    "split_poem",
]
