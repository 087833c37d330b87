"""The `tf-bigmodels` command line (also `python -m tf_bigmodels`).

It parses and dispatches: arguments are parsed and checked before TensorFlow is loaded, so
`--help` and a mistyped flag answer at once; the work is done by the package (`train`,
`load_generator`, the tasks' `export`, `plot_run`). TensorFlow's start-up lines are hidden
unless `--verbose` is given.

Example:

    tf-bigmodels train gpt                     # nanoGPT's CPU configuration on the bundled corpus
    tf-bigmodels train bert --preset bert-mini --steps 4000
    tf-bigmodels generate runs/gpt --prompt "ROMEO:" --max-new-tokens 300
    tf-bigmodels train gpt --corpus tangshi --preset gpt-poet --name poet
    tf-bigmodels generate runs/poet --prompt "静夜思\\n李白\\n"
    tf-bigmodels export runs/gpt --no-xla
"""

import argparse
import logging
import os
import pathlib
import sys

from tf_bigmodels import _checks, _flags
from tf_bigmodels._flags import READERS, HelpFormatter, Parser, add_setting
from tf_bigmodels._startup import add_verbose_flag, load_tensorflow
from tf_bigmodels._version import __version__
from tf_bigmodels.run_directory import RunDirectory
from tf_bigmodels.serving import cli as serving_cli
from tf_bigmodels.training import records
from tf_bigmodels.training.config import PRESETS, RunConfig
from tf_bigmodels.training.errors import DirectoryInUse, TrainingDiverged

# load_corpus's advice on text that is not in the expected encoding, in the command's words.
_CORPUS_ADVICE = (
    ("encoding='gbk'", "--corpus-encoding gbk"),
    ("the file's encoding", "the file's encoding with --corpus-encoding"),
    ("errors='replace'", "--corpus-errors replace"),
    ("`encoding`", "`--corpus-encoding`"),
)
# TensorFlow's errors that are a user's to fix (raised while reading or writing files).
_TF_USER_ERRORS = "DataLoss FailedPrecondition NotFound PermissionDenied ResourceExhausted"
_WEIGHTS = ("float32", "bfloat16", "int8")


def _add_train(subparsers):
    parser = _subparser(
        subparsers,
        "train",
        "train a GPT or pre-train a BERT with model.fit",
        "Train a GPT or pre-train a BERT (WordPiece, MLM + NSP) on the bundled corpus or your "
        "own text files. Re-running the same command continues the run from its last "
        "checkpoint, and does nothing once it is finished; a setting left out takes the stored "
        "run's value. A re-run may change --steps (more steps continue a finished run), "
        "--eval-every, --eval-steps, --log-every, --samples, --export, --strategy, --jit, "
        "--steps-per-execution and --grad-accum; any other setting that differs from the "
        "stored run is refused (train a new run with --name).",
    )
    parser.add_argument("model", choices=tuple(PRESETS), help="the model kind")
    for field in RunConfig.settings():
        if field.metadata["parse"] is not None:
            add_setting(parser, field)
    quiet = "print no progress lines (default: one line per --log-every steps)"
    parser.add_argument("--quiet", action="store_const", const=0, dest="verbose", help=quiet)
    parser.set_defaults(handler=_train)


def _train(args):
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "show_tf")}
    config = RunConfig(**fields)  # every setting checked before TensorFlow loads,
    settled = records.settled(config)
    records.check_run_dir(RunDirectory(os.path.join(settled.out, settled.name)), settled)
    load_tensorflow(args.show_tf)  # and the run directory too
    from tf_bigmodels.training import train

    try:
        result = train(config)
    except ValueError as error:  # load_corpus's advice, in the command's words
        message = str(error)
        for python, flag in _CORPUS_ADVICE:
            message = message.replace(python, flag)
        raise ValueError(message) from None
    print(result.report())
    return 0


def _add_generate(subparsers):
    parser = _subparser(
        subparsers,
        "generate",
        "generate text from a trained GPT, streamed as it is produced",
        "Generate text from a run directory (its SavedModel, else its model.keras, else its "
        "newest checkpoint), a .keras file, or a SavedModel / export directory. Longer than "
        "the model's context, the context slides (its last half is kept). Only complete "
        "characters are printed.",
    )
    parser.add_argument(
        "source", help="run directory, .keras file, SavedModel directory or .tflite file"
    )
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
        "Chinese character takes 3",
    )
    length.add_argument(
        "--max-new-chars",
        type=int,
        help="how many characters to generate, whatever the tokenizer (instead of "
        "--max-new-tokens)",
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 = off")
    parser.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1] (default: off)")
    parser.add_argument("--seed", type=int, help="makes sampling reproducible (default: random)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="continuations of the prompt, decoded together and printed when done; with 1 "
        "the text is streamed as it is produced",
    )
    parser.add_argument(
        "--weights",
        choices=_WEIGHTS,
        help="decode with weights stored in this format (fewer bytes read per token); a "
        "SavedModel keeps the format it was exported with (default: as stored)",
    )
    parser.set_defaults(handler=_generate)


def _generate(args):
    # Everything is checked before anything is loaded; the prompt is never echoed if invalid.
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("`--prompt` must be valid UTF-8 text; it is not.") from None
    prompt = _flags.unescape_prompt(args.prompt)
    max_new_chars = _checks.integer("max_new_chars", args.max_new_chars, low=0, none_ok=True)
    num_samples = _checks.integer("num_samples", args.num_samples, low=1)
    if not pathlib.Path(args.source).exists():
        raise FileNotFoundError(2, "No such file or directory", str(args.source))
    if args.source.endswith(".tflite"):
        return _generate_litert(args, prompt, max_new_chars, num_samples)
    load_tensorflow(args.show_tf)
    from tf_bigmodels.export import generate_texts, stream_text
    from tf_bigmodels.models.generation import GenerationSettings
    from tf_bigmodels.training.loading import run_generator

    max_new_tokens = args.max_new_tokens if max_new_chars is None else None
    settings = _sampling(args)
    GenerationSettings(max_new_tokens or 0, **settings)  # raises on any bad setting
    generator = run_generator(args.source, weights=args.weights)
    length = dict(max_new_tokens=max_new_tokens, max_new_chars=max_new_chars)
    if num_samples == 1:
        return _print_stream(prompt, stream_text(generator, prompt, **length, **settings))
    texts = generate_texts(generator, prompt, **length, num_samples=num_samples, **settings)
    for index, text in enumerate(texts):
        print(f"--- sample {index + 1} ---\n{prompt}{text}")
    return 0


def _generate_litert(args, prompt, max_new_chars, num_samples):
    if max_new_chars is not None or num_samples != 1 or args.weights is not None:
        raise ValueError(
            "`--max-new-chars`, `--num-samples` and `--weights` must not be given with a "
            ".tflite source (its weights are fixed at export, and it decodes one text)."
        )
    from tf_bigmodels.litert import LiteRTGenerator

    generator = LiteRTGenerator(args.source)
    return _print_stream(
        prompt, generator.stream_text(prompt, args.max_new_tokens, **_sampling(args))
    )


def _sampling(args):
    return dict(
        temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, seed=args.seed
    )


def _print_stream(prompt, pieces):
    print(prompt, end="", flush=True)
    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    return 0


def _add_export(subparsers):
    parser = _subparser(
        subparsers,
        "export",
        "write a SavedModel that serves raw strings (TF Serving layout)",
        "Export a trained GPT, BERT pre-trainer or BERT classifier as a SavedModel under "
        "OUT/<version>/ (written atomically; one export at a time per directory). Options "
        "that do not apply to the model (the GPT's decoding settings for a BERT) are refused.",
    )
    parser.add_argument("source", help="run directory or .keras file")
    parser.add_argument(
        "--format",
        choices=("savedmodel", "litert"),
        default="savedmodel",
        help="savedmodel: TF Serving's layout, strings in and out; litert: a .tflite file for "
        "phones and small CPUs, with its tokenizer and a JSON description beside it, run by "
        "ai-edge-litert (weights float32 or int8 only) (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        help="export directory, or the .tflite path with --format litert (default: "
        "RUN_DIR/export, RUN_DIR/litert/model.tflite)",
    )
    parser.add_argument(
        "--tokenizer",
        help="tokenizer directory (a saved WordPiece or SentencePiece tokenizer) for a .keras "
        "file outside a run directory (default: the tokenizer the run recorded)",
    )
    parser.add_argument(
        "--version", type=READERS["positive_int"], help="version number (default: the next)"
    )
    gpt = "GPT serving_default setting"
    parser.add_argument("--max-new-tokens", type=int, help=f"{gpt} (default: half the context)")
    parser.add_argument("--temperature", type=float, help=f"{gpt}, 0 = greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, help=f"{gpt} (default: off)")
    parser.add_argument("--top-p", type=float, help=f"{gpt} (default: off)")
    parser.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        dest="jit_compile",
        help="XLA-compile the decode loop (--no-xla for TF Serving builds that reject XLA)",
    )
    parser.add_argument(
        "--weights",
        choices=_WEIGHTS,
        help="GPT weight storage: bfloat16 halves the bytes each generated token reads, int8 "
        "quarters them; logits stay float32 (default: float32)",
    )
    parser.set_defaults(handler=_export)


def _export(args):
    source = pathlib.Path(args.source)
    if not source.exists():
        raise FileNotFoundError(2, "No such file or directory", str(source))
    existing = pathlib.Path(args.out or source).absolute()
    while not existing.exists():
        existing = existing.parent
    if args.out and not existing.is_dir():  # refused before TensorFlow loads
        raise NotADirectoryError(20, "Not a directory", str(existing))
    load_tensorflow(args.show_tf)
    from tf_bigmodels.training.loading import export_source

    names = ("version", "jit_compile", "max_new_tokens", "temperature", "top_k", "top_p", "weights")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.format == "litert":
        options.pop("jit_compile")  # an XLA setting of the SavedModel's decode loop
    path = export_source(source, args.out, tokenizer=args.tokenizer, format=args.format, **options)
    print(f"{'LiteRT' if args.format == 'litert' else 'SavedModel'}: {path}")
    return 0


def _add_plot(subparsers):
    parser = _subparser(
        subparsers,
        "plot",
        "draw a run's loss curves and a layer's attention maps as PNGs",
        "Write RUN_DIR/plots/loss.png (training and validation loss) and "
        "attention_layer<N>.png (the attention of layer N for --text; the causal triangle of "
        'a GPT, both directions for BERT). Needs matplotlib: pip install "tf-bigmodels[plot]".',
    )
    parser.add_argument("run_dir", help="run directory written by `tf-bigmodels train`")
    parser.add_argument("--text", help="input of the attention map (default: a line of the corpus)")
    parser.add_argument("--layer", type=int, default=0, help="Transformer block, from 0")
    parser.add_argument("--out", help="directory for the PNGs (default: RUN_DIR/plots)")
    parser.set_defaults(handler=_plot)


def _plot(args):
    load_tensorflow(args.show_tf)
    from tf_bigmodels import plot, register_keras_objects

    register_keras_objects()
    try:
        written = plot.plot_run(args.run_dir, args.out, text=args.text, layer=args.layer)
    except ImportError as error:
        print(f"tf-bigmodels plot: error: {error}", file=sys.stderr)
        return 2
    print(f"Loss curves: {written['loss']}\nAttention maps: {written['attention']}")
    return 0


def _subparser(subparsers, name, summary, description):
    parser = subparsers.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter
    )
    add_verbose_flag(parser)
    return parser


def build_parser():
    """The argument parser of `tf-bigmodels` (subcommands train, generate, export, plot, serve).

    Example:

    >>> build_parser().parse_args(["train", "gpt", "--steps", "100"]).steps
    100
    """
    return _parsers()[0]


def _parsers():
    """The parser of `tf-bigmodels` and a dict of its subcommands' parsers."""
    parser = Parser(
        prog="tf-bigmodels",
        description="Train, sample from and export the Transformer, GPT and BERT of tf_bigmodels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_generate, _add_export, _add_plot):
        add(subparsers)
    # The server's command line lives with the server, which must run where only an export
    # exists; it adds its own subcommand.
    serving_cli.add_parser(subparsers)
    return parser, subparsers.choices


def _is_user_error(error):
    if isinstance(error, (ValueError, TypeError, OSError, TrainingDiverged, DirectoryInUse)):
        return True
    if "tensorflow" not in sys.modules:  # loaded only when a command needs it
        return False
    import tensorflow as tf

    return isinstance(
        error, tuple(getattr(tf.errors, f"{n}Error") for n in _TF_USER_ERRORS.split())
    )


def _one_line(error):
    """The message of `error` on a single line."""
    if isinstance(error, OSError) and error.strerror:
        filename = getattr(error, "filename", None)
        error = error.strerror + (f": {filename}" if filename else "")
    return " ".join(str(getattr(error, "message", None) or error).split())


def main(argv=None):
    """Runs `tf-bigmodels`; returns the exit status (0 ok, 2 a failure, 130 Ctrl-C).

    Every failure a user can cause or meet (a bad flag or file, a refused re-run, a diverged run,
    a full disk, a directory another process is writing) is one line on stderr and status 2,
    naming each setting by the flag that sets it (`--max-new-tokens`, not the Python API's
    `max_new_tokens`). Without arguments it prints the help.

    Example:

    >>> main(["train", "gpt", "--seed", "99999999999"])
    2
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    # TensorFlow's INFO lines ("Assets written to" a temporary path) say nothing to a user.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    parser, commands = _parsers()
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
        message = _checks.in_flag_words(_one_line(error), commands[args.command])
        print(f"tf-bigmodels {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ntf-bigmodels: interrupted. Re-run the same command to resume from the last "
            "checkpoint.",
            file=sys.stderr,
        )
        return 130
