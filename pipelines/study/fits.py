"""Power laws y = c·xᵉ fitted by least squares on log-log axes, and where two curves cross."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient · x ** exponent."""

    exponent: float
    coefficient: float

    def __call__(self, x: float) -> float:
        return self.coefficient * x**self.exponent


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> PowerLaw:
    """The least-squares line through (log x, log y); needs two or more distinct positive xs."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    if len(set(xs)) < 2:
        raise ValueError(f"a fit needs two or more distinct x values, got {list(xs)}")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("a log-log fit needs positive values")
    exponent, log_coefficient = np.polyfit(np.log(xs), np.log(ys), 1)
    return PowerLaw(float(exponent), float(math.exp(log_coefficient)))


def upper_half(xs: Sequence[float]) -> list[int]:
    """Indices of the xs at or above their median (at least the two largest): the range where
    the highest-order term of a cost dominates."""
    ranked = sorted(range(len(xs)), key=lambda i: xs[i])
    median = float(np.median(xs))
    chosen = [i for i in ranked if xs[i] >= median]
    return sorted(set(chosen) | set(ranked[-2:]))


def crossing(xs: Sequence[float], a: Sequence[float], b: Sequence[float]) -> float | None:
    """The first x (xs ascending) at which curve `a` rises to meet curve `b` from below,
    interpolated between the measured points on log-log axes; None if `a` never does."""
    for i in range(1, len(xs)):
        before = math.log(a[i - 1]) - math.log(b[i - 1])
        after = math.log(a[i]) - math.log(b[i])
        if before < 0 <= after:
            share = -before / (after - before)
            return math.exp(math.log(xs[i - 1]) + share * (math.log(xs[i]) - math.log(xs[i - 1])))
    return None


def power_law_crossing(a: PowerLaw, b: PowerLaw) -> float | None:
    """The x > 0 where a(x) = b(x), or None when the exponents are equal or so close that the
    crossing lies beyond any float (computed in log space, so it never overflows)."""
    if math.isclose(a.exponent, b.exponent):
        return None
    log_x = (math.log(b.coefficient) - math.log(a.coefficient)) / (a.exponent - b.exponent)
    return math.exp(log_x) if log_x < math.log(sys.float_info.max) else None
