"""Part 5, training efficiency: wall-clock time and optimizer steps each trained architecture
took to first reach given validation BLEU levels, from the training histories
(``logs/<run>/history.csv``, one row per validation)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.reports.comparison import read_history
from pipelines.study.claims import Claim, not_measured, verdict_of_checks
from pipelines.study.figures import Panel, line_panels
from pipelines.study.part import PartResult, markdown_table

SEED_CLAIMS = {
    "Training time": "the Transformer, parallel within a sentence, reaches a given quality in "
    "less training time than recurrent models",
}


@dataclass(frozen=True)
class Reached:
    """When a run's validation BLEU first reached a level."""

    seconds: float
    step: int


def training_histories(logs: Path) -> dict[str, list[dict[str, float]]]:
    """Each run's history by run name (its folder: ``transformer`` or ``transformer-1234``)."""
    files = sorted(logs.glob("*/history.csv")) if logs.is_dir() else []
    return {path.parent.name: read_history(path) for path in files}


def run_family(run: str, models: dict[str, Any]) -> str | None:
    """The model family of a run named after its architecture, with or without a ``-<seed>``
    suffix; None for a run of no architecture in params."""
    arch = run if run in models else re.sub(r"-\d+$", "", run)
    return models[arch].model.get("family") if arch in models else None


def first_reached(rows: list[dict[str, float]], level: float) -> Reached | None:
    """The first validation at which BLEU was at least `level`, or None if none was."""
    for row in rows:
        if row.get("val_bleu", -math.inf) >= level:
            return Reached(row["train_seconds"], int(row["step"]))
    return None


def run_efficiency(
    levels: list[float], logs: Path, models: dict[str, Any], figures: Path
) -> PartResult:
    histories = training_histories(logs)
    if not histories:
        claim = not_measured(
            "Training time", SEED_CLAIMS["Training time"], f"no {logs}/*/history.csv"
        )
        return PartResult(
            "efficiency", "Training efficiency", [claim], [f"No training history under {logs}/."]
        )
    reached = {
        run: {level: first_reached(rows, level) for level in levels}
        for run, rows in histories.items()
    }
    families = {run: run_family(run, models) for run in histories}
    line_panels(
        [
            Panel(f"Validation BLEU against {label}", label, "validation BLEU (greedy)", {
                run: _curve(rows, key) for run, rows in histories.items()
            })
            for key, label in (("train_seconds", "training seconds"), ("step", "optimizer steps"))
        ],
        figures / "efficiency.png",
    )  # fmt: skip
    rows = [
        [run, families[run] or "?"]
        + [
            None if r is None else f"{r.seconds:.0f} s, step {r.step}"
            for r in reached[run].values()
        ]
        for run in histories
    ]
    lines = [
        "First validation at which each run's BLEU (greedy, validation split) reached each level:",
        "",
        *markdown_table(["run", "family", *[f"BLEU ≥ {level:g}" for level in levels]], rows),
        "",
        "![validation BLEU against time and steps](study/efficiency.png)",
    ]
    metrics = {
        f"efficiency/{run}/seconds_to_{level:g}": r.seconds
        for run, by_level in reached.items()
        for level, r in by_level.items()
        if r is not None
    }
    claim = _claim(levels, reached, families)
    return PartResult(
        "efficiency", "Training efficiency", [claim], lines, ["efficiency.png"], metrics
    )


def _curve(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    return [row[key] for row in rows], [row.get("val_bleu", math.nan) for row in rows]


def _claim(
    levels: list[float],
    reached: dict[str, dict[float, Reached | None]],
    families: dict[str, str | None],
) -> Claim:
    """At each level some run reached, is the first to reach it a Transformer run?"""
    if not any(f == "transformer" for f in families.values()) or all(
        f == "transformer" for f in families.values()
    ):
        return not_measured(
            "Training time",
            SEED_CLAIMS["Training time"],
            "needs runs of the Transformer and of another family",
        )
    firsts = {}
    for level in levels:
        times = {
            run: by_level[level].seconds for run, by_level in reached.items() if by_level[level]
        }
        if times:
            firsts[level] = min(times, key=times.get)
    wins = [level for level, run in firsts.items() if families[run] == "transformer"]
    return Claim(
        "Training time",
        SEED_CLAIMS["Training time"],
        (
            "first to reach validation BLEU "
            + ", ".join(f"{level:g}: {run}" for level, run in firsts.items())
            if firsts
            else "no run reached any level"
        ),
        verdict_of_checks(len(wins), len(firsts)),
        "supported when a Transformer run is first to reach every level some run reached; "
        "not supported when it is first at none",
    )
