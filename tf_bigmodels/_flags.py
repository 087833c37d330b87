"""argparse pieces of the command line: one-line errors, defaults in the help, and the flags of
`tf-bigmodels train` made from `RunConfig`'s description of its settings (each help text and
default is written once, in the field's metadata)."""

import argparse
import re

_PROMPT_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one `--help` away).

    Example:

    >>> Parser(prog="tf-bigmodels").parse_args(["--nope"])
    Traceback (most recent call last):
    SystemExit: 2
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Help text as written, with the default of every flag that has one.

    Example:

    >>> parser = Parser(prog="p", formatter_class=HelpFormatter)
    >>> _ = parser.add_argument("--top-k", type=int, default=40, help="0 = off")
    >>> "0 = off (default: 40)" in parser.format_help()
    True
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _positive(kind, noun):
    """A reader of positive numbers for argparse, its error in one line."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value

    return parse


# How `tf-bigmodels train` reads each kind of setting (`parse` in RunConfig's field metadata).
READERS = dict(int=int, float=float, str=str, positive_int=_positive(int, "integer"))
READERS["positive_float"] = _positive(float, "number")


def add_setting(parser, field):
    """One flag of `train`, made from a `RunConfig` field's metadata; left out, it is None.

    Example:

    >>> from tf_bigmodels.training.config import RunConfig
    >>> parser = Parser(prog="train")
    >>> for field in RunConfig.settings()[:8]:
    ...     add_setting(parser, field)
    >>> args = parser.parse_args(["--steps", "5"])
    >>> args.steps, args.corpus
    (5, None)
    """
    meta = field.metadata
    flag = flag_of(field)
    help_text = f"{meta['help']} (default: {meta['default_help']})"
    kwargs = dict(dest=field.name, default=None, help=help_text)
    if meta["parse"] == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(meta["parse"], tuple):
        kwargs["choices"] = meta["parse"]
    else:
        kwargs.update(type=READERS[meta["parse"]], nargs=meta["nargs"], metavar=meta["metavar"])
    parser.add_argument(flag, **kwargs)


def flag_of(field):
    """The `train` flag of a `RunConfig` field: its metadata's `flag`, else `--` and its name.

    Example:

    >>> from tf_bigmodels.training.config import RunConfig
    >>> [flag_of(field) for field in RunConfig.settings()][:2]
    ['--preset', '--corpus']
    """
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


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
