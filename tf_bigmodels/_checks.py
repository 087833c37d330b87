"""Argument checks shared by every public constructor: one message format for one kind of mistake."""

import numbers


def positive_int(name, value):
    """Returns `value` if it is an int > 0; raises ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def unit_interval(name, value, *, closed_right=False):
    """Returns `value` if it lies in [0, 1) (or [0, 1] with `closed_right`); raises otherwise."""
    upper_ok = value <= 1 if closed_right else value < 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value >= 0 and upper_ok):
        allowed = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"`{name}` must be a number in {allowed}, got {value!r}.")
    return float(value)


def positive_float(name, value):
    """Returns `value` if it is a real number > 0; raises ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def divisible(name, value, divisor_name, divisor):
    """Raises ValueError unless `value % divisor == 0`."""
    if value % divisor:
        raise ValueError(
            f"`{name}`={value} must be divisible by `{divisor_name}`={divisor} "
            f"(each head gets {name} // {divisor_name} dimensions)."
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
    return (positive_int("vocab_size", vocab_size), d_model, num_heads, positive_int("dff", dff),
            positive_int("num_layers", num_layers), unit_interval("rate", rate),
            positive_int("max_length", max_length))
