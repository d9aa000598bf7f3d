"""One training step in plain PyTorch, as Lightning runs ``TranslationModule.training_step``.

Benchmarks time it against other toolkits' models, and tests check the fast paths (bf16 weight
copies, CUDA graphs) against it without a Trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pipelines.training.cuda_graphs import StepGraphs
from pipelines.training.fused_loss import fused_token_mean_loss
from pipelines.training.loss import token_mean_loss
from pipelines.training.low_precision import LowPrecisionWeights

BATCH_KEYS = ("src", "tgt_in", "tgt_out")


def make_step(
    model: nn.Module,
    forward: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    label_smoothing: float,
    clip: float,
    precision: str,
    low_precision_weights: bool = False,
    cuda_graphs: bool = False,
    fused_loss: bool = False,
) -> Callable[[dict[str, Tensor]], Tensor]:
    """A function doing one step on a batch: loss, backward, clipping, optimizer, zeroing.

    As Lightning's loop runs it in `precision` (bf16 autocast for ``bf16-mixed``); with
    `low_precision_weights` as ``LowPrecisionWeightsCallback`` adds to it, with `cuda_graphs` as
    ``CudaGraphsCallback`` does, with `fused_loss` (a ``models`` Seq2Seq) as ``train.fused_loss``
    does. The device is the model's.
    """
    device = next(model.parameters()).device.type
    autocast = precision.startswith("bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    copies = LowPrecisionWeights(model) if low_precision_weights else None

    def loss_function(src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        if fused_loss:
            return fused_token_mean_loss(model, src, tgt_in, tgt_out, label_smoothing)
        return token_mean_loss(forward(src, tgt_in), tgt_out, label_smoothing)

    graphs = StepGraphs(loss_function, params) if cuda_graphs else None

    def step(batch: dict[str, Tensor]) -> Tensor:
        src, tgt_in, tgt_out = (batch[k].to(device, non_blocking=True) for k in BATCH_KEYS)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = (graphs or loss_function)(src, tgt_in, tgt_out)
        loss.backward()
        if copies is not None:
            copies.move_gradients()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=graphs is None)
        if copies is not None:
            copies.refresh()
        return loss.detach()

    return step
