"""`RunConfig`: the settings of one training run, their defaults and their checks.

This module imports no TensorFlow, so the command line checks every setting before it pays for
loading TensorFlow; `tf_bigmodels.training.run` does the work.
"""

import dataclasses
import os
import textwrap

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


def _setting(
    help,
    *,
    default=None,
    default_help=None,
    parse=None,
    flag=None,
    nargs=None,
    metavar=None,
    doc=None,
):
    """A `RunConfig` field: None in the dataclass (so a re-run can tell "left out" from "given"),
    `default` once resolved, and `help` both for the docstring and for `tf-bigmodels train`.

    `default_help` describes a default that `resolved` works out (from the preset, say).
    `parse` is how the command line reads the value: "int", "positive_int", "float",
    "positive_float", "str", "bool" (an on/off flag), a tuple of choices, or None (not a flag).
    `doc` adds to the docstring what only the Python API needs to know.
    """
    metadata = dict(
        help=help,
        default=default,
        default_help=default_help or ("none" if default is None else str(default)),
        parse=parse,
        flag=flag,
        nargs=nargs,
        metavar=metavar,
        doc=doc,
    )
    return dataclasses.field(default=None, metadata=metadata)


def _preset_default(field, model=False):
    """'the preset's (gpt-nano: 2000, bert-tiny: 2000)': a default that comes from the preset."""
    values = []
    for kind in PRESETS:
        preset = PRESETS[kind][DEFAULT_PRESET[kind]]
        value = preset.model[field] if model else getattr(preset, field)
        values.append(f"{DEFAULT_PRESET[kind]}: {'none' if value is None else value}")
    return f"the preset's; {', '.join(values)}"


@dataclasses.dataclass
class RunConfig:
    """Everything one training run needs; a setting left at None takes its documented default.

        On a re-run (the run directory already holds a run), a setting left at None takes the
        stored run's value instead. The settings and their help text are described once, in the
        fields' metadata: `tf-bigmodels train` makes its flags from them (`settings()`).

        Attributes:
    {attributes}

        Example:

        >>> config = RunConfig(model="bert", preset="bert-mini", steps=4000, precision="mixed_bfloat16")
        >>> resolved = config.resolved()
        >>> resolved.d_model, resolved.eval_every, resolved.warmup_steps, resolved.tokenizer
        (256, 250, 400, 'wordpiece')
    """

    model: str = "gpt"
    preset: str = _setting(
        "model size and training settings: "
        + "; ".join(f"{kind.upper()} {', '.join(PRESETS[kind])}" for kind in PRESETS),
        default_help=f"{', '.join(DEFAULT_PRESET.values())}",
        parse="str",
    )
    corpus: object = _setting(
        "a bundled corpus: 'shakespeare' (tiny Shakespeare), 'tangshi' (全唐诗, 56,053 poems, one "
        "a document) or 'chinese_reviews' (17,363 product reviews); or UTF-8 text files / globs, "
        "one document per file. The bundled corpora of short documents are shuffled with a "
        "fixed seed before the split (whatever --seed is), so validation is a random tenth",
        default="shakespeare",
        parse="str",
        nargs="+",
        metavar="PATH_OR_GLOB",
        doc="From Python also a list of paths, or a list of document strings.",
    )
    corpus_encoding: str = _setting(
        "the text encoding of the corpus files, e.g. gbk for files saved by Chinese Windows "
        "software",
        default="utf-8",
        parse="str",
    )
    corpus_errors: str = _setting(
        "bytes of the corpus that are not valid in its encoding: an error (strict), or "
        "replaced by U+FFFD",
        default="strict",
        parse=("strict", "replace"),
    )
    tokenizer: str = _setting(
        "; ".join(f"{kind}: {', '.join(_KIND_TOKENIZERS[kind])}" for kind in _KIND_TOKENIZERS)
        + ". A learned vocabulary is learned from the training split only",
        default_help="the preset's, else the first of the model's; gpt-poet: sentencepiece",
        parse=tuple(sorted(TOKENIZERS)),
    )
    steps: int = _setting(
        "training steps (batches)", default_help=_preset_default("steps"), parse="positive_int"
    )
    batch_size: int = _setting(
        "global batch size, split over the replicas",
        default_help=_preset_default("batch_size"),
        parse="positive_int",
    )
    seq_len: int = _setting(
        "tokens per example", default_help=_preset_default("seq_len"), parse="positive_int"
    )
    learning_rate: float = _setting(
        "peak learning rate",
        default_help=_preset_default("learning_rate"),
        parse="positive_float",
        flag="--lr",
    )
    warmup_steps: int = _setting(
        "linear warm-up steps, then the preset's decay to a tenth of the peak",
        default_help="the preset's, at most a tenth of --steps",
        parse="int",
    )
    weight_decay: float = _setting("AdamW weight decay of the kernels", default=0.1, parse="float")
    clipnorm: float = _setting("global-norm gradient clipping", default=1.0, parse="positive_float")
    gradient_accumulation_steps: int = _setting(
        "run each batch as N micro-batches: less memory, same update",
        default_help="off",
        parse="int",
        flag="--grad-accum",
    )
    d_model: int = _setting(
        "model width", default_help=_preset_default("d_model", True), parse="positive_int"
    )
    num_heads: int = _setting(
        "attention heads", default_help=_preset_default("num_heads", True), parse="positive_int"
    )
    dff: int = _setting(
        "feed-forward width", default_help=_preset_default("dff", True), parse="positive_int"
    )
    num_layers: int = _setting(
        "Transformer blocks", default_help=_preset_default("num_layers", True), parse="positive_int"
    )
    rate: float = _setting(
        "dropout rate", default_help=_preset_default("rate", True), parse="float", flag="--dropout"
    )
    vocab_size: int = _setting(
        "size of a learned vocabulary (WordPiece, SentencePiece); not for the byte tokenizer",
        default_help=_preset_default("vocab_size"),
        parse="positive_int",
    )
    init_from: str = _setting(
        "start a new run (step 0, new optimizer) from trained weights: a run directory, a "
        ".keras file, or a keras-hub BERT preset directory. The run keeps the source's "
        "tokenizer, and its shape (sizes, --seq-len, vocabulary) must be the source's; "
        "settings not given are the source run's. A re-run resumes the new run",
        default_help="random weights",
        parse="str",
        metavar="SOURCE",
    )
    lora_rank: int = _setting(
        "train LoRA adapters of this rank on the model instead of all its weights",
        default_help="off",
        parse="positive_int",
    )
    strategy: str = _setting(
        "tf.distribute strategy: auto picks a TPU, several workers (TF_CONFIG), several GPUs, "
        "or one device (see get_strategy)",
        default="auto",
        parse=STRATEGIES,
    )
    devices: list = _setting("the devices of the strategy (see get_strategy)")
    precision: str = _setting(
        "compute precision (mixed_float16 uses loss scaling)", default="float32", parse=PRECISIONS
    )
    jit_compile: bool = _setting(
        "compile the train step with XLA",
        default_help="the preset's (off for the test presets), else chosen: on, except with "
        "--precision mixed_bfloat16 on a CPU with bf16 instructions and a model at least 512 "
        "wide, where TensorFlow's oneDNN kernels are faster",
        parse="bool",
        flag="--jit",
    )
    steps_per_execution: int = _setting(
        "batches per call into the compiled train step", default=1, parse="positive_int"
    )
    eval_every: int = _setting(
        "validate and checkpoint every N steps; --steps must be a multiple of it",
        default_help=f"min({DEFAULT_EVAL_EVERY}, --steps)",
        parse="positive_int",
    )
    eval_steps: int = _setting("validation batches", default=20, parse="positive_int")
    out: str = _setting("parent of the run directory", default="runs", parse="str")
    name: str = _setting(
        "run directory name, one directory under --out", default_help="the model kind", parse="str"
    )
    resume: bool = _setting(
        "continue a run found in the run directory; if off, an existing run is an error "
        "(nothing is overwritten)",
        default=True,
        parse="bool",
    )
    seed: int = _setting(
        "seeds data order, masks, dropout, initialisation; 0 to 2**32 - 1", default=0, parse="int"
    )
    samples: int = _setting("GPT samples printed at the end", default=2, parse="int")
    sample_tokens: int = _setting("length of each sample, in tokens", default=200, parse="int")
    export: bool = _setting(
        "write a SavedModel under RUN_DIR/export/<version>/ at the end", default=True, parse="bool"
    )
    verbose: int = _setting(
        "progress on the console: 1 (a line rewritten in place on a terminal), 2 (one line per "
        "log interval), 0 silent",
        default=1,
    )
    log_every: int = _setting(
        "log the mean loss of every N steps (console, metrics.jsonl, TensorBoard)",
        default=10,
        parse="positive_int",
    )

    @staticmethod
    def settings():
        """The settings a user sets, as `dataclasses.Field`s with `help`, `default` and `parse`
        in their metadata (the model kind is not among them).

        Example:

        >>> [field.name for field in RunConfig.settings()][:3]
        ['preset', 'corpus', 'corpus_encoding']
        """
        return [field for field in dataclasses.fields(RunConfig) if field.metadata]

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
        for field in RunConfig.settings():
            if values[field.name] is None:
                values[field.name] = field.metadata["default"]
        corpus = values["corpus"]
        if isinstance(corpus, (list, tuple)) and len(corpus) == 1 and isinstance(corpus[0], str):
            values["corpus"] = corpus[0]  # one name, path or glob, as the command line gives it
        values["preset"] = DEFAULT_PRESET[kind] if self.preset is None else self.preset
        values["tokenizer"] = _tokenizer(kind, self.tokenizer, preset)
        steps = values["steps"] = _checks.positive_int(
            "steps", preset.steps if self.steps is None else self.steps
        )
        for field in ("batch_size", "seq_len", "learning_rate", "jit_compile"):
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
                    f"preset {values['preset']!r} has none; e.g. 2000 for an English corpus, "
                    "8000 for Chinese, as gpt-poet), got None."
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
        # NumPy's and TensorFlow's random seeds are 32-bit.
        _checks.integer("seed", self.seed, low=0, high=2**32 - 1)
        for field in ("samples", "sample_tokens"):
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


def _tokenizer(kind, tokenizer, preset):
    """The tokenizer setting, else the preset's, else the model kind's first; checked."""
    choices = tokenizer_choices(kind)
    if tokenizer is None:
        tokenizer = preset.tokenizer if preset.tokenizer in choices else choices[0]
    return _checks.one_of("tokenizer", tokenizer, choices)


def _attributes_doc():
    """The `Attributes:` section of `RunConfig`'s docstring, from the settings' metadata."""
    lines = ['model: "gpt" or "bert", the model kind (its `Task`).']
    for field in RunConfig.settings():
        text = f"{field.name}: {field.metadata['help']}."
        if field.metadata["doc"]:
            text += f" {field.metadata['doc']}"
        lines.append(f"{text} Defaults to {field.metadata['default_help']}.")
    indent = " " * 8
    return "\n".join(
        textwrap.fill(line, 100, initial_indent=indent, subsequent_indent=indent + "    ")
        for line in lines
    )


RunConfig.__doc__ = RunConfig.__doc__.replace("{attributes}", _attributes_doc())


def _check_name(name):
    """A run name is one directory name, so that the run stays inside `out`."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or (os.sep in name)
        or (os.altsep is not None and os.altsep in name)
        or "\0" in name
        or not _encodable(name)
    ):
        raise ValueError(
            f"`name` must be one directory name (not empty, '.' or '..', without '/', valid "
            "text), "
            f"got {name!r}."
        )


def _encodable(name):
    """Whether `name` is text the file system takes (not bytes undecodable as UTF-8)."""
    try:
        os.fsencode(name).decode("utf-8")
    except (UnicodeError, TypeError):
        return False
    return True
