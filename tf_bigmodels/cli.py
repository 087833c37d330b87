"""The `tf-bigmodels` command line (also `python -m tf_bigmodels`).

Example:

    tf-bigmodels train gpt                     # nanoGPT's CPU configuration on the bundled corpus
    tf-bigmodels train bert --preset bert-mini --steps 4000
    tf-bigmodels generate runs/gpt --prompt "ROMEO:" --max-new-tokens 300
    tf-bigmodels export runs/gpt --no-xla
"""

import argparse
import contextlib
import json
import logging
import os
import pathlib
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Mistakes a user can make (bad flags, files, settings) become one line and exit status 2.
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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


def _add_train(subparsers):
    from tf_bigmodels.training.presets import BERT_PRESETS, GPT_PRESETS
    from tf_bigmodels.training.run import PRECISIONS
    from tf_bigmodels.training.strategy import STRATEGIES

    parser = subparsers.add_parser(
        "train",
        help="train a GPT or pre-train a BERT with model.fit",
        description="Train a GPT (byte-level) or pre-train a BERT (WordPiece, MLM + NSP) on the "
        "bundled corpus or your own text files. Re-running the same command resumes "
        "from the last checkpoint.",
    )
    parser.add_argument("model", choices=("gpt", "bert"))
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=["shakespeare"],
        metavar="PATH_OR_GLOB",
        help="'shakespeare' (bundled) or UTF-8 text files / globs (one document per file)",
    )
    parser.add_argument(
        "--preset", help=f"model size: GPT {sorted(GPT_PRESETS)}, BERT {sorted(BERT_PRESETS)}"
    )
    parser.add_argument("--steps", type=_positive_int, help="training steps (batches)")
    parser.add_argument("--batch-size", type=_positive_int, help="global batch size")
    parser.add_argument("--seq-len", type=_positive_int, help="tokens per example")
    parser.add_argument(
        "--lr", type=_positive_float, dest="learning_rate", help="peak learning rate"
    )
    parser.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument(
        "--clipnorm", type=_positive_float, default=1.0, help="global-norm gradient clipping"
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        dest="gradient_accumulation_steps",
        help="run each batch as N micro-batches (less memory, same update)",
    )
    for name in ("d-model", "num-heads", "dff", "num-layers", "vocab-size"):
        parser.add_argument(f"--{name}", type=_positive_int, help="override the preset")
    parser.add_argument("--dropout", type=float, dest="rate", help="override the preset")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=True,
        dest="jit_compile",
        help="compile the train step with XLA",
    )
    parser.add_argument("--steps-per-execution", type=_positive_int, default=1)
    parser.add_argument(
        "--eval-every",
        type=_positive_int,
        default=250,
        help="validate and checkpoint every N steps",
    )
    parser.add_argument("--eval-steps", type=_positive_int, default=20)
    parser.add_argument("--out", default="runs", help="parent of the run directory")
    parser.add_argument("--name", help="run directory name (default: the model kind)")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a run found in the run directory (default); with "
        "--no-resume an existing run is an error",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=2, help="GPT samples printed at the end")
    parser.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write a SavedModel at the end",
    )
    parser.set_defaults(handler=_train)


def _train(args):
    from tf_bigmodels.training import RunConfig, TrainingDiverged, train

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    corpus = fields.pop("corpus")
    config = RunConfig(**fields, corpus=corpus[0] if corpus == ["shakespeare"] else corpus)
    try:
        result = train(config)
    except TrainingDiverged as error:
        print(f"tf-bigmodels: {error}", file=sys.stderr)
        return 1
    print(f"\nRun directory: {result.run_dir} (step {result.step})")
    for index, sample in enumerate(result.samples):
        print(f"\n--- sample {index + 1} ---\n{sample}")
    if result.export_path:
        print(f"\nSavedModel: {result.export_path}")
    print(f"TensorBoard: tensorboard --logdir {result.run_dir / 'logs'}")
    return 0


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
    parser.add_argument("--prompt", default="", help="text to continue (default: a new document)")
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
    max_new_chars = _checks.integer("max_new_chars", args.max_new_chars, low=0, none_ok=True)
    num_samples = _checks.integer("num_samples", args.num_samples, low=1)
    max_new_tokens = args.max_new_tokens if max_new_chars is None else None
    settings = dict(
        temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, seed=args.seed
    )
    GenerationSettings(max_new_tokens or 0, **settings)  # raises on any bad setting
    source = _resolve_run_source(args.source)
    with _loading(args.source):
        generator = load_generator(source)
    length = dict(max_new_tokens=max_new_tokens, max_new_chars=max_new_chars)
    try:
        if num_samples == 1:
            print(args.prompt, end="", flush=True)
            for piece in stream_text(generator, args.prompt, **length, **settings):
                print(piece, end="", flush=True)
            print()
            return 0
        texts = generate_texts(
            generator, args.prompt, **length, num_samples=num_samples, **settings
        )
    except tf.errors.InvalidArgumentError as error:  # the SavedModel's in-graph checks
        raise ValueError(_graph_error(error)) from None
    for index, text in enumerate(texts):
        print(f"--- sample {index + 1} ---\n{args.prompt}{text}")
    return 0


def _graph_error(error):
    """The part of an in-graph check's error that says what was wrong (it names the input)."""
    named = re.search(r"`[^`]+`[^\]\n]*", error.message)
    return named.group(0).strip() if named else _one_line(error.message)


def _resolve_run_source(source):
    """A run directory stands for its newest SavedModel, else its `model.keras`, else the model
    rebuilt from its newest checkpoint (an interrupted or still running training)."""
    run_dir = pathlib.Path(source)
    if not run_dir.exists():
        raise FileNotFoundError(2, "No such file or directory", str(run_dir))
    if (run_dir / "config.json").is_file():
        try:
            kind = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("model")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind not in (None, "gpt"):
            raise ValueError(
                f"{run_dir} is a {kind!r} run; generate continues text with a GPT run "
                "(tf-bigmodels train gpt)."
            )
        if (run_dir / "export").is_dir() and any(
            p.name.isdigit() for p in (run_dir / "export").iterdir()
        ):
            return str(run_dir / "export")
        if (run_dir / "model.keras").is_file():
            return str(run_dir / "model.keras")
        from tf_bigmodels.training import load_run_model

        model, _, step = load_run_model(run_dir)
        logging.getLogger("tf_bigmodels").info("Using the checkpoint of step %d.", step)
        return model
    return str(run_dir)


def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a SavedModel that serves raw strings (TF Serving layout)",
        description="Export a trained GPT, BERT pre-trainer or BERT classifier as a SavedModel "
        "under OUT/<version>/ (written atomically).",
    )
    parser.add_argument("source", help="run directory or .keras file")
    parser.add_argument("--out", help="export directory (default: RUN_DIR/export)")
    parser.add_argument(
        "--tokenizer",
        help="WordPiece tokenizer directory for a BERT .keras file (default: RUN_DIR/tokenizer)",
    )
    parser.add_argument("--version", type=_positive_int, help="default: the next free number")
    parser.add_argument(
        "--max-new-tokens", type=int, help="GPT serving_default setting (default: half the context)"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="GPT serving_default setting (0 = greedy)"
    )
    parser.add_argument("--top-k", type=int, help="GPT serving_default setting")
    parser.add_argument("--top-p", type=float, help="GPT serving_default setting")
    parser.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="XLA-compile the decode loop (--no-xla for TF Serving builds that reject XLA)",
    )
    parser.set_defaults(handler=_export)


def _export(args):
    import keras

    from tf_bigmodels.export import export_bert, export_gpt
    from tf_bigmodels.models import BERTClassifier, BERTPretrainer, GPTModel
    from tf_bigmodels.tokenizers import ByteTokenizer, WordPieceTokenizer

    source = pathlib.Path(args.source)
    run_dir = source if source.is_dir() else source.parent
    model_path = source / "model.keras" if source.is_dir() else source
    if not model_path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(model_path))
    with _loading(model_path):
        model = keras.saving.load_model(model_path)
    if not isinstance(model, (GPTModel, BERTPretrainer, BERTClassifier)):
        raise ValueError(
            f"{model_path} holds a {type(model).__name__}; export takes a GPTModel, "
            "BERTPretrainer or BERTClassifier."
        )
    out = args.out or str(run_dir / "export")
    if isinstance(model, GPTModel):
        max_new_tokens = (
            model.max_length // 2 if args.max_new_tokens is None else args.max_new_tokens
        )
        path = export_gpt(
            model,
            ByteTokenizer(),
            out,
            version=args.version,
            max_new_tokens=max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            jit_compile=args.xla,
        )
    else:
        tokenizer = WordPieceTokenizer.load(args.tokenizer or run_dir / "tokenizer")
        path = export_bert(model, tokenizer, out, version=args.version, jit_compile=args.xla)
    print(f"SavedModel: {path}")
    return 0


def _add_plot(subparsers):
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's loss curves and a layer's attention maps as PNGs",
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
    return parser


def main(argv=None):
    """Runs `tf-bigmodels`; returns the exit status (0 ok, 1 failed run, 2 usage, 130 Ctrl-C).

    Example:

    >>> main(["train", "gpt", "--preset", "gpt-test", "--steps", "20", "--eval-every", "10"])
    0
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except _USER_ERRORS as error:
        message = error.strerror if isinstance(error, OSError) and error.strerror else error
        filename = getattr(error, "filename", None)
        print(
            f"tf-bigmodels {args.command}: error: {_one_line(message)}"
            + (f": {filename}" if filename else ""),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "\ntf-bigmodels: interrupted. Re-run the same command to resume from the last "
            "checkpoint.",
            file=sys.stderr,
        )
        return 130
