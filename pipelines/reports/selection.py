"""Model selection, on the validation split only.

The comparison's best architecture is the one with the highest mean validation BLEU over its
seeds (the exported model's greedy BLEU, as training scores it; the first listed wins a tie), and
the model registered for it is its seed with the highest validation BLEU (the first seed wins a
tie). Only the training summaries (``artifacts/<arch>-<seed>/training.json``) are read: no test
split takes part in any choice.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from pipelines.core.errors import PipelineError
from pipelines.core.params import ModelRun, Params
from pipelines.core.paths import ProjectPaths


def read_training_summary(paths: ProjectPaths, run: ModelRun) -> dict[str, Any]:
    """``artifacts/<arch>-<seed>/training.json``, or a one-line error saying which stage to run."""
    path = paths.artifacts / run.name / "training.json"
    if not path.exists():
        raise PipelineError(f"{path}: missing; run train@{run.name} first")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Selection:
    """The best architecture, its registered training, and every architecture's mean."""

    arch: str
    run: ModelRun
    mean_val_bleu: dict[str, float]


def select(params: Params, paths: ProjectPaths) -> Selection:
    """Choose on validation BLEU: the architecture by its mean over seeds, then its best seed."""
    scores = {
        arch: {run: read_training_summary(paths, run)["val_bleu"] for run in params.runs(arch)}
        for arch in params.architectures
    }
    means = {arch: statistics.fmean(by_run.values()) for arch, by_run in scores.items()}
    arch = max(params.architectures, key=lambda name: means[name])
    run = max(params.runs(arch), key=lambda candidate: scores[arch][candidate])
    return Selection(arch, run, means)
