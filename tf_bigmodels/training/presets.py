"""Named model shapes with their training and optimizer settings, from test sizes to published ones.

This module holds settings only (no TensorFlow), so the command line can check them before it
loads TensorFlow.
"""

import dataclasses

from tf_bigmodels import _checks


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model shape with the training and optimizer settings it is usually run with.

    Attributes:
        model: dict of model constructor arguments (without `vocab_size`).
        seq_len, batch_size, steps, learning_rate, warmup_steps: training defaults.
        vocab_size: size of a vocabulary learned from the corpus (WordPiece, SentencePiece);
            None for a tokenizer whose vocabulary is fixed (the byte tokenizer).
        tokenizer: the tokenizer it is meant for (a name of `TOKENIZERS`); None is the model
            kind's default.
        decay: learning-rate decay after the warm-up, "cosine" or "linear".
        decay_end: float in (0, 1]. The share of the run's steps at which the decay reaches its
            floor (10% of the peak); the rate then stays there. 1.0 decays over the whole run.
        beta_2, epsilon: Adam's second-moment decay and epsilon.
        jit_compile: whether training compiles with XLA; None leaves the choice to
            `jit_compile_for`. The test presets say False: they train a few steps of a 32-wide
            model, and XLA's compilation (seconds) costs more than all the steps it speeds up.

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
    vocab_size: int = None
    tokenizer: str = None
    decay: str = "cosine"
    decay_end: float = 1.0
    beta_2: float = 0.95
    epsilon: float = 1e-8
    jit_compile: bool = None


# GPT-2 and nanoGPT: cosine decay, epsilon 1e-8. beta_2 is 0.95 for GPT-2 and 0.99 for the small
# character-level models (nanoGPT's Shakespeare), which see few tokens per step.
_SMALL_GPT = dict(decay="cosine", beta_2=0.99, epsilon=1e-8)
# BERT: linear decay, beta_2 0.999, epsilon 1e-6 (Devlin et al. 2019).
_BERT = dict(decay="linear", beta_2=0.999, epsilon=1e-6)

GPT_PRESETS = {
    # A test size: seconds on a CPU.
    "gpt-test": Preset(
        dict(d_model=32, num_heads=2, dff=128, num_layers=2, rate=0.0),
        seq_len=32,
        batch_size=8,
        steps=20,
        learning_rate=1e-3,
        warmup_steps=5,
        jit_compile=False,
        **_SMALL_GPT,
    ),
    # nanoGPT's CPU configuration for character-level Shakespeare (its model, batch and steps).
    # The schedule is ours, chosen by benchmarks/time_to_quality.py: a peak of 4e-3 (nanoGPT: 1e-3)
    # and a cosine that reaches its floor at 60% of the run (step 1200 of 2000) reached
    # nanoGPT's 2000-step validation loss of 1.886 in 0.37x nanoGPT's own time.
    "gpt-nano": Preset(
        dict(d_model=128, num_heads=4, dff=512, num_layers=4, rate=0.0),
        seq_len=64,
        batch_size=12,
        steps=2000,
        learning_rate=4e-3,
        warmup_steps=100,
        decay_end=0.6,
        **_SMALL_GPT,
    ),
    # Tang poetry (`--corpus tangshi`) with an 8,000-piece SentencePiece vocabulary: the settings
    # of benchmarks/poetry.py (nanoGPT's small model with a context of 256 pieces, room for a
    # whole 律诗 with its title). Measured there against the byte tokenizer under the same
    # 15-minute budget: 6.12 bits per character against 7.57. 7,500 steps is about what that
    # budget gave on a 2-core CPU (7,620).
    "gpt-poet": Preset(
        dict(d_model=128, num_heads=4, dff=512, num_layers=4, rate=0.0),
        seq_len=256,
        batch_size=8,
        steps=7500,
        learning_rate=2e-3,
        warmup_steps=100,
        vocab_size=8000,
        tokenizer="sentencepiece",
        **_SMALL_GPT,
    ),
    # GPT-2 small (124M parameters with its 50257-token vocabulary).
    "gpt2-124m": Preset(
        dict(d_model=768, num_heads=12, dff=3072, num_layers=12, rate=0.1),
        seq_len=1024,
        batch_size=8,
        steps=100_000,
        learning_rate=6e-4,
        warmup_steps=2000,
        vocab_size=50257,
        decay="cosine",
        beta_2=0.95,
        epsilon=1e-8,
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
        jit_compile=False,
        **_BERT,
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
        **_BERT,
    ),
    "bert-mini": Preset(
        dict(d_model=256, num_heads=4, dff=1024, num_layers=4, rate=0.1),
        seq_len=128,
        batch_size=32,
        steps=10_000,
        learning_rate=5e-4,
        warmup_steps=1000,
        vocab_size=8000,
        **_BERT,
    ),
    "bert-small": Preset(
        dict(d_model=512, num_heads=8, dff=2048, num_layers=4, rate=0.1),
        seq_len=128,
        batch_size=32,
        steps=10_000,
        learning_rate=3e-4,
        warmup_steps=1000,
        vocab_size=16000,
        **_BERT,
    ),
    "bert-base": Preset(
        dict(d_model=768, num_heads=12, dff=3072, num_layers=12, rate=0.1),
        seq_len=512,
        batch_size=256,
        steps=1_000_000,
        learning_rate=1e-4,
        warmup_steps=10_000,
        vocab_size=30522,
        **_BERT,
    ),
}

# Per model kind: its presets and the one used when none is named.
PRESETS = {"gpt": GPT_PRESETS, "bert": BERT_PRESETS}
DEFAULT_PRESET = {"gpt": "gpt-nano", "bert": "bert-tiny"}


def get_preset(kind, name=None):
    """Returns the `Preset` called `name` for "gpt" or "bert" (the kind's default if None).

    Example:

    >>> get_preset("gpt").model["num_layers"]
    4
    >>> get_preset("bert", "bert-mini").beta_2
    0.999
    """
    _checks.one_of("model", kind, tuple(PRESETS))
    name = DEFAULT_PRESET[kind] if name is None else name
    presets = PRESETS[kind]
    if not isinstance(name, str) or name not in presets:
        raise ValueError(f"unknown `preset` {name!r} for {kind}; choose one of {sorted(presets)}.")
    return presets[name]
