"""Named model shapes and their training defaults, from test sizes to the published ones."""

import dataclasses

from tf_bigmodels.models import BERTEncoder, BERTPretrainer, GPTModel


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model shape with the training settings it is usually run with.

    Attributes:
        model: dict of model constructor arguments (without `vocab_size`).
        seq_len, batch_size, steps, learning_rate, warmup_steps: training defaults.
        vocab_size: WordPiece vocabulary size (BERT only; GPT uses the byte tokenizer's).

    Example:

    >>> GPT_PRESETS["gpt-nano"].seq_len
    64
    """

    model: dict
    seq_len: int
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    vocab_size: int = 0


GPT_PRESETS = {
    # A test size: seconds on a CPU.
    "gpt-test": Preset(
        dict(d_model=32, num_heads=2, dff=128, num_layers=2, rate=0.0),
        seq_len=32,
        batch_size=8,
        steps=20,
        learning_rate=1e-3,
        warmup_steps=5,
    ),
    # nanoGPT's CPU configuration for character-level Shakespeare.
    "gpt-nano": Preset(
        dict(d_model=128, num_heads=4, dff=512, num_layers=4, rate=0.0),
        seq_len=64,
        batch_size=12,
        steps=2000,
        learning_rate=1e-3,
        warmup_steps=100,
    ),
    # GPT-2 small (124M parameters with its 50257-token vocabulary).
    "gpt2-124m": Preset(
        dict(d_model=768, num_heads=12, dff=3072, num_layers=12, rate=0.1),
        seq_len=1024,
        batch_size=8,
        steps=100_000,
        learning_rate=6e-4,
        warmup_steps=2000,
    ),
}

BERT_PRESETS = {
    "bert-test": Preset(
        dict(d_model=32, num_heads=2, dff=128, num_layers=2, rate=0.1),
        seq_len=32,
        batch_size=8,
        steps=20,
        learning_rate=1e-3,
        warmup_steps=5,
        vocab_size=1000,
    ),
    # The compact BERTs of Turc et al. 2019 (Tiny/Mini/Small) and BERT-Base.
    "bert-tiny": Preset(
        dict(d_model=128, num_heads=2, dff=512, num_layers=2, rate=0.1),
        seq_len=128,
        batch_size=32,
        steps=2000,
        learning_rate=1e-3,
        warmup_steps=200,
        vocab_size=8000,
    ),
    "bert-mini": Preset(
        dict(d_model=256, num_heads=4, dff=1024, num_layers=4, rate=0.1),
        seq_len=128,
        batch_size=32,
        steps=10_000,
        learning_rate=5e-4,
        warmup_steps=1000,
        vocab_size=8000,
    ),
    "bert-small": Preset(
        dict(d_model=512, num_heads=8, dff=2048, num_layers=4, rate=0.1),
        seq_len=128,
        batch_size=32,
        steps=10_000,
        learning_rate=3e-4,
        warmup_steps=1000,
        vocab_size=16000,
    ),
    "bert-base": Preset(
        dict(d_model=768, num_heads=12, dff=3072, num_layers=12, rate=0.1),
        seq_len=512,
        batch_size=256,
        steps=1_000_000,
        learning_rate=1e-4,
        warmup_steps=10_000,
        vocab_size=30522,
    ),
}

DEFAULT_PRESET = {"gpt": "gpt-nano", "bert": "bert-tiny"}


def get_preset(kind, name=None):
    """Returns the `Preset` called `name` for "gpt" or "bert" (the default one if None).

    Example:

    >>> get_preset("gpt").model["num_layers"]
    4
    """
    presets = {"gpt": GPT_PRESETS, "bert": BERT_PRESETS}.get(kind)
    if presets is None:
        raise ValueError(f"`model` must be 'gpt' or 'bert', got {kind!r}.")
    name = name or DEFAULT_PRESET[kind]
    if name not in presets:
        raise ValueError(f"unknown `preset` {name!r} for {kind}; choose one of {sorted(presets)}.")
    return presets[name]


def build_model(kind, model_kwargs, vocab_size, max_length):
    """Builds the trainable model: a `GPTModel`, or a `BERTPretrainer` around a `BERTEncoder`.

    Example:

    >>> model = build_model("gpt", get_preset("gpt").model, vocab_size=259, max_length=64)
    """
    if kind == "gpt":
        return GPTModel(vocab_size=vocab_size, max_length=max_length, **model_kwargs)
    return BERTPretrainer(BERTEncoder(vocab_size=vocab_size, max_length=max_length, **model_kwargs))
