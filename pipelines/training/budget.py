"""The comparison's training budget: what every architecture may spend, and what a run used.

``epochs`` is the Trainer's ``max_epochs``; ``steps``, ``tokens`` and ``seconds`` are checked by
:class:`TrainingBudget` after every optimizer step. When one is spent the callback asks the
Trainer to stop, and Lightning validates once more before it does, so a run that stops inside an
epoch still has that last stretch scored on validation (and checkpointed if it is the best).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from models import PAD_ID
from pipelines.core.params import BudgetParams


class TrainingBudget(pl.Callback):
    """Counts optimizer steps, target tokens (without padding, all ranks) and wall-clock seconds
    of training, saves them in checkpoints (a resumed run continues the count), and stops the
    run when the budget's unit reaches its value.

    Counting tokens on a GPU costs one host sync (and, with several devices, one all-reduce) per
    step, and only when the unit is ``tokens``; otherwise the count stays on the device until the
    end.
    """

    def __init__(self, budget: BudgetParams) -> None:
        self.budget = budget
        self.batches = 0
        self.tokens = 0
        self.seconds = 0.0
        self._pending: torch.Tensor | None = None  # tokens not yet added to self.tokens
        self._clock = 0.0

    def on_train_start(self, trainer, module) -> None:
        self._pending = torch.zeros((), dtype=torch.int64, device=module.device)
        self._clock = time.monotonic()
        if self.spent(trainer):  # a run resumed after its budget ran out trains no further
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self._pending += (batch["tgt_out"] != PAD_ID).sum()
        self._tick()
        if self.budget.unit == "tokens":
            self._collect(trainer)
        if self.budget.unit == "epochs" or trainer.should_stop:
            return
        decision = self.spent(trainer)
        if trainer.world_size > 1 and self.budget.unit == "seconds":  # clocks differ by rank
            decision = trainer.strategy.reduce_boolean_decision(decision, all=False)
        trainer.should_stop = decision

    def on_train_end(self, trainer, module) -> None:
        self._tick()
        self._collect(trainer)

    def spent(self, trainer: pl.Trainer) -> bool:
        """Whether the budget is used up (epochs: the Trainer's max_epochs decides)."""
        unit, value = self.budget.unit, self.budget.value
        used = {"steps": trainer.global_step, "tokens": self.tokens, "seconds": self.seconds}
        return unit != "epochs" and used[unit] >= value

    def used(self, trainer: pl.Trainer) -> dict[str, Any]:
        """What the run spent, in every unit (epochs: batches trained over batches per epoch)."""
        return {
            "budget_unit": self.budget.unit,
            "budget_value": self.budget.value,
            "used_epochs": round(self.batches / max(trainer.num_training_batches, 1), 2),
            "used_steps": trainer.global_step,
            "used_tokens": self.tokens,
            "used_seconds": round(self.seconds, 1),
        }

    def _tick(self) -> None:
        now = time.monotonic()
        self.seconds += now - self._clock
        self._clock = now

    def _collect(self, trainer: pl.Trainer) -> None:
        """Move the pending count to the host, summed over ranks."""
        if self._pending is None:
            return
        pending = trainer.strategy.reduce(self._pending.clone(), reduce_op="sum")
        self.tokens += int(pending)
        self._pending.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.tokens = int(state["tokens"])
        self.seconds = float(state["seconds"])
