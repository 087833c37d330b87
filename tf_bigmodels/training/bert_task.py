"""`BERTTask`: BERT pre-training (masked LM and next sentence prediction)."""

import json
import math
import pathlib

import numpy as np

from tf_bigmodels.data import (
    bert_pretraining_dataset,
)
from tf_bigmodels.models import BERTClassifier, BERTEncoder, BERTPretrainer
from tf_bigmodels.training.task import Task, fixed_batches, model_arguments


class BERTTask(Task):
    """BERT pre-training: `BERTPretrainer`, `bert_pretraining_dataset`, masked LM + NSP losses.

    Example:

    >>> from tf_bigmodels.training import RunConfig
    >>> task = BERTTask(RunConfig(model="bert", preset="bert-test").resolved())
    >>> sorted(task.dummy_inputs())
    ['mask_positions', 'padding_mask', 'segment_ids', 'token_ids']
    """

    kind = "bert"
    model_types = (BERTPretrainer, BERTClassifier)
    attention_title = "BERT (bidirectional)"

    def training_texts(self, texts):
        """All documents but the last tenth (at least 2), which validate."""
        _check_documents(texts)  # before a vocabulary is learned from them
        return texts[: -_bert_validation_documents(texts)]

    def datasets(self, texts, tokenizer):
        config = self.config
        _check_documents(texts)
        cut = _bert_validation_documents(texts)
        train = bert_pretraining_dataset(
            texts[:-cut],
            tokenizer,
            config.seq_len,
            config.batch_size,
            seed=config.seed,
            repeat=True,
        )
        # One pairing of the held-out documents: each validation pair is a different text.
        val = bert_pretraining_dataset(
            texts[-cut:],
            tokenizer,
            config.seq_len,
            config.batch_size,
            dupe_factor=1,
            seed=config.seed + 1,
        )
        return train, fixed_batches(val, config.eval_steps)

    def keras_hub_model(self, preset_dir):
        from tf_bigmodels.convert import bert_from_keras_hub_preset

        return bert_from_keras_hub_preset(preset_dir)

    def keras_hub_tokenizer(self, preset_dir):
        """The preset's WordPiece vocabulary (`assets/tokenizer/vocabulary.txt`), lower-cased
        as its `tokenizer.json` says."""
        from tf_bigmodels.tokenizers import WordPieceTokenizer

        if self.config.tokenizer != "wordpiece":
            raise ValueError(
                f"`tokenizer` must be 'wordpiece', the tokenizer of `init_from`="
                f"{self.config.init_from!r}, got {self.config.tokenizer!r}."
            )
        settings = pathlib.Path(preset_dir) / "tokenizer.json"
        try:
            config = json.loads(settings.read_text(encoding="utf-8")).get("config", {})
            vocabulary = pathlib.Path(preset_dir) / "assets" / "tokenizer" / "vocabulary.txt"
            return WordPieceTokenizer(vocabulary, lowercase=config.get("lowercase", True))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"`init_from`={self.config.init_from!r} has no readable BERT tokenizer "
                f"(tokenizer.json and assets/tokenizer/vocabulary.txt): "
                f"{' '.join(str(error).split())}"
            ) from None

    def new_model(self, vocab_size):
        encoder = BERTEncoder(
            vocab_size=vocab_size, max_length=self.config.seq_len, **model_arguments(self.config)
        )
        model = BERTPretrainer(encoder)
        model(self.dummy_inputs())
        return model

    def dummy_inputs(self):
        ids = np.zeros((1, self.config.seq_len), "int32")
        return {
            "token_ids": ids,
            "segment_ids": ids,
            "padding_mask": np.ones_like(ids),
            "mask_positions": np.zeros((1, 1), "int32"),
        }

    def diverged_above(self, vocab_size):
        return 3.0 * (math.log(vocab_size) + math.log(2.0))  # masked LM + next sentence

    @classmethod
    def _export(cls, model, tokenizer, directory, **options):
        from tf_bigmodels.export import export_bert

        return export_bert(model, tokenizer, directory, **options)

    @classmethod
    def attention_inputs(cls, model, tokenizer, text):
        length = min(64, model.encoder.max_length)
        pieces = tokenizer.tokenize(text).numpy().tolist()[: length - 2]
        ids = np.array([tokenizer.cls_id] + pieces + [tokenizer.sep_id], "int32")
        return {"token_ids": ids[None, :]}, ids


def _check_documents(texts):
    if len(texts) < 4:
        raise ValueError(
            f"`corpus` must hold at least 4 documents for BERT pre-training (2 for validation; "
            f"a file is one document, the bundled corpora are cut into many), got {len(texts)}."
        )


def _bert_validation_documents(texts):
    return max(2, len(texts) // 10)
