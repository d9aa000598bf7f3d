"""Where a training run's time goes, epoch by epoch: the training steps, validation (loss and
greedy BLEU), and the rest (checkpoint writes, loader start-up, callbacks), with the device
synchronised at each boundary so that the GPU's queued work counts where it was issued.

`python -m benchmarks.train_untracked --phase-times FILE` writes what :class:`PhaseTimer` saw
and :func:`time_to_bleu` (how long, and in which phases, a run took to reach a validation BLEU).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


class PhaseTimer(pl.Callback):
    """Seconds from the start of training to each phase boundary, per epoch; with
    `stop_after_epoch`, the run stops once that epoch is validated."""

    def __init__(self, stop_after_epoch: int | None = None) -> None:
        self.stop_after_epoch = stop_after_epoch
        self.epochs: list[dict[str, Any]] = []
        self.first_batch_s: float | None = None
        self._start = 0.0
        self._open: dict[str, Any] | None = None  # the epoch being timed

    def _now(self, module: pl.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return round(time.monotonic() - self._start, 3)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._close(module)
        self._open = {"epoch": trainer.current_epoch, "start_s": self._now(module)}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.first_batch_s is None:
            self.first_batch_s = self._now(module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._open is not None and not trainer.sanity_checking:
            self._open["validation_start_s"] = self._now(module)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After the module's on_validation_epoch_end has scored BLEU, before the checkpoint
        # callbacks (Lightning runs those last).
        if self._open is None or "validation_start_s" not in self._open:
            return
        self._open["validation_end_s"] = self._now(module)
        bleu = trainer.callback_metrics.get("val/bleu")
        self._open["val_bleu"] = None if bleu is None else round(float(bleu), 4)
        if self.stop_after_epoch is not None and trainer.current_epoch >= self.stop_after_epoch:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._close(module)

    def _close(self, module: pl.LightningModule) -> None:
        """Finish the open epoch: its phases in seconds, the rest being checkpoints and such."""
        if self._open is None:
            return
        epoch, self._open = self._open, None
        end = self._now(module)
        validation_start = epoch.get("validation_start_s", end)
        validation_end = epoch.get("validation_end_s", validation_start)
        self.epochs.append(
            {
                "epoch": epoch["epoch"],
                "end_s": end,
                "training_s": round(validation_start - epoch["start_s"], 3),
                "validation_s": round(validation_end - validation_start, 3),
                "other_s": round(end - validation_end, 3),
                "val_bleu": epoch.get("val_bleu"),
                "val_bleu_at_s": validation_end if "validation_end_s" in epoch else None,
            }
        )

    def record(self, bleu: float | None = None) -> dict[str, Any]:
        """Everything timed, and with `bleu` the :func:`time_to_bleu` summary."""
        summary = None if bleu is None else time_to_bleu(self.epochs, bleu)
        return {"first_batch_s": self.first_batch_s, "epochs": self.epochs, "time_to_bleu": summary}


def time_to_bleu(epochs: list[dict[str, Any]], bleu: float) -> dict[str, Any] | None:
    """When validation BLEU first reached `bleu` in a run timed from its start (seconds from the
    start of training, at the end of that validation), and the phases up to then: the first
    epoch's apart (one-time costs such as graph captures and compilation fall there), then the
    sums over the later epochs. None if it never did."""
    reached = next(
        (i for i, e in enumerate(epochs) if e["val_bleu"] is not None and e["val_bleu"] >= bleu),
        None,
    )
    if reached is None:
        return None
    first, later = epochs[0], epochs[1 : reached + 1]
    phases = ("training_s", "validation_s", "other_s")
    return {
        "bleu": bleu,
        "epoch": epochs[reached]["epoch"],
        "seconds": epochs[reached]["val_bleu_at_s"],
        "first_epoch": {phase: first[phase] for phase in phases},
        "later_epochs": {phase: round(sum(e[phase] for e in later), 3) for phase in phases},
    }
