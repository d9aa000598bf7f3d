"""The training progress bar, showing the training loss read only every ``log_every_n_steps``.

A metric logged with ``prog_bar=True`` is turned into a Python number (``Tensor.item``, a
host-device synchronisation) by Lightning after every batch, whatever the bar then shows. On a
GPU that stalls the host once per step: the next step's kernels are queued only after the
previous step has finished, and Lightning's per-step host work no longer overlaps with the GPU.
So the train stage logs its training loss without ``prog_bar``, and these bars (Lightning's own,
with their counter moved every batch) add it themselves from ``trainer.callback_metrics``, read
every `every` optimizer steps (the train stage passes ``train.log_every_n_steps``, when its
logger and the loss check sync anyway) and at the end of each epoch.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

SHOWN = ("train/loss",)  # logged every step without prog_bar (pipelines.training.module)


class _SparseMetrics:
    """Mixin for a Lightning progress bar: adds the `SHOWN` metrics, read from the trainer every
    `every` optimizer steps while training and kept in between."""

    def __init__(self, every: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.every = max(1, every)
        self._shown: dict[str, float] = {}
        self._read_at: int | None = None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        step = trainer.global_step
        if step % self.every == 0 and step != self._read_at:
            self.read(trainer)
        return {**super().get_metrics(trainer, pl_module), **self._shown}  # type: ignore[misc]

    def read(self, trainer: pl.Trainer) -> None:
        """Turn the `SHOWN` metrics into numbers now (one synchronisation)."""
        logged = trainer.callback_metrics
        self._shown = {key: float(logged[key]) for key in SHOWN if key in logged}
        self._read_at = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.read(trainer)  # the epoch's last figures
        super().on_train_epoch_end(trainer, pl_module)  # type: ignore[misc]


class SparseRichProgressBar(_SparseMetrics, RichProgressBar):
    """Lightning's rich progress bar, with the training loss read every `every` steps."""


class SparseTQDMProgressBar(_SparseMetrics, TQDMProgressBar):
    """Lightning's tqdm progress bar, with the training loss read every `every` steps."""


def training_progress_bar(every: int) -> ProgressBar:
    """The bar Lightning would pick (rich when installed, else tqdm), showing the training loss
    read every `every` training steps."""
    return SparseRichProgressBar(every) if _RICH_AVAILABLE else SparseTQDMProgressBar(every)
