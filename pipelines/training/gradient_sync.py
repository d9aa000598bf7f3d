"""The gradient all-reduce of data-parallel training, done after the backward pass instead of
inside it: what lets CUDA graphs and DDP work together.

DistributedDataParallel averages gradients from autograd hooks that fire as each parameter's
gradient is accumulated during ``loss.backward()``, bucket by bucket. A replayed CUDA graph writes
the gradients with its own kernels, so those hooks never fire and each rank would step with its
own gradients. `FlatGradientSync` turns DDP's hook reduction off (``require_backward_grad_sync``,
the switch behind ``no_sync()``) and, once the backward pass of an optimizer step is done and
before gradient clipping and the step, averages every gradient across the ranks with one
all-reduce of one flat buffer. The arithmetic is DDP's: each gradient becomes the mean of the
ranks' gradients (up to the order of the float additions, as between any two all-reduce
algorithms); the flat buffer is one collective call per step instead of one per bucket. Where
the gradients already live in one flat buffer (`flat_gradients`: CUDA graphs' gradients do), it
is reduced in place, with no copies in or out.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)


def flat_gradients(parameters: list[Tensor]) -> Tensor | None:
    """Lay the gradients of `parameters` out in one flat buffer and return it: each ``.grad``
    becomes a view of it (keeping its value, zeros where there was none), so the buffer is the
    gradients, and averaging it averages them. None, and nothing changed, where the parameters
    differ in dtype or device."""
    if len({(p.dtype, p.device) for p in parameters}) != 1:
        return None
    first = parameters[0]
    buffer = torch.zeros(sum(p.numel() for p in parameters), dtype=first.dtype, device=first.device)
    for p, view in zip(parameters, buffer.split([p.numel() for p in parameters]), strict=True):
        if p.grad is not None:
            view.copy_(p.grad.reshape(-1))
        p.grad = view.view_as(p)
    return buffer


def average_flat(buffer: Tensor) -> None:
    """Replace `buffer` by its mean over the process group, in place (one all-reduce)."""
    buffer.div_(dist.get_world_size())
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)


def average_gradients(parameters: list[Tensor], buffer: Tensor | None = None) -> Tensor:
    """Replace each parameter's ``.grad`` by its mean over the process group, in place, with one
    all-reduce of a flat buffer (`buffer` when it fits, reused between calls; returned).

    A parameter without a gradient contributes zeros, so every rank reduces the same layout.
    """
    grads = []
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    dtypes = sorted({str(g.dtype) for g in grads})
    if len(dtypes) > 1:
        raise ValueError(f"average_gradients: one flat buffer needs one dtype, not {dtypes}")
    total = sum(g.numel() for g in grads)
    dtype, device = grads[0].dtype, grads[0].device
    if buffer is None or buffer.numel() != total or buffer.dtype != dtype:
        buffer = torch.empty(total, dtype=dtype, device=device)
    views = list(torch.split(buffer, [g.numel() for g in grads]))
    torch._foreach_copy_(views, [g.reshape(-1) for g in grads])
    average_flat(buffer)
    torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(views, grads, strict=True)])
    return buffer


class FlatGradientSync(pl.Callback):
    """Average gradients across DDP ranks after the backward pass, in one all-reduce, with
    DDP's own reduction in the backward pass off. Does nothing in a single process. Reduces the
    module's ``step_graphs.flat_gradients`` in place when it has them."""

    def __init__(self) -> None:
        self._buffer: Tensor | None = None
        self.reductions = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        wrapper = trainer.strategy.model
        if not isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            raise RuntimeError(
                f"FlatGradientSync needs a DDP strategy; {trainer.world_size} processes run "
                f"{type(trainer.strategy).__name__}"
            )
        wrapper.require_backward_grad_sync = False  # DDP's autograd hooks reduce nothing now
        log.info("gradients: one flat all-reduce per step over %d ranks", trainer.world_size)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.world_size == 1:
            return
        flat = getattr(getattr(pl_module, "step_graphs", None), "flat_gradients", None)
        if flat is not None:
            average_flat(flat)
        else:
            parameters = [p for p in pl_module.parameters() if p.requires_grad]
            self._buffer = average_gradients(parameters, self._buffer)
        self.reductions += 1
