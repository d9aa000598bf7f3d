"""`bench report`: the time-to-BLEU curve and test scores of finished training runs."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from pipelines.inference.settings import split_scores


def time_to_bleu(history: Path) -> dict[str, Any]:
    """Wall-clock training seconds against validation BLEU from a run's history.csv."""
    with open(history, encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_bleu")]
    if not rows:
        return {}
    curve = [(float(r["train_seconds"]), float(r["val_bleu"]), int(r["epoch"])) for r in rows]
    best_seconds, best_bleu, best_epoch = max(curve, key=lambda c: (c[1], -c[0]))
    summary = {
        "epochs": len(curve),
        "best_val_bleu": best_bleu,
        "best_epoch": best_epoch,
        "seconds_to_best": best_seconds,
        "total_seconds": curve[-1][0],
        "curve": [{"seconds": s, "val_bleu": b, "epoch": e} for s, b, e in curve],
    }
    for fraction in (0.95, 0.99):
        reached = next(s for s, b, _ in curve if b >= fraction * best_bleu)
        summary[f"seconds_to_{int(fraction * 100)}pct_of_best"] = reached
    return summary


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Gather every run folder under `args.results` (training.json, history, metrics), keyed
    "<folder>/<arch>"."""
    runs = {}
    for training in sorted(args.results.glob("*/artifacts/*/training.json")):
        job = training.parents[2]
        arch = training.parent.name
        entry: dict[str, Any] = {"training": json.loads(training.read_text())}
        history = job / "logs" / arch / "history.csv"
        if history.exists():
            entry["time_to_bleu"] = time_to_bleu(history)
        metrics = job / "metrics" / f"{arch}.json"
        if metrics.exists():
            entry["test"] = {
                split: {"bleu": v["bleu"], "chrf": v["chrf"], "signature": v["signature"]}
                for split, v in split_scores(json.loads(metrics.read_text())).items()
            }
        runs[f"{job.name}/{arch}"] = entry
    return {"runs": runs}
