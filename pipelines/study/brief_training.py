"""Brief training of the study's models: the pipeline's optimizer, schedule and training step
(AdamW, linear warmup then constant, gradient clipping at 1) for a fixed number of steps."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from models.seq2seq import Seq2Seq
from pipelines.core.study_params import StudyParams
from pipelines.training.optim import build_optimizer, build_scheduler
from pipelines.training.step import make_step

CLIP = 1.0


def train_briefly(
    model: Seq2Seq, batches: Iterator[dict[str, torch.Tensor]], study: StudyParams
) -> float:
    """`study.steps` optimizer steps on `batches` (moved to the model's device); returns the
    seconds they took. The model is left in eval mode."""
    device = next(model.parameters()).device
    optimizer = build_optimizer(
        model, study.lr, (0.9, 0.98), weight_decay=0.0, fused=device.type == "cuda"
    )
    scheduler = build_scheduler(optimizer, "constant", study.warmup_steps)
    step = make_step(model, model, optimizer, 0.0, CLIP, "32-true")
    model.train()
    start = time.perf_counter()
    for _ in range(study.steps):
        step(next(batches))
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    return seconds
