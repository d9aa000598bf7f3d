"""The pipeline's parent MLflow run: the comparison report and scores attached to it, and the
best architecture registered (champion only when there is none yet; `nmt retrain` replaces one)."""

from __future__ import annotations

import json
from typing import Any

from pipelines.core.params import DecodingSettings
from pipelines.core.paths import ProjectPaths
from pipelines.reports.comparison import REPORT_FILES, best_row
from pipelines.tracking import registry, runs


def parent_run_of(paths: ProjectPaths, arch: str) -> str | None:
    """The parent run id the training of `arch` recorded in its summary."""
    summary = json.loads((paths.artifacts / arch / "training.json").read_text())
    return summary.get("parent_run_id")


def log_comparison(rows: list[dict[str, Any]], paths: ProjectPaths) -> None:
    """Attach the report to the parent run that groups this pipeline run's architectures."""
    parent_id = parent_run_of(paths, rows[0]["architecture"])
    if not parent_id:
        return
    client = runs.connect()
    for name in REPORT_FILES:
        client.log_artifact(parent_id, str(paths.reports / name), artifact_path="comparison")
    for row in rows:
        for key, value in row.items():
            if key.endswith(("_bleu", "_chrf")) and isinstance(value, (int, float)):
                client.log_metric(parent_id, f"{row['architecture']}/{key}", value)
    client.set_terminated(parent_id, status="FINISHED")


def register_best(
    rows: list[dict[str, Any]],
    paths: ProjectPaths,
    registered_name: str,
    split: str,
    example: list[str] | None,
    decoding: DecodingSettings | None = None,
) -> registry.Promotion:
    """Register the best architecture's model and record the outcome on the parent run."""
    best = best_row(rows, split)
    client = runs.connect()
    promotion = registry.register_and_promote(
        best["run_id"],
        paths.artifacts / best["architecture"],
        registered_name,
        split,
        replace_champion=False,
        input_example=example,
        decoding=decoding,
        client=client,
    )
    parent_id = parent_run_of(paths, best["architecture"])
    if parent_id:
        for key, value in {
            "registry.model": registered_name,
            "registry.version": promotion.version,
            "registry.architecture": best["architecture"],
            "registry.promoted": str(promotion.promoted).lower(),
            "registry.decision": promotion.reason,
        }.items():
            client.set_tag(parent_id, key, value)
    return promotion
