"""`GPTTask`: a GPT trained on next-token prediction, and the text it samples from."""

import keras
import numpy as np

from tf_bigmodels.data import (
    lm_dataset,
    lm_split_counts,
)
from tf_bigmodels.data.lm_dataset import TRAIN_FRACTION
from tf_bigmodels.models import GPTModel
from tf_bigmodels.training.task import Task, fixed_batches, model_arguments


class GPTTask(Task):
    """A GPT trained on next-token prediction: `GPTModel`, `lm_dataset`, cross-entropy.

    Example:

    >>> from tf_bigmodels.training import RunConfig
    >>> task = GPTTask(RunConfig(model="gpt", preset="gpt-test").resolved())
    >>> task.dummy_inputs().shape
    (1, 32)
    """

    log_perplexity = True
    generates_text = True
    kind = "gpt"
    model_types = (GPTModel,)
    export_options = ("max_new_tokens", "temperature", "top_k", "top_p", "weights")
    sampling = {"temperature": 0.8, "top_k": 40}
    attention_title = "GPT (causal)"

    def training_texts(self, texts):
        """The lines `lm_dataset` trains on: those that start in the first 90% of the bytes."""
        return lm_training_texts(texts)

    def validation_counts(self, texts, tokenizer):
        return lm_split_counts(texts, tokenizer, "val")

    def datasets(self, texts, tokenizer):
        config = self.config
        train = lm_dataset(
            texts,
            tokenizer,
            config.seq_len,
            config.batch_size,
            split="train",
            seed=config.seed,
            repeat=True,
        )
        val = lm_dataset(texts, tokenizer, config.seq_len, config.batch_size, split="val")
        return train, fixed_batches(val, config.eval_steps)

    def new_model(self, vocab_size):
        model = GPTModel(
            vocab_size=vocab_size, max_length=self.config.seq_len, **model_arguments(self.config)
        )
        model(self.dummy_inputs())
        return model

    def dummy_inputs(self):
        return np.zeros((1, self.config.seq_len), "int32")

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def samples(self, model, tokenizer, texts):
        """Continuations of prompts taken from the validation text, longer than the context
        through a sliding window."""
        from tf_bigmodels.export import stream_text

        return [
            prompt
            + "".join(
                stream_text(
                    model,
                    prompt,
                    self.config.sample_tokens,
                    **self.sampling,
                    seed=self.config.seed + index,
                    tokenizer=tokenizer,
                )
            )
            for index, prompt in enumerate(sample_prompts(texts, self.config.samples))
        ]

    @classmethod
    def _export(cls, model, tokenizer, directory, **options):
        from tf_bigmodels.export import export_gpt

        return export_gpt(model, tokenizer, directory, **options)

    @classmethod
    def attention_inputs(cls, model, tokenizer, text):
        ids = tokenizer.tokenize(text).numpy()[: min(64, model.max_length)]
        return ids, ids

    def prompt(self, texts):
        """A prompt to try the trained model with: the first line of a paragraph of the
        validation text (see `sample_prompts`)."""
        return sample_prompts(texts, 1)[0]


def sample_prompts(texts, count):
    """`count` prompts from the validation part of `texts` (its last tenth): the first lines of
    paragraphs spread over it, each with its newline, so samples start as the corpus's own
    documents do (a speaker's name, a poem's title).

    Example:

    >>> sample_prompts(["A\\n\\nB:\\nx\\n\\nC:\\ny\\n\\nD:\\nz"] * 10, 2)
    ['B:\\n', 'C:\\n']
    """
    if not count:
        return []
    text = "\n\n".join(texts)
    validation = text[len(text) - len(text) // 10 :]
    lines = [
        paragraph.strip("\n").split("\n", 1)[0]
        for paragraph in validation.split("\n\n")[1:]
        if paragraph.strip()
    ]
    lines = [line for line in lines if line.strip()] or [""]
    picks = [lines[(index * len(lines)) // count] for index in range(count)]
    return [line + "\n" if line else "" for line in picks]


def lm_training_texts(texts):
    """The training split of `lm_dataset(texts, ...)`, as documents: each document's lines that
    start in the first 90% of the text's UTF-8 bytes (the rest validate), each line with its
    "\\n"; documents wholly in the validation split are left out.

    Example:

    >>> kept = lm_training_texts(["ab"] * 9 + ["cd\\nef"])  # "ef" starts after 90%
    >>> len(kept), kept[-1]
    (10, 'cd\\n')
    """
    # The same byte offsets as lm_dataset: every line gets its "\n" back.
    documents = [d if d.endswith("\n") else d + "\n" for d in texts]
    split_at = int(TRAIN_FRACTION * sum(len(d.encode("utf-8")) for d in documents))
    kept, offset = [], 0
    for document in documents:
        lines = []
        for line in document[:-1].split("\n"):
            if offset < split_at:
                lines.append(line + "\n")
            offset += len(line.encode("utf-8")) + 1
        if lines:
            kept.append("".join(lines))
        if offset >= split_at:
            break
    return kept
