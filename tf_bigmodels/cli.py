"""The `tf-bigmodels` command line (also `python -m tf_bigmodels`).

Arguments are parsed and checked before TensorFlow is loaded, so `--help` and a mistyped flag
answer at once; each subcommand imports what it needs when it runs.

Example:

    tf-bigmodels train gpt                     # nanoGPT's CPU configuration on the bundled corpus
    tf-bigmodels train bert --preset bert-mini --steps 4000
    tf-bigmodels generate runs/gpt --prompt "ROMEO:" --max-new-tokens 300
    tf-bigmodels train gpt --corpus tangshi --preset gpt-poet --name poet
    tf-bigmodels generate runs/poet --prompt "静夜思\n李白\n"
    tf-bigmodels export runs/gpt --no-xla
"""

import argparse
import contextlib
import json
import logging
import os
import pathlib
import re
import shlex
import sys

from tf_bigmodels.training.config import (
    DEFAULT_EVAL_EVERY,
    PRECISIONS,
    STRATEGIES,
    TOKENIZERS,
    RunConfig,
    tokenizer_choices,
)
from tf_bigmodels.training.presets import DEFAULT_PRESET, PRESETS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Mistakes a user can make (bad flags, files, settings, a full disk) become one line, exit 2.
_USER_ERRORS = (ValueError, TypeError, OSError)
# TensorFlow's errors that mean the same (raised while reading or writing files); named here so
# that this module does not import TensorFlow before the arguments are checked.
_TF_USER_ERRORS = (
    "DataLossError",
    "FailedPreconditionError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
)
# The bundled corpora (`tf_bigmodels.data.corpus.BUNDLED_CORPORA`), named here so that the
# arguments are checked without importing TensorFlow (a test checks the two lists agree).
_BUNDLED_CORPORA = ("shakespeare", "tangshi", "chinese_reviews")
# Backslash escapes `--prompt` interprets, as a shell's `echo -e` or Python's string literals do.
_PROMPT_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
# load_corpus's advice on text that is not in the expected encoding, in the command's words.
_CORPUS_ADVICE = (
    ("encoding='gbk'", "--corpus-encoding gbk"),
    ("the file's encoding", "the file's encoding with --corpus-encoding"),
    ("errors='replace'", "--corpus-errors replace"),
)
# The package's own errors that end a command: a diverged run, a directory another process holds.
_RUN_ERRORS = ("TrainingDiverged", "DirectoryInUse")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Help text as written, with the default of every flag that has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" not in text
            and "default" not in text
            and action.default not in (None, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _one_line(error):
    """The message of `error` on a single line."""
    return " ".join(str(error).split())


@contextlib.contextmanager
def _loading(path):
    """Turns a model file that cannot be read into a one-line ValueError naming it.

    A run directory records the package version that wrote it; when that differs from ours, the
    message says so, since an older run's model may use classes this version lacks.
    """
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001 (Keras and TensorFlow raise many types here)
        from tf_bigmodels import __version__

        path = pathlib.Path(path)
        hint = ""
        for config in (
            path / "config.json",
            path.parent / "config.json",
            path.parent.parent / "config.json",
        ):
            try:
                version = json.loads(config.read_text(encoding="utf-8")).get("version")
            except (OSError, ValueError, AttributeError):
                continue
            if version != __version__:
                hint = (
                    f" (its run directory was written by tf_bigmodels {version!r}, this is "
                    f"{__version__}: retrain with this version or load it with that one)"
                )
            break
        raise ValueError(f"cannot load {path}: {_one_line(error)}{hint}") from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _preset_default(field):
    """'the preset's (gpt-nano: 2000, bert-tiny: 2000)': a default that comes from the preset."""
    values = ", ".join(
        f"{DEFAULT_PRESET[kind]}: {_or_none(getattr(PRESETS[kind][DEFAULT_PRESET[kind]], field))}"
        for kind in PRESETS
    )
    return f"default: the preset's; {values}"


def _or_none(value):
    return "none" if value is None else value


def _preset_model_default(field):
    values = ", ".join(
        f"{DEFAULT_PRESET[kind]}: {PRESETS[kind][DEFAULT_PRESET[kind]].model[field]}"
        for kind in PRESETS
    )
    return f"default: the preset's; {values}"


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a GPT or pre-train a BERT with model.fit",
        formatter_class=_HelpFormatter,
        description="Train a GPT or pre-train a BERT (WordPiece, MLM + NSP) on the bundled "
        "corpus or your own text files. Re-running the same command continues the run from "
        "its last checkpoint, and does nothing once it is finished. A re-run may change "
        "--steps (more steps continue a finished run), --eval-every, --eval-steps, "
        "--log-every, --samples, --export, --strategy, --jit, --steps-per-execution and "
        "--grad-accum; any other setting that differs from the stored run is refused (train "
        "a new run with --name).",
    )
    parser.add_argument("model", choices=tuple(PRESETS), help="the model kind")
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=["shakespeare"],
        metavar="PATH_OR_GLOB",
        help="a bundled corpus: 'shakespeare' (tiny Shakespeare), 'tangshi' (全唐诗, 56,053 "
        "poems, one a document) or 'chinese_reviews' (17,363 product reviews); or UTF-8 text "
        "files / globs, one document per file (default: shakespeare)",
    )
    parser.add_argument(
        "--corpus-encoding",
        default="utf-8",
        help="the text encoding of the corpus files, e.g. gbk for files saved by Chinese "
        "Windows software",
    )
    parser.add_argument(
        "--corpus-errors",
        choices=("strict", "replace"),
        default="strict",
        help="bytes of the corpus that are not valid in its encoding: an error (strict), or "
        "replaced by U+FFFD",
    )
    tokenizers = {kind: tokenizer_choices(kind) for kind in PRESETS}
    parser.add_argument(
        "--tokenizer",
        choices=sorted(TOKENIZERS),
        help="; ".join(f"{kind}: {', '.join(names)}" for kind, names in tokenizers.items())
        + " (default: the preset's, else the first of the model's; gpt-poet: sentencepiece)",
    )
    parser.add_argument(
        "--preset",
        help="model size and training settings: "
        + "; ".join(f"{kind.upper()} {', '.join(PRESETS[kind])}" for kind in PRESETS)
        + f" (default: {', '.join(DEFAULT_PRESET.values())})",
    )
    parser.add_argument(
        "--steps", type=_positive_int, help=f"training steps (batches) ({_preset_default('steps')})"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        help=f"global batch size ({_preset_default('batch_size')})",
    )
    parser.add_argument(
        "--seq-len", type=_positive_int, help=f"tokens per example ({_preset_default('seq_len')})"
    )
    parser.add_argument(
        "--lr",
        type=_positive_float,
        dest="learning_rate",
        help=f"peak learning rate ({_preset_default('learning_rate')})",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        help="linear warm-up steps (default: the preset's, at most a tenth of --steps)",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.1, help="AdamW weight decay of the kernels"
    )
    parser.add_argument(
        "--clipnorm", type=_positive_float, default=1.0, help="global-norm gradient clipping"
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        dest="gradient_accumulation_steps",
        help="run each batch as N micro-batches: less memory, same update (default: off)",
    )
    for name in ("d-model", "num-heads", "dff", "num-layers"):
        field = name.replace("-", "_")
        parser.add_argument(
            f"--{name}", type=_positive_int, help=f"model size ({_preset_model_default(field)})"
        )
    parser.add_argument(
        "--dropout",
        type=float,
        dest="rate",
        help=f"dropout rate ({_preset_model_default('rate')})",
    )
    parser.add_argument(
        "--vocab-size",
        type=_positive_int,
        help="size of a learned vocabulary (WordPiece, SentencePiece); not for the byte "
        f"tokenizer ({_preset_default('vocab_size')})",
    )
    parser.add_argument(
        "--init-from",
        metavar="SOURCE",
        help="start a new run (step 0, new optimizer) from trained weights: a run directory, "
        "a .keras file, or a keras-hub BERT preset directory. The run keeps the source's "
        "tokenizer, and its shape (sizes, --seq-len, vocabulary) must be the source's; "
        "settings not given are the source run's (default: random weights)",
    )
    parser.add_argument(
        "--lora-rank",
        type=_positive_int,
        help="train LoRA adapters of this rank on the model instead of all its weights "
        "(default: off)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="tf.distribute strategy: auto picks a TPU, several workers (TF_CONFIG), several "
        "GPUs, or one device",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute precision (mixed_float16 uses loss scaling)",
    )
    parser.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="jit_compile",
        help="compile the train step with XLA (default: chosen: on, except with "
        "--precision mixed_bfloat16 on a CPU with bf16 instructions and a model at least 512 "
        "wide, where TensorFlow's oneDNN kernels are faster)",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=_positive_int,
        default=1,
        help="batches per call into the compiled train step",
    )
    parser.add_argument(
        "--eval-every",
        type=_positive_int,
        help=f"validate and checkpoint every N steps (default: min({DEFAULT_EVAL_EVERY}, "
        "--steps)); --steps must be a multiple of it",
    )
    parser.add_argument("--eval-steps", type=_positive_int, default=20, help="validation batches")
    parser.add_argument(
        "--log-every",
        type=_positive_int,
        default=10,
        help="log the mean loss of every N steps (console, metrics.jsonl, TensorBoard)",
    )
    parser.add_argument("--out", default="runs", help="parent of the run directory")
    parser.add_argument(
        "--name", help="run directory name, one directory under --out (default: the model kind)"
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a run found in the run directory; with --no-resume an existing run is "
        "an error",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds data order, masks, dropout, initialisation"
    )
    parser.add_argument("--samples", type=int, default=2, help="GPT samples printed at the end")
    parser.add_argument(
        "--sample-tokens", type=int, default=200, help="length of each sample, in tokens"
    )
    parser.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write a SavedModel at the end",
    )
    parser.add_argument(
        "--quiet",
        action="store_const",
        const=0,
        default=1,
        dest="verbose",
        help="print no progress lines (default: one line per --log-every steps)",
    )
    parser.set_defaults(handler=_train)


def _train(args):
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    corpus = fields.pop("corpus")
    bundled = len(corpus) == 1 and corpus[0] in _BUNDLED_CORPORA
    config = RunConfig(**fields, corpus=corpus[0] if bundled else corpus)
    config.resolved()  # every setting checked before TensorFlow loads

    from tf_bigmodels import load_everything

    load_everything()
    from tf_bigmodels.training import TASKS, train

    try:
        result = train(config)
    except ValueError as error:
        message = str(error)
        if "errors='replace'" in message:  # the Python API's advice, in the command's words
            for python, flag in _CORPUS_ADVICE:
                message = message.replace(python, flag)
            raise ValueError(message) from None
        raise
    if not result.history and result.export_path is None:
        print(
            f"\nThe run in {result.run_dir} is complete at step {result.step}; nothing to do "
            "(pass a larger --steps to train further)."
        )
    else:
        print(f"\nRun directory: {result.run_dir} (step {result.step})")
    if result.history.get("val_loss"):
        print(_validation_summary(result.history))
    for index, sample in enumerate(result.samples):
        print(f"\n--- sample {index + 1} ---\n{sample}")
    if result.export_path:
        print(f"\nSavedModel: {result.export_path}")
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(str(result.run_dir / 'logs'))}")
    if TASKS[config.model].generates_text:
        print(
            "Try it: tf-bigmodels generate "
            f"{shlex.quote(str(result.run_dir))} --prompt {shlex.quote(_first_prompt(result))}"
        )
    return 0


def _validation_summary(history):
    """'Validation (last): loss 1.9321 per token (perplexity 6.90), 2.7874 bits per character'."""
    loss = history["val_loss"][-1]
    parts = [f"loss {loss:.4f}"]
    if history.get("val_perplexity"):
        parts[0] += f" per token (perplexity {history['val_perplexity'][-1]:.2f})"
    if history.get("val_bits_per_char"):
        parts.append(f"{history['val_bits_per_char'][-1]:.4f} bits per character")
    return "Validation (last): " + ", ".join(parts)


def _first_prompt(result):
    """The first sample's prompt line with its newline written `\\n` (generate reads it as
    one), or a short default."""
    if result.samples and result.samples[0].split("\n", 1)[0].strip():
        return result.samples[0].split("\n", 1)[0].replace("\\", "\\\\") + "\\n"
    return "ROMEO:"


def _add_generate(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a trained GPT, streamed as it is produced",
        description="Generate text from a run directory (its SavedModel, else its model.keras, "
        "else its newest checkpoint), a .keras file, or a SavedModel / export "
        "directory. Longer than the model's context, the context slides (its last half is "
        "kept). Only complete characters are printed.",
    )
    parser.add_argument("source", help="run directory, .keras file or SavedModel directory")
    parser.add_argument(
        "--prompt",
        default="",
        help="text to continue; \\n in it is a newline and \\t a tab (\\\\ for a backslash), "
        'so --prompt "静夜思\\n李白\\n" gives a title and an author line (default: a new '
        "document)",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--max-new-tokens",
        type=int,
        default=200,
        help="how many tokens to generate; with the byte tokenizer a token is a byte, so a "
        "Chinese character takes 3 (default: %(default)s)",
    )
    length.add_argument(
        "--max-new-chars",
        type=int,
        help="how many characters to generate, whatever the tokenizer (instead of "
        "--max-new-tokens)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)"
    )
    parser.add_argument("--top-k", type=int, default=40, help="0 = off (default: %(default)s)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1] (default: off)")
    parser.add_argument(
        "--seed", type=int, help="makes sampling reproducible (default: a random seed)"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="continuations of the prompt, decoded together and printed when done; with 1 "
        "the text is streamed as it is produced (default: %(default)s)",
    )
    parser.add_argument(
        "--weights",
        choices=("float32", "bfloat16", "int8"),
        help="decode with weights stored in this format (fewer bytes read per token); a "
        "SavedModel keeps the format it was exported with (default: as stored)",
    )
    parser.set_defaults(handler=_generate)


def _generate(args):
    import tensorflow as tf

    from tf_bigmodels import _checks
    from tf_bigmodels.export import generate_texts, load_generator, stream_text
    from tf_bigmodels.models.generation import GenerationSettings

    # Everything is checked before anything is loaded; the prompt is never echoed if invalid.
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("`--prompt` must be valid UTF-8 text; it is not.") from None
    prompt = unescape_prompt(args.prompt)
    max_new_chars = _checks.integer("max_new_chars", args.max_new_chars, low=0, none_ok=True)
    num_samples = _checks.integer("num_samples", args.num_samples, low=1)
    max_new_tokens = args.max_new_tokens if max_new_chars is None else None
    settings = dict(
        temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, seed=args.seed
    )
    GenerationSettings(max_new_tokens or 0, **settings)  # raises on any bad setting
    source, tokenizer = _resolve_run_source(args.source)
    with _loading(args.source):
        generator = load_generator(source, tokenizer, weights=args.weights)
    length = dict(max_new_tokens=max_new_tokens, max_new_chars=max_new_chars)
    try:
        if num_samples == 1:
            print(prompt, end="", flush=True)
            for piece in stream_text(generator, prompt, **length, **settings):
                print(piece, end="", flush=True)
            print()
            return 0
        texts = generate_texts(generator, prompt, **length, num_samples=num_samples, **settings)
    except tf.errors.InvalidArgumentError as error:  # the SavedModel's in-graph checks
        raise ValueError(_graph_error(error)) from None
    for index, text in enumerate(texts):
        print(f"--- sample {index + 1} ---\n{prompt}{text}")
    return 0


def unescape_prompt(text):
    r"""`text` with the escapes `\n` (newline), `\t` (tab) and `\\` (backslash) read as the
    characters they stand for; any other backslash stays as it is.

    A shell passes `"静夜思\n李白\n"` to the command as a backslash and an `n`, so
    `tf-bigmodels generate --prompt` reads the escapes: the README's commands then give a
    prompt of several lines on any shell.

    Args:
        text: str. The prompt as typed.

    Example:

    >>> unescape_prompt(r"静夜思\n李白\n")
    '静夜思\n李白\n'
    >>> unescape_prompt(r"C:\\new \d")
    'C:\\new \\d'
    """
    return re.sub(r"\\([nt\\])", lambda match: _PROMPT_ESCAPES[match.group(1)], text)


def _graph_error(error):
    """The part of an in-graph check's error that says what was wrong (it names the input)."""
    named = re.search(r"`[^`]+`[^\]\n]*", error.message)
    return named.group(0).strip() if named else _one_line(error.message)


def _resolve_run_source(source):
    """`(source, tokenizer)` for `load_generator`. A run directory stands for its newest
    SavedModel (which carries its tokenizer), else its `model.keras`, else the model rebuilt from
    its newest checkpoint (an interrupted or still running training), with the tokenizer the run
    recorded; so does a `.keras` file inside a run directory (`model.keras`, `best.keras`)."""
    path = pathlib.Path(source)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_file() and path.suffix == ".keras" and (path.parent / "config.json").is_file():
        from tf_bigmodels.training import load_run_tokenizer

        _check_gpt_run(path.parent)
        return str(path), load_run_tokenizer(path.parent)
    if not (path / "config.json").is_file():
        return str(path), None
    run_dir = path
    _check_gpt_run(run_dir)
    if (run_dir / "export").is_dir() and any(
        p.name.isdigit() for p in (run_dir / "export").iterdir()
    ):
        return str(run_dir / "export"), None
    from tf_bigmodels.training import load_run_model, load_run_tokenizer

    if (run_dir / "model.keras").is_file():
        return str(run_dir / "model.keras"), load_run_tokenizer(run_dir)
    model, tokenizer, step = load_run_model(run_dir)
    logging.getLogger("tf_bigmodels").info("Using the checkpoint of step %d.", step)
    return model, tokenizer


def _check_gpt_run(run_dir):
    try:
        kind = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in (None, "gpt"):
        raise ValueError(
            f"{run_dir} is a {kind!r} run; generate continues text with a GPT run "
            "(tf-bigmodels train gpt)."
        )


def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a SavedModel that serves raw strings (TF Serving layout)",
        formatter_class=_HelpFormatter,
        description="Export a trained GPT, BERT pre-trainer or BERT classifier as a SavedModel "
        "under OUT/<version>/ (written atomically; one export at a time per directory).",
    )
    parser.add_argument("source", help="run directory or .keras file")
    parser.add_argument("--out", help="export directory (default: RUN_DIR/export)")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer directory (a saved WordPiece or SentencePiece tokenizer) for a .keras "
        "file outside a run directory (default: the tokenizer the run recorded)",
    )
    parser.add_argument(
        "--version", type=_positive_int, help="version number (default: the next free number)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, help="GPT serving_default setting (default: half the context)"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="GPT serving_default setting (0 = greedy)"
    )
    parser.add_argument("--top-k", type=int, help="GPT serving_default setting (default: off)")
    parser.add_argument("--top-p", type=float, help="GPT serving_default setting (default: off)")
    parser.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="XLA-compile the decode loop (--no-xla for TF Serving builds that reject XLA)",
    )
    parser.add_argument(
        "--weights",
        choices=("float32", "bfloat16", "int8"),
        default="float32",
        help="GPT weight storage: bfloat16 halves the bytes each generated token reads, int8 "
        "quarters them; logits stay float32 (default: %(default)s)",
    )
    parser.set_defaults(handler=_export)


def _export(args):
    source = pathlib.Path(args.source)
    run_dir = source if source.is_dir() else source.parent
    model_path = source / "model.keras" if source.is_dir() else source
    if not model_path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(model_path))
    out = pathlib.Path(args.out) if args.out else run_dir / "export"
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(existing))

    from tf_bigmodels import load_everything

    load_everything()
    import keras
    import tensorflow as tf

    from tf_bigmodels.export import export_bert, export_gpt
    from tf_bigmodels.models import BERTClassifier, BERTPretrainer, GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer, SentencePieceTokenizer, WordPieceTokenizer
    from tf_bigmodels.training import load_run_tokenizer
    from tf_bigmodels.training.storage import lock

    with _loading(model_path):
        model = keras.saving.load_model(model_path)
    if not isinstance(model, (GPTModel, BERTPretrainer, BERTClassifier)):
        raise ValueError(
            f"{model_path} holds a {type(model).__name__}; export takes a GPTModel, "
            "BERTPretrainer or BERTClassifier."
        )
    if args.tokenizer:
        saved = pathlib.Path(args.tokenizer)
        # SentencePieceTokenizer.save writes one sentencepiece.model; WordPiece its vocabulary.
        learned = (
            SentencePieceTokenizer
            if (saved / "sentencepiece.model").is_file()
            else WordPieceTokenizer
        )
        tokenizer = learned.load(saved)
    elif (run_dir / "config.json").is_file():
        tokenizer = load_run_tokenizer(run_dir)
    elif isinstance(model, GPTModel):
        tokenizer = ByteTokenizer()
    else:
        tokenizer = WordPieceTokenizer.load(run_dir / "tokenizer")
    # One writer per run directory (a training run exports into it too), else per --out.
    inside_run = (run_dir / "config.json").is_file() and out.resolve().is_relative_to(
        run_dir.resolve()
    )
    try:
        with lock(run_dir if inside_run else out, "export"):
            if isinstance(model, GPTModel):
                max_new_tokens = (
                    model.max_length // 2 if args.max_new_tokens is None else args.max_new_tokens
                )
                path = export_gpt(
                    model,
                    tokenizer,
                    str(out),
                    version=args.version,
                    max_new_tokens=max_new_tokens,
                    temperature=args.temperature,
                    top_k=args.top_k,
                    top_p=args.top_p,
                    jit_compile=args.xla,
                    weights=args.weights,
                )
            else:
                path = export_bert(
                    model, tokenizer, str(out), version=args.version, jit_compile=args.xla
                )
    except (OSError, tf.errors.OpError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else error.strerror
        raise OSError(
            f"cannot write the SavedModel under {out}: {_one_line(message or error)}"
        ) from None
    print(f"SavedModel: {path}")
    return 0


def _add_plot(subparsers):
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's loss curves and a layer's attention maps as PNGs",
        formatter_class=_HelpFormatter,
        description="Write RUN_DIR/plots/loss.png (training and validation loss) and "
        "attention_layer<N>.png (the attention of layer N for --text; the causal "
        "triangle of a GPT, both directions for BERT). Needs matplotlib: "
        'pip install "tf-bigmodels[plot]".',
    )
    parser.add_argument("run_dir", help="run directory written by `tf-bigmodels train`")
    parser.add_argument("--text", help="input of the attention map (default: a line of the corpus)")
    parser.add_argument("--layer", type=int, default=0, help="Transformer block, from 0")
    parser.add_argument("--out", help="directory for the PNGs (default: RUN_DIR/plots)")
    parser.set_defaults(handler=_plot)


def _plot(args):
    from tf_bigmodels import load_everything

    load_everything()
    from tf_bigmodels import plot

    try:
        written = plot.plot_run(args.run_dir, args.out, text=args.text, layer=args.layer)
    except ImportError as error:
        print(f"tf-bigmodels plot: error: {error}", file=sys.stderr)
        return 2
    print(f"Loss curves: {written['loss']}\nAttention maps: {written['attention']}")
    return 0


def build_parser():
    """The argument parser of `tf-bigmodels` (subcommands train, generate, export, plot).

    Example:

    >>> build_parser().parse_args(["train", "gpt", "--steps", "100"]).steps
    100
    """
    parser = _Parser(
        prog="tf-bigmodels",
        description="Train, sample from and export the Transformer, GPT and BERT of tf_bigmodels.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_generate(subparsers)
    _add_export(subparsers)
    _add_plot(subparsers)
    from tf_bigmodels.serving import cli as serving_cli

    serving_cli.add_parser(subparsers)
    return parser


def _is_user_error(error):
    if isinstance(error, _USER_ERRORS):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & set(_RUN_ERRORS):
        return True
    # TensorFlow's own errors are told apart by name: it is loaded only when a command needs it.
    return "tensorflow" in sys.modules and bool(names & set(_TF_USER_ERRORS))


def _message(error):
    if isinstance(error, OSError) and error.strerror:
        filename = getattr(error, "filename", None)
        return error.strerror + (f": {filename}" if filename else "")
    return getattr(error, "message", None) or str(error)


def main(argv=None):
    """Runs `tf-bigmodels`; returns the exit status (0 ok, 2 a failure, 130 Ctrl-C).

    Every failure a user can cause or meet (a bad flag or file, a refused re-run, a diverged run,
    a full disk, a directory another process is writing) is one line on stderr and status 2.
    Without arguments it prints the help.

    Example:

    >>> main(["train", "gpt", "--steps", "0"])  # doctest: +SKIP
    2
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    # TensorFlow's INFO lines ("Assets written to" a temporary path) say nothing to a user.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"tf-bigmodels {args.command}: error: {_one_line(_message(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ntf-bigmodels: interrupted. Re-run the same command to resume from the last "
            "checkpoint.",
            file=sys.stderr,
        )
        return 130
