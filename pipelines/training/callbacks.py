"""Training callbacks and checkpoint I/O: atomic checkpoint writes, in-epoch checkpoints, and the
monitor that measures tokens per second and writes the validation history."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from models import PAD_ID
from pipelines.core.atomic import atomic_write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, fsync, then rename: a kill never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class InEpochCheckpoint(ModelCheckpoint):
    """Rewrites last.ckpt every N optimizer steps, but not at an epoch's last batch.

    The epoch's end is the validation checkpoint's; a step checkpoint taken just before
    validation would, on resume, end the epoch without validating it.
    """

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)


class TrainingMonitor(pl.Callback):
    """Tokens per second (global, non-pad source+target), peak GPU memory and the epoch history."""

    def __init__(self, history_file: Path, log_every_n_steps: int) -> None:
        self.history_file = history_file
        self.log_every_n_steps = log_every_n_steps
        self.rows: list[dict[str, float]] = []
        self.tokens_per_sec: list[float] = []
        self.window_epochs: list[int] = []  # the epoch of each tokens_per_sec window
        self.first_epoch: int | None = None  # the first epoch this process trained
        self._tokens: torch.Tensor | None = None
        self._window_start = 0.0
        self.train_seconds = 0.0
        self._epoch_start = 0.0

    def on_train_start(self, trainer, module) -> None:
        self.first_epoch = trainer.current_epoch
        # A run resumed inside an epoch gets no on_train_epoch_start for that epoch.
        self.on_train_epoch_start(trainer, module)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch_start = self._window_start = time.perf_counter()
        self._tokens = torch.zeros((), device=module.device, dtype=torch.int64)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # Accumulated on device: no host sync except where a window closes: every
        # log_every_n_steps batches, and at the epoch's last batch (before validation), so that
        # an epoch shorter than the interval is measured too.
        self._tokens += (batch["src"] != PAD_ID).sum() + (batch["tgt_out"] != PAD_ID).sum()
        last = batch_idx + 1 == trainer.num_training_batches
        if (batch_idx + 1) % self.log_every_n_steps == 0 or last:
            tokens = trainer.strategy.reduce(self._tokens, reduce_op="sum")
            elapsed = time.perf_counter() - self._window_start
            rate = float(tokens) / max(elapsed, 1e-9)
            self.tokens_per_sec.append(rate)
            self.window_epochs.append(trainer.current_epoch)
            module.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False)
            self._tokens.zero_()
            self._window_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._epoch_start:  # not when a resumed run closes the epoch it was saved in
            self.train_seconds += time.perf_counter() - self._epoch_start
        self._epoch_start = 0.0

    def on_validation_end(self, trainer, module) -> None:
        # After the module's on_validation_epoch_end, so val/bleu is in callback_metrics.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_seconds": round(self.train_seconds + self._elapsed_in_epoch(), 2),
        }
        for key in ("val/loss", "val/ppl", "val/bleu"):
            if key in metrics:
                row[key.replace("/", "_")] = round(float(metrics[key]), 4)
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**30
            trainer.logger.log_metrics({"train/peak_gpu_memory_gib": peak}, trainer.global_step)
            row["peak_gpu_memory_gib"] = round(peak, 3)
        self.rows.append(row)
        if trainer.is_global_zero:
            write_history(self.history_file, self.rows)

    def steady_tokens_per_sec(self) -> float | None:
        """Tokens per second once warm: see `steady_rate`."""
        if self.first_epoch is None:
            return None
        return steady_rate(self.tokens_per_sec, self.window_epochs, self.first_epoch)

    def _elapsed_in_epoch(self) -> float:
        return time.perf_counter() - self._epoch_start if self._epoch_start else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state.get("rows", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))


def steady_rate(rates: list[float], epochs: list[int], first_epoch: int) -> float | None:
    """The median of the logging windows' `rates` after `first_epoch`, the first epoch a process
    trains, where CUDA graphs capture every batch shape once and kernels are planned: what the
    training step runs at, comparable with a benchmark's timed steps. None when no window came
    after it."""
    later = sorted(rate for rate, epoch in zip(rates, epochs, strict=True) if epoch > first_epoch)
    if not later:
        return None
    middle = len(later) // 2
    return later[middle] if len(later) % 2 else (later[middle - 1] + later[middle]) / 2


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The epoch-level curve as CSV for `dvc plots` and the comparison report."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)]
    lines += [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
