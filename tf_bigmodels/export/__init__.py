"""SavedModel export: raw strings in, text or scores out, in TF Serving's `export_dir/<version>/`.

- `export_gpt(model, tokenizer, export_dir)`: signatures `serving_default`, `generate`, `logits`.
- `export_bert(model, tokenizer, export_dir)`: a `BERTPretrainer` (`serving_default`,
  `encode_pair`, `fill_mask`) or a `BERTClassifier` (`serving_default`: probabilities and label).
- `stream_text(source, prompt, max_new_tokens)`: text pieces as they are generated, from a
  SavedModel directory, a `.keras` file or a `GPTModel`, carrying the key/value cache from piece
  to piece; `generate_texts(...)`: several samples of one prompt at once.
- `GenerationSettings`: how to continue a prompt (the settings `export_gpt` and the batcher take).
- `ContinuousBatcher(source)`: the texts of many requests decoded together, each row joining and
  leaving the batch at chunk boundaries with its own settings (what the server batches with).

Every export holds TF Serving's warm-up file (`assets.extra/tf_serving_warmup_requests`, one
request for each signature; `tf_bigmodels.export.warmup`). The SavedModels load with
`tf.saved_model.load` in a process that imports only `tensorflow` and `tensorflow_text`.

Example:

>>> from tf_bigmodels.export import export_gpt
>>> from tf_bigmodels.models import GPTModel
>>> from tf_bigmodels.tokenizers import ByteTokenizer
>>> model = GPTModel(258, 16, 2, 32, 1, max_length=16)
>>> export_gpt(model, ByteTokenizer(), "exports/gpt", max_new_tokens=4, jit_compile=False)
'exports/gpt/1'
"""

from tf_bigmodels.export.batching import BatcherFull, ContinuousBatcher
from tf_bigmodels.export.bert import BERTServingModule, export_bert
from tf_bigmodels.export.gpt import GPTServingModule, export_gpt
from tf_bigmodels.export.streaming import generate_texts, load_generator, stream_text
from tf_bigmodels.models.generation import GenerationSettings

__all__ = [
    "BERTServingModule",
    "BatcherFull",
    "ContinuousBatcher",
    "GPTServingModule",
    "GenerationSettings",
    "export_bert",
    "export_gpt",
    "generate_texts",
    "load_generator",
    "stream_text",
]
