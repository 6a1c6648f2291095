"""Argument checks shared by the public classes."""

from typing import Any


def check_positive_int(name: str, value: Any) -> int:
    """``value``, if it is an int (not a bool) of at least 1.

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("%s must be a positive int, got %r" % (name, value))
    return value
