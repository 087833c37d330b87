"""LiteRT (TensorFlow Lite) export and runner for GPT and BERT.

- `export_gpt_litert(model, tokenizer, path, weights=...)`: a `.tflite` file with `prefill`,
  `decode` and `logits` signatures (explicit key/value inputs per layer, builtin ops only), its
  tokenizer beside it and a JSON description (`NAME.json`).
- `export_bert_litert(model, tokenizer, path, weights=...)`: `encode`, and `classify` for a
  classifier, with the WordPiece vocabulary beside it.
- `export_litert(...)`: either, by model type (the command line's entry point).
- `LiteRTGenerator(path)`: generate and stream text from a GPT export with `ai_edge_litert`;
  `LiteRTEncoder(path)`: run a BERT export.
- `is_litert_source(path)`: whether a path names such an export (for the command line).

`weights="int8"` is dynamic-range quantization: int8 weights with per-row scales, run by
XNNPACK's dynamically quantized kernels. The `.tflite` file runs with `ai-edge-litert` and NumPy
alone (`docs/litert.md` shows how, in a few lines).

Example:

>>> from tf_bigmodels.models import GPTModel
>>> from tf_bigmodels.tokenizers import ByteTokenizer
>>> model = GPTModel(258, 32, 2, 64, 1, rate=0.0, max_length=32)
>>> path = export_gpt_litert(model, ByteTokenizer(), "out/gpt.tflite", weights="int8")
... # doctest: +SKIP
>>> LiteRTGenerator(path).generate_text("To be", 40, temperature=0.8, seed=1)
... # doctest: +SKIP
"""

import os

from tf_bigmodels.litert.export import (
    description_path,
    export_bert_litert,
    export_gpt_litert,
    export_litert,
)
from tf_bigmodels.litert.runner import (
    LiteRTEncoder,
    LiteRTGenerator,
    load_description,
    sample_next_token,
)


def is_litert_source(path):
    """Whether `path` is a `.tflite` file with its JSON description beside it.

    Example:

    >>> is_litert_source("runs/gpt"), is_litert_source("missing.tflite")
    (False, False)
    """
    path = os.fspath(path)
    return (
        path.endswith(".tflite") and os.path.isfile(path) and os.path.isfile(description_path(path))
    )


__all__ = [
    "LiteRTEncoder",
    "LiteRTGenerator",
    "description_path",
    "export_bert_litert",
    "export_gpt_litert",
    "export_litert",
    "is_litert_source",
    "load_description",
    "sample_next_token",
]
