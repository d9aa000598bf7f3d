"""DVC stage `compare`: one table and two plots comparing every trained architecture.

Writes ``reports/comparison.{md,csv}``, ``reports/validation_curves.png`` and
``reports/bleu_per_test_set.png``, and attaches them to the pipeline's parent MLflow run. The best
architecture on the primary test split is registered in the MLflow model registry; it becomes
`champion` only when there is none yet. Replacing a champion is `nmt retrain`'s decision (with its
BLEU margin); when retrain runs the pipeline, it also does the registering, after scoring.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_write_text
from pipelines.core.errors import PipelineError, run_main, setup_logging
from pipelines.core.params import load_params
from pipelines.reports.plots import bleu_bars, validation_curves
from pipelines.tracking import registry, runs

log = logging.getLogger("nmt.compare")

REPORT_FILES = ("comparison.md", "comparison.csv", "validation_curves.png", "bleu_per_test_set.png")


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def collect(archs: list[str], test_splits: list[str], root: Path) -> list[dict[str, Any]]:
    """One row per architecture from its metrics, training summary and history."""
    rows = []
    for arch in archs:
        metrics_file = root / "metrics" / f"{arch}.json"
        summary_file = root / "artifacts" / arch / "training.json"
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


def compare(archs: list[str], test_splits: list[str], root: Path, reports: Path) -> list[dict]:
    rows = collect(archs, test_splits, root)
    signature = json.loads((root / "metrics" / f"{archs[0]}.json").read_text())[test_splits[0]][
        "signature"
    ]
    reports.mkdir(parents=True, exist_ok=True)
    atomic_write_text(reports / "comparison.csv", to_csv(rows))
    atomic_write_text(reports / "comparison.md", to_markdown(rows, signature))
    histories = {arch: read_history(root / "logs" / arch / "history.csv") for arch in archs}
    validation_curves(histories, reports / "validation_curves.png")
    scores = {row["architecture"]: {s: row[f"{s}_bleu"] for s in test_splits} for row in rows}
    bleu_bars(scores, reports / "bleu_per_test_set.png")
    return rows


def log_to_parent(rows: list[dict[str, Any]], root: Path, reports: Path) -> None:
    """Attach the report to the parent run that groups this pipeline run's architectures."""
    summary = json.loads(
        (root / "artifacts" / rows[0]["architecture"] / "training.json").read_text()
    )
    parent_id = summary.get("parent_run_id")
    if not parent_id:
        return
    client = runs.connect()
    for name in REPORT_FILES:
        client.log_artifact(parent_id, str(reports / name), artifact_path="comparison")
    for row in rows:
        for key, value in row.items():
            if key.endswith(("_bleu", "_chrf")) and isinstance(value, (int, float)):
                client.log_metric(parent_id, f"{row['architecture']}/{key}", value)
    client.set_terminated(parent_id, status="FINISHED")


def best_row(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """The architecture with the highest BLEU on `split` (the first listed wins a tie)."""
    return max(rows, key=lambda row: row[f"{split}_bleu"])


def example_sources(prepared: Path, split: str, count: int = 2) -> list[str] | None:
    """A few source sentences of `split`, as the registered model's input example."""
    path = prepared / f"{split}.jsonl"
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["src"] for line in itertools.islice(handle, count)]


def register_best(
    rows: list[dict[str, Any]],
    root: Path,
    registered_name: str,
    split: str,
    example: list[str] | None,
) -> registry.Promotion:
    """Register the best architecture's model and record the outcome on the parent run."""
    best = best_row(rows, split)
    client = runs.connect()
    promotion = registry.register_and_promote(
        best["run_id"],
        root / "artifacts" / best["architecture"],
        registered_name,
        split,
        replace_champion=False,
        input_example=example,
        client=client,
    )
    summary = json.loads((root / "artifacts" / best["architecture"] / "training.json").read_text())
    if summary.get("parent_run_id"):
        for key, value in {
            "registry.model": registered_name,
            "registry.version": promotion.version,
            "registry.architecture": best["architecture"],
            "registry.promoted": str(promotion.promoted).lower(),
            "registry.decision": promotion.reason,
        }.items():
            client.set_tag(summary["parent_run_id"], key, value)
    return promotion


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.compare",
        description="Compare every architecture in params.yaml: reports/comparison.{md,csv} "
        "and PNG plots (DVC stage compare).",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    root, reports = Path("."), Path("reports")
    rows = compare(params.architectures, params.data.test_splits, root, reports)
    log_to_parent(rows, root, reports)
    log.info("wrote %s", ", ".join(str(reports / name) for name in REPORT_FILES))
    if os.environ.get(registry.DEFER_ENV):
        log.info("registering left to `nmt retrain` (%s is set)", registry.DEFER_ENV)
        return
    split = params.data.primary_test_split
    example = example_sources(root / "data" / "prepared", params.data.validation_split)
    promotion = register_best(rows, root, params.tracking.registered_model, split, example)
    log.info(
        "%s version %s: %s", params.tracking.registered_model, promotion.version, promotion.reason
    )


if __name__ == "__main__":
    main()
