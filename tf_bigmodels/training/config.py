"""`RunConfig`: the settings of one training run, their defaults and their checks.

This module imports no TensorFlow, so the command line checks every setting before it pays for
loading TensorFlow; `tf_bigmodels.training.run` does the work.
"""

import dataclasses
import os

from tf_bigmodels import _checks
from tf_bigmodels.training.presets import DEFAULT_PRESET, PRESETS, get_preset

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "cpu", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class TokenizerEntry:
    """How the driver makes one kind of tokenizer.

    Attributes:
        class_name: the class in `tf_bigmodels.tokenizers`. A learned one has the classmethods
            `train(texts, vocab_size)` and `load(directory)` and the method `save(directory)`.
        learned: whether its vocabulary is learned from the corpus (then `vocab_size` applies
            and the tokenizer is saved in the run directory), or fixed (the byte tokenizer).
        train_options: `(keyword, value)` pairs passed to `train`.

    Example:

    >>> TOKENIZERS["byte"].learned
    False
    """

    class_name: str
    learned: bool
    train_options: tuple = ()


# The tokenizers `train` can use, by the name `RunConfig.tokenizer` and `--tokenizer` take.
TOKENIZERS = {
    "byte": TokenizerEntry("ByteTokenizer", learned=False),
    # The driver logs its own line; WordPiece's word-counting bar would come unlabelled before it.
    "wordpiece": TokenizerEntry(
        "WordPieceTokenizer", learned=True, train_options=(("verbose", False),)
    ),
    # Lossless on any UTF-8 text, newlines and full-width punctuation included (Chinese).
    "sentencepiece": TokenizerEntry("SentencePieceTokenizer", learned=True),
}

# Per model kind, the tokenizers it can be trained with (the first is its default). A name
# listed here that `TOKENIZERS` does not hold yet is not offered.
_KIND_TOKENIZERS = {"gpt": ("byte", "sentencepiece"), "bert": ("wordpiece",)}
# BERT packs [CLS] A [SEP] B [SEP] and needs a token of each segment.
_MIN_SEQ_LEN = {"gpt": 1, "bert": 5}
# Settings a re-run may change, and that are then honoured; any other difference is refused.
RERUN_MAY_CHANGE = (
    "steps",
    "eval_every",
    "eval_steps",
    "log_every",
    "samples",
    "sample_tokens",
    "export",
    "verbose",
    "strategy",
    "devices",
    "jit_compile",
    "steps_per_execution",
    "gradient_accumulation_steps",
    "resume",
)
DEFAULT_EVAL_EVERY = 250


def tokenizer_choices(kind):
    """The tokenizer names that the model kind `kind` can be trained with; the first is its default.

    Example:

    >>> tokenizer_choices("bert")
    ('wordpiece',)
    """
    return tuple(name for name in _KIND_TOKENIZERS[kind] if name in TOKENIZERS)


@dataclasses.dataclass
class RunConfig:
    """Everything one training run needs; `None` fields take a documented default.

    Attributes:
        model: "gpt" or "bert".
        preset: a name from `GPT_PRESETS` / `BERT_PRESETS`; None is the kind's default
            ("gpt-nano", "bert-tiny").
        corpus: a bundled corpus ("shakespeare", "tangshi", "chinese_reviews"), a path, a
            glob, or a list of paths (or, from Python, a list of document strings). The
            bundled corpora of independent short documents ("tangshi", "chinese_reviews") are
            shuffled with a fixed seed (0) before the split, so validation is a random tenth
            of the poems or reviews (the file order of 全唐诗 ends with 词 and songs); the
            split is the same whatever `seed` is, so runs compare on the same validation text.
        corpus_encoding: the text encoding of the corpus files, e.g. "gbk" (see `load_corpus`).
        corpus_errors: "strict" (bytes that are not valid in `corpus_encoding` are an error) or
            "replace" (they become U+FFFD).
        tokenizer: a name from `TOKENIZERS` that the model kind takes (`tokenizer_choices`);
            None is the preset's ("sentencepiece" for "gpt-poet"), else the kind's default
            ("byte" for GPT, "wordpiece" for BERT). A learned vocabulary (WordPiece,
            SentencePiece) is learned from the documents of the training split only (for GPT,
            the lines `lm_dataset` trains on; for BERT, all but its last tenth of documents),
            so validation text is never seen by the tokenizer either.
        steps: training steps (batches); None is the preset's.
        batch_size: global batch size (split over the replicas); None is the preset's.
        seq_len: tokens per example; None is the preset's.
        learning_rate: peak learning rate; None is the preset's.
        warmup_steps: linear warm-up steps, then the preset's decay to a tenth of the peak; None
            is the preset's warm-up but at most a tenth of `steps`.
        weight_decay, clipnorm: AdamW decay of kernels; global-norm gradient clipping (None: off).
        gradient_accumulation_steps: run each step's batch as this many micro-batches whose
            gradients are added before the one update (less memory, same update); None is off.
        d_model, num_heads, dff, num_layers, rate: override the preset's model.
        vocab_size: size of a learned vocabulary; None is the preset's. Refused with a tokenizer
            whose vocabulary is fixed (the byte tokenizer).
        init_from: a run directory, a `.keras` file or a keras-hub BERT preset directory: a
            new run (step 0, a new optimizer) whose model starts from its weights and that
            keeps its tokenizer (copied into the run directory; a keras-hub GPT-2 preset is
            refused, its BPE tokenizer is not one this package has). The model's shape must be the source's; settings left at None
            (preset, tokenizer, vocabulary and model sizes, seq_len) are the source run's.
            Re-running the new run resumes it (`init_from` may not change); None starts from
            random weights.
        lora_rank: int >= 1. Adds LoRA adapters of this rank (`model.enable_lora`), which
            then are what trains; None is off.
        strategy, devices: see `get_strategy`.
        precision: "float32", "mixed_float16" (with loss scaling) or "mixed_bfloat16".
        jit_compile: compile the train step with XLA; None (the default) chooses by
            `jit_compile_for`: XLA, except `mixed_bfloat16` on a CPU with bfloat16 arithmetic
            and a model at least 512 wide, where TensorFlow's oneDNN kernels are faster.
        steps_per_execution: batches run per call into the compiled function.
        eval_every: validate and checkpoint every this many steps; None is min(250, steps).
            `steps` must be a multiple of it.
        eval_steps: validation batches.
        out, name: the run directory is `out/name`; `name` is one directory name (None: the
            model kind).
        resume: continue the run found in the run directory; if False, a run directory that
            already holds a run is an error (nothing is overwritten).
        seed: int >= 0. Seeds data order, masks, dropout and initialisation.
        samples, sample_tokens: GPT samples printed at the end and their length in tokens.
        export: write a SavedModel under `out/name/export/<version>/` at the end.
        verbose: progress on the console: 1 (a line rewritten in place on a terminal, one line
            per log interval otherwise), 2 (one line per log interval), 0 silent.
        log_every: write the loss of the last `log_every` steps to `metrics.jsonl`, TensorBoard
            and the console.

    Example:

    >>> config = RunConfig(model="bert", preset="bert-mini", steps=4000, precision="mixed_bfloat16")
    >>> resolved = config.resolved()
    >>> resolved.d_model, resolved.eval_every, resolved.warmup_steps, resolved.tokenizer
    (256, 250, 400, 'wordpiece')
    """

    model: str = "gpt"
    preset: str = None
    corpus: object = "shakespeare"
    corpus_encoding: str = "utf-8"
    corpus_errors: str = "strict"
    tokenizer: str = None
    steps: int = None
    batch_size: int = None
    seq_len: int = None
    learning_rate: float = None
    warmup_steps: int = None
    weight_decay: float = 0.1
    clipnorm: float = 1.0
    gradient_accumulation_steps: int = None
    d_model: int = None
    num_heads: int = None
    dff: int = None
    num_layers: int = None
    rate: float = None
    vocab_size: int = None
    init_from: str = None
    lora_rank: int = None
    strategy: str = "auto"
    devices: list = None
    precision: str = "float32"
    jit_compile: bool = None
    steps_per_execution: int = 1
    eval_every: int = None
    eval_steps: int = 20
    out: str = "runs"
    name: str = None
    resume: bool = True
    seed: int = 0
    samples: int = 2
    sample_tokens: int = 200
    export: bool = True
    verbose: int = 1
    log_every: int = 10

    def resolved(self):
        """A checked copy with every `None` replaced by its documented default.

        Raises:
            ValueError: a setting out of range, naming it, its value and what is allowed.

        Example:

        >>> RunConfig(steps=100).resolved().eval_every
        100
        """
        kind = _checks.one_of("model", self.model, tuple(PRESETS))
        preset = get_preset(kind, self.preset)
        values = dataclasses.asdict(self)
        values["preset"] = DEFAULT_PRESET[kind] if self.preset is None else self.preset
        choices = tokenizer_choices(kind)
        if self.tokenizer is not None:
            values["tokenizer"] = self.tokenizer
        elif preset.tokenizer in choices:
            values["tokenizer"] = preset.tokenizer
        else:
            values["tokenizer"] = choices[0]
        _checks.one_of("tokenizer", values["tokenizer"], choices)
        steps = values["steps"] = _checks.positive_int(
            "steps", preset.steps if self.steps is None else self.steps
        )
        for field in ("batch_size", "seq_len", "learning_rate"):
            if values[field] is None:
                values[field] = getattr(preset, field)
        if values["warmup_steps"] is None:
            values["warmup_steps"] = min(preset.warmup_steps, steps // 10)
        if values["eval_every"] is None:
            values["eval_every"] = min(DEFAULT_EVAL_EVERY, steps)
        for field, value in preset.model.items():
            if values[field] is None:
                values[field] = value
        if TOKENIZERS[values["tokenizer"]].learned:
            if values["vocab_size"] is None:
                values["vocab_size"] = preset.vocab_size
            if values["vocab_size"] is None:
                raise ValueError(
                    f"`vocab_size` must be given with the {values['tokenizer']} tokenizer (the "
                    f"preset {values['preset']!r} has none), got None."
                )
        elif values["vocab_size"] is not None:
            raise ValueError(
                f"`vocab_size` must be None with the {values['tokenizer']} tokenizer (its "
                f"vocabulary is fixed), got {values['vocab_size']!r}."
            )
        if values["name"] is None:
            values["name"] = kind
        if isinstance(values["init_from"], os.PathLike):
            values["init_from"] = os.fspath(values["init_from"])  # as config.json stores it
        config = RunConfig(**values)
        config._check()
        return config

    def _check(self):
        for field in (
            "batch_size",
            "seq_len",
            "eval_every",
            "eval_steps",
            "steps_per_execution",
            "log_every",
            "d_model",
            "num_heads",
            "dff",
            "num_layers",
        ):
            _checks.positive_int(field, getattr(self, field))
        _checks.integer("seq_len", self.seq_len, low=_MIN_SEQ_LEN[self.model])
        if self.vocab_size is not None:
            _checks.integer("vocab_size", self.vocab_size, low=2)
        _checks.divisible("d_model", self.d_model, "num_heads", self.num_heads)
        _checks.positive_float("learning_rate", self.learning_rate)
        _checks.integer("warmup_steps", self.warmup_steps, low=0, high=self.steps - 1)
        _checks.number("weight_decay", self.weight_decay, low=0)
        _checks.number("clipnorm", self.clipnorm, low=0, low_open=True, none_ok=True)
        _checks.integer(
            "gradient_accumulation_steps", self.gradient_accumulation_steps, low=2, none_ok=True
        )
        _checks.unit_interval("rate", self.rate)
        _checks.one_of("precision", self.precision, PRECISIONS)
        _checks.one_of("strategy", self.strategy, STRATEGIES)
        _checks.non_empty_str("corpus_encoding", self.corpus_encoding)
        _checks.one_of("corpus_errors", self.corpus_errors, ("strict", "replace"))
        _checks.boolean("jit_compile", self.jit_compile, none_ok=True)
        for field in ("resume", "export"):
            _checks.boolean(field, getattr(self, field))
        for field in ("seed", "samples", "sample_tokens"):
            _checks.integer(field, getattr(self, field), low=0)
        _checks.one_of("verbose", self.verbose, (0, 1, 2))
        _checks.non_empty_str("init_from", self.init_from, none_ok=True)
        _checks.integer("lora_rank", self.lora_rank, low=1, none_ok=True)
        _checks.integer("eval_every", self.eval_every, low=1, high=self.steps)
        if self.steps % self.eval_every:
            raise ValueError(
                f"`steps` must be a multiple of `eval_every`={self.eval_every} (validation and "
                f"checkpoints happen every `eval_every` steps), got {self.steps}."
            )
        _check_name(self.name)
        if not isinstance(self.out, (str, os.PathLike)) or not os.fspath(self.out):
            raise ValueError(f"`out` must be a directory path, got {self.out!r}.")


def _check_name(name):
    """A run name is one directory name, so that the run stays inside `out`."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or (os.sep in name)
        or (os.altsep is not None and os.altsep in name)
        or "\0" in name
    ):
        raise ValueError(
            f"`name` must be one directory name (not empty, '.' or '..', without '/'), "
            f"got {name!r}."
        )
