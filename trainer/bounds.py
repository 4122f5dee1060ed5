"""Range checks for numeric settings, shared by every settings section's ``validate()`` (the data, models and
loop packages each own theirs), so that a value outside its domain is refused up front, before any work, with
the same wording everywhere; NaN and infinity are outside every domain."""
from __future__ import annotations

import math
from typing import Optional


def check_range(key: str, value: Optional[float], low: Optional[float] = None, high: Optional[float] = None, *,
                low_open: bool = False, high_open: bool = False, unset: str = "") -> None:
    """A ValueError ``key: must be …, got value`` unless ``value`` is a finite number from ``low`` to ``high``
    (either bound left out: none on that side; ``low_open``/``high_open``: that bound excluded). None passes:
    ``unset`` says what it means for an optional setting, for the message."""
    if value is None:
        return
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"{key}: must be {_domain(low, high, low_open, high_open)}"
                         f"{f' or null ({unset})' if unset else ''}, got {value!r}")


def _domain(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if high is not None:
        return f"below {_num(high)}" if high_open else f"at most {_num(high)}"
    if low == 0:
        return "positive" if low_open else "0 or more"
    if low is not None:
        return f"above {_num(low)}" if low_open else f"at least {_num(low)}"
    return "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
