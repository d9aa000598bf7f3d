"""The architecture comparison: one row per architecture from its metrics, training summary and
history, as ``reports/comparison.{md,csv}`` and two PNG plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_write_text
from pipelines.core.errors import PipelineError
from pipelines.core.paths import ProjectPaths
from pipelines.reports.plots import bleu_bars, validation_curves

REPORT_FILES = (
    "comparison.md",
    "comparison.csv",
    "validation_bleu.csv",
    "validation_curves.png",
    "bleu_per_test_set.png",
)


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def validation_bleu_table(histories: dict[str, list[dict[str, float]]]) -> str:
    """Validation BLEU per epoch (1-based), one column per architecture: the data of dvc.yaml's
    top-level plot that overlays every architecture's curve."""
    by_epoch: dict[int, dict[str, float]] = {}
    for arch, rows in histories.items():
        for row in rows:
            if "val_bleu" in row:
                by_epoch.setdefault(int(row["epoch"]) + 1, {})[arch] = row["val_bleu"]
    lines = [",".join(["epoch", *histories])]
    for epoch in sorted(by_epoch):
        values = [str(by_epoch[epoch].get(arch, "")) for arch in histories]
        lines.append(",".join([str(epoch), *values]))
    return "\n".join(lines) + "\n"


def collect(archs: list[str], test_splits: list[str], paths: ProjectPaths) -> list[dict[str, Any]]:
    """One row per architecture from its metrics, training summary and history."""
    rows = []
    for arch in archs:
        metrics_file = paths.metrics / f"{arch}.json"
        summary_file = paths.artifacts / arch / "training.json"
        for needed in (metrics_file, summary_file):
            if not needed.exists():
                raise PipelineError(
                    f"{needed}: missing; run train@{arch} and evaluate@{arch} first"
                )
        metrics = json.loads(metrics_file.read_text())
        summary = json.loads(summary_file.read_text())
        row: dict[str, Any] = {"architecture": arch}
        for split in test_splits:
            row[f"{split}_bleu"] = metrics[split]["bleu"]
            row[f"{split}_chrf"] = metrics[split]["chrf"]
        row.update(
            parameters=summary["num_parameters"],
            train_seconds=summary["train_seconds"],
            tokens_per_sec=summary["tokens_per_sec"],
            best_epoch=(summary["best_epoch"] + 1) if summary["best_epoch"] is not None else "",
            best_val_bleu=summary["best_val_bleu"],
            run_id=summary["run_id"],
        )
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, Any]], signature: str) -> str:
    columns = [c for c in rows[0] if c != "run_id"]
    lines = [
        "# Architecture comparison",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    lines += [
        "",
        f"BLEU: sacreBLEU `{signature}`, beam search on detokenized output.",
        "Best epoch and validation BLEU (greedy) are selected on the validation split only.",
        "",
        "![validation curves](validation_curves.png)",
        "![BLEU per test set](bleu_per_test_set.png)",
        "",
    ]
    return "\n".join(lines)


def compare(archs: list[str], test_splits: list[str], paths: ProjectPaths) -> list[dict]:
    """Write the table and the plots under ``paths.reports``; returns the table's rows."""
    rows = collect(archs, test_splits, paths)
    metrics = json.loads((paths.metrics / f"{archs[0]}.json").read_text())
    reports = paths.reports
    reports.mkdir(parents=True, exist_ok=True)
    atomic_write_text(reports / "comparison.csv", to_csv(rows))
    atomic_write_text(
        reports / "comparison.md", to_markdown(rows, metrics[test_splits[0]]["signature"])
    )
    histories = {arch: read_history(paths.logs / arch / "history.csv") for arch in archs}
    atomic_write_text(reports / "validation_bleu.csv", validation_bleu_table(histories))
    validation_curves(histories, reports / "validation_curves.png")
    scores = {row["architecture"]: {s: row[f"{s}_bleu"] for s in test_splits} for row in rows}
    bleu_bars(scores, reports / "bleu_per_test_set.png")
    return rows


def best_row(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """The architecture with the highest BLEU on `split` (the first listed wins a tie)."""
    return max(rows, key=lambda row: row[f"{split}_bleu"])
