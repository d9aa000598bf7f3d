"""A claim of the seed, what was measured for it and the verdict the numbers give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["supported", "not supported", "mixed", "not measured"]


@dataclass(frozen=True)
class Claim:
    """One row of the report's table; `measured` and `verdict` come from the numbers only."""

    topic: str
    seed: str  # what the seed says
    measured: str  # the measurement, written from its numbers
    verdict: Verdict
    rule: str  # how the verdict follows from the numbers


def verdict_of_checks(passed: int, total: int) -> Verdict:
    """All checks pass: supported; none: not supported; some: mixed; no check: not measured."""
    if total == 0:
        return "not measured"
    if passed == total:
        return "supported"
    return "not supported" if passed == 0 else "mixed"


def verdict_of_margin(difference: float, margin: float) -> Verdict:
    """A difference in the claimed direction of at least `margin`: supported; one of at most
    zero: not supported; in between: mixed."""
    if difference >= margin:
        return "supported"
    return "not supported" if difference <= 0 else "mixed"


def not_measured(topic: str, seed: str, why: str) -> Claim:
    """The row of a claim whose part did not run or found nothing to measure."""
    return Claim(topic, seed, why, "not measured", "")
