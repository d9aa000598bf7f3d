"""The optimizer and learning-rate schedules: AdamW (Loshchilov & Hutter, 2019) with warmup, then
the inverse square root decay of Vaswani et al. (2017, §5.3), a constant rate, or a linear decay to
zero at the end of the budget (Li et al., 2020, "Budgeted Training")."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def inverse_sqrt_schedule(warmup_steps: int) -> Callable[[int], float]:
    """Noam-style multiplier: linear warmup to 1, then decay as sqrt(warmup / step)."""

    def factor(step: int) -> float:
        step = step + 1
        if warmup_steps == 0:
            return 1.0
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))

    return factor


def constant_schedule(warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then constant."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to 1, then linear decay to 0 after `total_steps` steps (the last step's
    rate is 1 / (total - warmup) of the peak, and 0 from then on)."""
    decay_steps = max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / decay_steps)

    return factor


SCHEDULES = {"inverse_sqrt": inverse_sqrt_schedule, "constant": constant_schedule}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, norms and other vectors are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, lr: float, betas: Sequence[float], weight_decay: float, fused: bool
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; `fused` (one kernel per step) on CUDA."""
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    warmup_steps: int,
    total_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step learning-rate multiplier `schedule`: ``linear``, which needs `total_steps`
    (the optimizer steps the budget allows), or a key of :data:`SCHEDULES`."""
    if schedule != "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES[schedule](warmup_steps))
    if total_steps is None:
        raise ValueError(
            "the 'linear' schedule needs the run's total optimizer steps in advance "
            "(a budget in epochs or steps)"
        )
    factor = linear_schedule(warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
