"""Argument checks: one set of helpers and one message style for the whole package.

Every check raises `ValueError("`name` must be <what is allowed>, got <value>.")` and returns the
value converted to a plain Python type. Integers are `numbers.Integral` (so NumPy integers pass)
but never `bool`; numbers are finite `numbers.Real`. A check never changes a valid value: defaults
that depend on other settings are documented where they are applied, not hidden in a check.

Example:

>>> integer("steps", 10, low=1)
10
>>> integer("steps", 0, low=1)
Traceback (most recent call last):
...
ValueError: `steps` must be an integer >= 1, got 0.
>>> number("top_p", 1.5, low=0, high=1, low_open=True)
Traceback (most recent call last):
...
ValueError: `top_p` must be a number in (0, 1], got 1.5.
"""

import math
import numbers


def _fail(name, allowed, value, none_ok):
    prefix = "None or " if none_ok else ""
    raise ValueError(f"`{name}` must be {prefix}{allowed}, got {value!r}.")


def _range_text(kind, low, high, low_open, high_open):
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def _in_range(value, low, high, low_open, high_open):
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


def integer(name, value, *, low=None, high=None, none_ok=False):
    """Returns `value` as an `int` if it is an integer in [low, high]; raises ValueError otherwise.

    Args:
        name: str. The argument's name, as the user wrote it.
        value: the value to check.
        low, high: int or None. Inclusive bounds; None is unbounded.
        none_ok: bool. Accept (and return) None.

    Example:

    >>> import numpy as np
    >>> integer("top_k", np.int64(5), low=1)
    5
    >>> integer("seed", True)
    Traceback (most recent call last):
    ...
    ValueError: `seed` must be an integer, got True.
    """
    if value is None and none_ok:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not _in_range(value, low, high, False, False)
    ):
        _fail(name, _range_text("an integer", low, high, False, False), value, none_ok)
    return int(value)


def number(name, value, *, low=None, high=None, low_open=False, high_open=False, none_ok=False):
    """Returns `value` as a `float` if it is a finite number within the bounds; raises otherwise.

    Args:
        name: str. The argument's name.
        value: the value to check.
        low, high: numbers or None. Bounds; None is unbounded.
        low_open, high_open: bool. Exclude the bound itself.
        none_ok: bool. Accept (and return) None.

    Example:

    >>> number("temperature", 0.7, low=0, low_open=True)
    0.7
    >>> number("temperature", float("nan"), low=0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: `temperature` must be a number > 0, got nan.
    """
    if value is None and none_ok:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not _in_range(value, low, high, low_open, high_open)
    ):
        _fail(name, _range_text("a number", low, high, low_open, high_open), value, none_ok)
    return float(value)


def one_of(name, value, choices):
    """Returns `value` if it is one of `choices`; raises ValueError listing them otherwise.

    Example:

    >>> one_of("split", "test", ("train", "val"))
    Traceback (most recent call last):
    ...
    ValueError: `split` must be one of ['train', 'val'], got 'test'.
    """
    if isinstance(value, (list, dict, set)) or value not in choices:
        _fail(name, f"one of {list(choices)}", value, False)
    return value


def boolean(name, value, *, none_ok=False):
    """Returns `value` if it is a `bool` (or None, with `none_ok`); raises ValueError otherwise.

    Example:

    >>> boolean("lowercase", 1)
    Traceback (most recent call last):
    ...
    ValueError: `lowercase` must be True or False, got 1.
    """
    if not (isinstance(value, bool) or (none_ok and value is None)):
        _fail(name, "True or False", value, none_ok)
    return value


def positive_int(name, value):
    """`integer(name, value, low=1)`.

    Example:

    >>> positive_int("num_heads", 4)
    4
    """
    return integer(name, value, low=1)


def positive_float(name, value):
    """`number(name, value, low=0, low_open=True)`.

    Example:

    >>> positive_float("epsilon", 1e-6)
    1e-06
    """
    return number(name, value, low=0, low_open=True)


def unit_interval(name, value, *, closed_right=False):
    """A probability such as a dropout rate: a number in [0, 1), or [0, 1] with `closed_right`.

    Example:

    >>> unit_interval("rate", 0.1)
    0.1
    """
    return number(name, value, low=0, high=1, high_open=not closed_right)


def divisible(name, value, divisor_name, divisor):
    """Raises ValueError unless `value % divisor == 0`.

    Example:

    >>> divisible("d_model", 30, "num_heads", 4)
    Traceback (most recent call last):
    ...
    ValueError: `d_model` must be divisible by `num_heads`=4 (each head gets d_model // num_heads dimensions), got 30.
    """
    if value % divisor:
        _fail(
            name,
            f"divisible by `{divisor_name}`={divisor} "
            f"(each head gets {name} // {divisor_name} dimensions)",
            value,
            False,
        )


def model_sizes(vocab_size, d_model, num_heads, dff, num_layers, rate, max_length):
    """Checks the leading arguments shared by `GPTModel` and `BERTEncoder`; returns them cleaned.

    Example:

    >>> model_sizes(259, 128, 4, 512, 4, 0.1, 64)
    (259, 128, 4, 512, 4, 0.1, 64)
    """
    d_model = positive_int("d_model", d_model)
    num_heads = positive_int("num_heads", num_heads)
    divisible("d_model", d_model, "num_heads", num_heads)
    return (
        positive_int("vocab_size", vocab_size),
        d_model,
        num_heads,
        positive_int("dff", dff),
        positive_int("num_layers", num_layers),
        unit_interval("rate", rate),
        positive_int("max_length", max_length),
    )


def non_empty_str(name, value, *, none_ok=False):
    """Returns `value` if it is a non-empty `str`; raises ValueError otherwise.

    Example:

    >>> non_empty_str("document_separator", "")
    Traceback (most recent call last):
    ...
    ValueError: `document_separator` must be a non-empty str, got ''.
    """
    if value is None and none_ok:
        return None
    if not isinstance(value, str) or not value:
        _fail(name, "a non-empty str", value, none_ok)
    return value


def in_flag_words(message, parser):
    """`message` with each option's name in backticks, as the Python API names it
    (`max_new_tokens`, `learning_rate`), replaced by the flag that sets it on the command line
    (`--max-new-tokens`, `--lr`), so that a command's error reads in the words its user typed.

    Args:
        message: str. An error message in this module's style.
        parser: the `argparse.ArgumentParser` of the command that failed.

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--lr", dest="learning_rate", type=float)
    >>> _ = parser.add_argument("--max-new-tokens", type=int)
    >>> in_flag_words("`learning_rate` must be a number > 0, got -1.", parser)
    '`--lr` must be a number > 0, got -1.'
    >>> in_flag_words("`max_new_tokens` must be an integer >= 0, got -1.", parser)
    '`--max-new-tokens` must be an integer >= 0, got -1.'
    """
    for action in parser._actions:  # argparse lists a parser's arguments nowhere public
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if flags:
            message = message.replace(f"`{action.dest}`", f"`{flags[0]}`")
    return message
