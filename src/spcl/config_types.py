"""The value types of the configuration schema: a number's range and a list's length.

Each key of :mod:`spcl.config_schema` declares its valid values with its type, e.g.
``batch_size: Count`` (1, 2, …) or ``betas: Annotated[list[Beta], Length((2,))]``;
:func:`spcl.config.load_config` checks every value against them and names the key. No number in a
range is infinite or NaN: ``lr: .inf`` is refused like ``lr: -1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

__all__ = [
    "Beta",
    "Count",
    "Fraction",
    "Length",
    "NonNegative",
    "NonNegativeInt",
    "Positive",
    "Range",
    "Size2",
]


@dataclass(frozen=True)
class Range:
    """Bounds of a finite number: ``low ≤ value ≤ high`` (``<`` where the bound is open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value`` (None when it is in range)."""
        if value != value:  # NaN is in no range
            return "a number"
        if math.isinf(value):  # no setting means anything at infinity (lr=.inf trains on NaN)
            return "a finite number"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return None


@dataclass(frozen=True)
class Length:
    """The allowed lengths of a list: one of ``sizes``, or at least ``minimum`` when no sizes."""

    sizes: tuple[int, ...] = ()
    minimum: int = 0

    def problem(self, value: list) -> str | None:
        """What is wrong with the list's length (None when it is allowed)."""
        if self.sizes and len(value) not in self.sizes:
            return f"a list of {' or '.join(map(str, self.sizes))} values"
        if len(value) < self.minimum:
            return "a non-empty list" if self.minimum == 1 else f"a list of {self.minimum}+ values"
        return None


Count = Annotated[int, Range(low=1)]  # 1, 2, …: sizes, iterations, batch sizes
NonNegativeInt = Annotated[int, Range(low=0)]  # 0, 1, …
NonNegative = Annotated[float, Range(low=0)]  # weights, multipliers, jitter strengths
Positive = Annotated[float, Range(low=0, low_open=True)]  # temperatures, scales
Fraction = Annotated[float, Range(low=0, high=1)]  # shares, probabilities, EMA momenta
Beta = Annotated[float, Range(low=0, high=1, high_open=True)]  # Adam's β1, β2
Size2 = Annotated[list[Count], Length((0, 2))]  # [H, W], or empty for "as it is"
