"""Tokenizers: text to int32 ids and back, in pure TensorFlow / tensorflow-text ops.

Every tokenizer subclasses `Tokenizer` (a `tf.Module`), so it runs inside `tf.function` and
travels inside a SavedModel when it is an attribute of the exported module.

- `Tokenizer`: the shared interface (`tokenize`, `detokenize`, `vocab_size`, `end_id`, `pad_id`).
- `ByteTokenizer`: UTF-8 bytes plus end-of-text and padding (GPT; any language, no training).
- `WordPieceTokenizer`: BERT's WordPiece with `[PAD] [UNK] [CLS] [SEP] [MASK]`, learned from a corpus
  with `WordPieceTokenizer.train`.
- `SentencePieceTokenizer`: a learned subword vocabulary (SentencePiece), lossless on any UTF-8
  text, for Chinese and other languages (GPT; learned with `SentencePieceTokenizer.train`).
"""

from tf_bigmodels.tokenizers.base import Tokenizer, check_tokenizer
from tf_bigmodels.tokenizers.byte_tokenizer import ByteTokenizer
from tf_bigmodels.tokenizers.sentence_piece_tokenizer import SentencePieceTokenizer
from tf_bigmodels.tokenizers.word_piece_tokenizer import WordPieceTokenizer

__all__ = [
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "WordPieceTokenizer",
    "check_tokenizer",
]
