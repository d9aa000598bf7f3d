"""What each part of the study hands to the report: its claims, its section and its numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.study.claims import Claim


@dataclass
class PartResult:
    """One part's outcome: claims for the table, a markdown section, figures and metrics."""

    name: str  # the part's key in `study.parts`
    title: str
    claims: list[Claim]
    lines: list[str]  # the section's markdown, without its heading
    figures: list[str] = field(default_factory=list)  # PNG names in the figures folder
    metrics: dict[str, float] = field(default_factory=dict)  # for MLflow


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table; floats get three significant decimals, None an en dash."""

    def cell(value: object) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if abs(value) < 1e-9:  # a fit's zero comes out as ±1e-16
                return "0"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def two_decimals(value: float) -> str:
    """`value` to two decimals, never "-0.00"."""
    return f"{round(value, 2) + 0.0:.2f}"
