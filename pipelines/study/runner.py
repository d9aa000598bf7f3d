"""The study: the parts `study.parts` switches on, run in a fixed order, their figures written
into one folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipelines.core.params import Params
from pipelines.core.paths import ProjectPaths
from pipelines.core.study_params import STUDY_PARTS
from pipelines.inference.settings import resolve_device
from pipelines.study.corpus import Corpus
from pipelines.study.cost import run_cost
from pipelines.study.efficiency import run_efficiency
from pipelines.study.heads import run_heads
from pipelines.study.part import PartResult
from pipelines.study.path import run_path
from pipelines.study.positional import run_positional

log = logging.getLogger("nmt.study")

NEEDS_CORPUS = {"positional", "heads"}


def run_study(params: Params, paths: ProjectPaths, figures: Path) -> list[PartResult]:
    """Run every part switched on, writing its PNGs into `figures`; their results, in order."""
    study = params.study
    device = torch.device(resolve_device(study.device))
    corpus = Corpus.load(params, paths) if NEEDS_CORPUS & set(study.parts) else None
    parts = {
        "cost": lambda: run_cost(study, device, figures),
        "path": lambda: run_path(study, device, figures, paths.metrics, params.data.test_splits[0]),
        "positional": lambda: run_positional(study, params, corpus, device, figures),
        "heads": lambda: run_heads(study, params, corpus, device, figures),
        "efficiency": lambda: run_efficiency(study.bleu_levels, paths.logs, params.models, figures),
    }
    results = []
    for part in STUDY_PARTS:
        if part in study.parts:
            log.info("study: part %s on %s", part, device)
            results.append(parts[part]())
    return results


def setup_line(params: Params) -> str:
    """Where the study ran: device, threads, torch, seed."""
    device = torch.device(resolve_device(params.study.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (
        f"Device: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"seed {params.study.seed}, parts: {', '.join(params.study.parts)}."
    )
