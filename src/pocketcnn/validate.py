"""The checks of user values, written once: integers and numbers in a range, with the value named.

Every message reads ``NAME must be ..., received NAME=VALUE`` (Keras' convention: the value the
user gave, not only the rule). ``bool`` is never accepted as an integer, though Python's ``True`` is one.
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError, PocketCNNError


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int = 1, high: int | None = None, *, optional: bool = False,
              error: type[PocketCNNError] = ConfigError) -> Any:
    """``value`` when it is an integer in ``[low, high]`` (None too when ``optional``), else ``error``."""
    if optional and value is None:
        return value
    if is_int(value) and value >= low and (high is None or value <= high):
        return value
    if high is not None:
        rule = f"an integer in [{low}, {high}]"
    else:
        rule = {1: "a positive integer", 0: "an integer >= 0"}.get(low, f"an integer >= {low}")
    raise error(f"{name} must be {rule}, received {name}={value!r}")


def _shown(bound: float) -> str:
    """A bound as a user types it: 1000000, not 1e+06; 0.5; 1e-08."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else f"{bound:g}"


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, optional: bool = False,
                 error: type[PocketCNNError] = ConfigError) -> Any:
    """``value`` when it is a real number (not a bool) in the interval, else ``error``: ``low_open`` excludes
    ``low`` (``> 0``), ``high_open`` excludes ``high`` (``[0, 1)``)."""
    if optional and value is None:
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return value
    if low is not None and high is not None:
        rule = f"a number in {'(' if low_open else '['}{_shown(low)}, {_shown(high)}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"a number {'>' if low_open else '>='} {_shown(low)}"
    elif high is not None:
        rule = f"a number {'<' if high_open else '<='} {_shown(high)}"
    else:
        rule = "a number"
    raise error(f"{name} must be {rule}, received {name}={value!r}")
