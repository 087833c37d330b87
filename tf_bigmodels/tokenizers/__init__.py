"""Tokenizers: text to int32 ids and back, in pure TensorFlow / tensorflow-text ops.

Both tokenizers are `tf.Module`s, so they run inside `tf.function` and travel inside a SavedModel
when they are attributes of the exported module.

- `ByteTokenizer`: UTF-8 bytes plus end-of-text and padding (GPT; any language, no training).
- `WordPieceTokenizer`: BERT's WordPiece with `[PAD] [UNK] [CLS] [SEP] [MASK]`, learned from a corpus
  with `WordPieceTokenizer.train`.
"""

from tf_bigmodels.tokenizers.byte_tokenizer import ByteTokenizer
from tf_bigmodels.tokenizers.word_piece_tokenizer import WordPieceTokenizer

__all__ = ["ByteTokenizer", "WordPieceTokenizer"]
