"""Two-process Lightning DDP for tests/test_gradient_sync.py: a small network trained a few
steps with DDP's own gradient reduction (`ddp`), with `FlatGradientSync` instead (`flat`; with
the gradients laid out in one flat buffer, reduced in place, as CUDA graphs lay them out:
`inplace`), with DDP's reduction switched off and nothing in its place (`none`), or, on two GPUs,
through the pipeline's CUDA graphs callback (`graphs`: replayed steps, one flat all-reduce).
Every rank saves its final weights, the number of flat reductions and whether every gradient is
(still) a view of the flat buffer to ``<out>/<mode>-<accumulate>-rank<r>.pt``.

    python -m tests.ddp_flat_sync_run <out> <ddp|flat|inplace|none|graphs> [cpu|gpu] [accumulate]

With `accumulate` > 1, gradients of that many batches are summed before each optimizer step
(Lightning runs DDP's backward under no_sync for all but the last): one reduction per step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from pipelines.training.cuda_graphs import CudaGraphsCallback
from pipelines.training.gradient_sync import FlatGradientSync, flat_gradients

STEPS = 8


class _Net(nn.Sequential):
    graph_safe = True  # what CudaGraphsCallback asks of a model: no host syncs in its step


class _Regression(pl.LightningModule):
    """Shaped as the pipeline's TranslationModule is for `CudaGraphsCallback`: `model`,
    `training_loss`, `step_graphs`, gradients zeroed in place while graphs are on."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Net(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.step_graphs = None

    def training_loss(self, inputs, targets):
        return (nn.functional.mse_loss(self.model(inputs), targets),)

    def training_step(self, batch, batch_idx):
        return (self.step_graphs or self.training_loss)(*batch)[0]

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=self.step_graphs is None)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class _OffOnly(FlatGradientSync):
    """DDP's reduction off and nothing in its place: the ranks must drift apart."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pass


class _FlatLayout:
    """Stands in for `StepGraphs` on the CPU: the eager loss, the gradients in one flat buffer."""

    def __init__(self, module: pl.LightningModule) -> None:
        self.loss = module.training_loss
        self.flat_gradients = flat_gradients(list(module.parameters()))

    def __call__(self, *inputs):
        return self.loss(*inputs)


class _LayOutFlat(pl.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.step_graphs = _FlatLayout(pl_module)


def _grads_are_views(module: pl.LightningModule) -> bool:
    flat = getattr(module.step_graphs, "flat_gradients", None)
    if flat is None:
        return False
    storage = flat.untyped_storage().data_ptr()
    return all(p.grad.untyped_storage().data_ptr() == storage for p in module.parameters())


class _SaveWeights(pl.Callback):
    def __init__(self, out: Path, mode: str, sync: FlatGradientSync | None) -> None:
        self.out, self.mode, self.sync = out, mode, sync

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        reductions = self.sync.reductions if self.sync else 0
        name = f"{self.mode}-{trainer.accumulate_grad_batches}-rank{trainer.global_rank}.pt"
        views = _grads_are_views(pl_module)
        torch.save({"state": state, "reductions": reductions, "views": views}, self.out / name)


def main(out: Path, mode: str, accelerator: str, accumulate: int) -> None:
    pl.seed_everything(7, workers=True)
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(256, 6, generator=generator)
    targets = torch.randn(256, 3, generator=generator)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, targets), batch_size=16, shuffle=False
    )
    graphs = CudaGraphsCallback()
    flat = FlatGradientSync()
    sync = {"flat": flat, "inplace": flat, "none": _OffOnly(), "graphs": graphs.sync}.get(mode)
    callbacks: list[pl.Callback] = [_SaveWeights(out, mode, sync)]
    callbacks += [_LayOutFlat()] if mode == "inplace" else []
    callbacks += [graphs] if mode == "graphs" else [sync] if sync else []
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=2,
        strategy="ddp",
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=0.05,  # clipping is active: it must see the averaged gradients
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(_Regression(), data)


if __name__ == "__main__":
    accelerator = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    main(Path(sys.argv[1]), sys.argv[2], accelerator, int(sys.argv[4]) if len(sys.argv) > 4 else 1)
