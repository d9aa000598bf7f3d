"""The study's line plots: one or more panels of labelled series, linear or log-log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter

from pipelines.reports.plots import save_figure


@dataclass
class Panel:
    """One set of axes: series label -> (x values, y values); x may be categories (strings)."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[Sequence[object], Sequence[float]]] = field(default_factory=dict)
    log: bool = False


def line_panels(panels: list[Panel], path: Path) -> None:
    """The panels side by side, one marker per measured point, written as a PNG."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        for label, (xs, ys) in panel.series.items():
            axis.plot(list(xs), list(ys), marker="o", label=label)
        if panel.log:
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            for ticks in (axis.xaxis, axis.yaxis):  # plain numbers, not powers of ten
                ticks.set_major_formatter(FormatStrFormatter("%g"))
                ticks.set_minor_formatter(FormatStrFormatter("%g"))
        axis.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        axis.grid(alpha=0.3, which="both")
        if panel.series:
            axis.legend(fontsize=8)
    save_figure(figure, path)
