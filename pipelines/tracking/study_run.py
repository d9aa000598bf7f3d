"""The `study` MLflow run: the study's params, its measured numbers as metrics, the report and
its figures as artifacts, with the lineage and source tags every pipeline run carries."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from pipelines.core.params import Params, flatten
from pipelines.core.paths import ProjectPaths
from pipelines.study.part import PartResult
from pipelines.study.report import all_claims
from pipelines.tracking import runs

STUDY_RUN = "study"
ENTRY_POINT = "python -m pipelines.stages.study"


def pipeline_parent_id(params: Params, paths: ProjectPaths) -> str | None:
    """The parent run that groups this pipeline's trainings (as their summaries record it), so
    that the study sits beside them in the MLflow UI; None when no training recorded one."""
    for run in params.runs():
        summary = paths.artifacts / run.name / "training.json"
        if summary.exists():
            parent = json.loads(summary.read_text(encoding="utf-8")).get("parent_run_id")
            if parent:
                return parent
    return None


def log_study(
    params: Params, results: list[PartResult], report: Path, figures: Path, paths: ProjectPaths
) -> str:
    """Open, fill and finish the run, under the pipeline's parent run when there is one; returns
    its id. Verdicts become ``verdict.<topic>`` tags."""
    from mlflow.entities import Metric

    client = runs.connect()
    exp_id = runs.experiment_id(client, params.experiment_name)
    tags = {
        **runs.lineage_tags(params.data.dataset),
        **runs.source_tags(ENTRY_POINT),
        **{f"verdict.{c.topic}": c.verdict for c in all_claims(results)},
    }
    parent = pipeline_parent_id(params, paths)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(exp_id, run_name=STUDY_RUN, tags=tags).info.run_id
    runs.log_params(client, run_id, flatten(asdict(params.study), "study."))
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, 0)
        for result in results
        for key, value in result.metrics.items()
    ]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_artifact(run_id, str(report), artifact_path=STUDY_RUN)
    for result in results:
        for name in result.figures:
            client.log_artifact(run_id, str(figures / name), artifact_path=f"{STUDY_RUN}/study")
    client.set_terminated(run_id, status="FINISHED")
    return run_id
