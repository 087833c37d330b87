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
