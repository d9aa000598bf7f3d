"""The pipeline's parent MLflow run: the comparison report and scores attached to it, and the
selected model registered (champion only when there is none yet; `nmt retrain` replaces one)."""

from __future__ import annotations

from typing import Any

from pipelines.core.params import DecodingSettings, ModelRun
from pipelines.core.paths import ProjectPaths
from pipelines.reports.comparison import REPORT_FILES
from pipelines.reports.selection import Selection, read_training_summary
from pipelines.tracking import registry, runs


def parent_run_of(paths: ProjectPaths, run: ModelRun) -> str | None:
    """The parent run id the training `run` recorded in its summary."""
    return read_training_summary(paths, run).get("parent_run_id")


def log_comparison(rows: list[dict[str, Any]], selection: Selection, paths: ProjectPaths) -> None:
    """Attach the report to the parent run that groups this pipeline run's trainings."""
    parent_id = parent_run_of(paths, selection.run)
    if not parent_id:
        return
    client = runs.connect()
    for name in REPORT_FILES:
        client.log_artifact(parent_id, str(paths.reports / name), artifact_path="comparison")
    for row in rows:
        for key, value in row.items():
            if key.endswith(("_bleu", "_chrf", "_sd")) and isinstance(value, (int, float)):
                client.log_metric(parent_id, f"{row['architecture']}/{key}", value)
    client.set_terminated(parent_id, status="FINISHED")


def register_best(
    selection: Selection,
    paths: ProjectPaths,
    registered_name: str,
    split: str,
    example: list[str] | None,
    decoding: DecodingSettings | None = None,
) -> registry.Promotion:
    """Register the selected training's model (chosen on validation) and record the outcome on
    the parent run; `split` is the validation split its recorded score comes from."""
    client = runs.connect()
    run = selection.run
    promotion = registry.register_and_promote(
        read_training_summary(paths, run)["run_id"],
        paths.artifacts / run.name,
        registered_name,
        split,
        replace_champion=False,
        input_example=example,
        decoding=decoding,
        client=client,
    )
    parent_id = parent_run_of(paths, run)
    if parent_id:
        for key, value in {
            "registry.model": registered_name,
            "registry.version": promotion.version,
            "registry.architecture": run.arch,
            "registry.run": run.name,
            "registry.selected_on": split,
            "registry.promoted": str(promotion.promoted).lower(),
            "registry.decision": promotion.reason,
        }.items():
            client.set_tag(parent_id, key, value)
    return promotion
