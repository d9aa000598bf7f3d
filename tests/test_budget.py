"""The comparison budget, per unit: where training stops, that the stretch trained last is
validated, what the run reports it used, and that a resumed run keeps counting."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from models import PAD_ID
from pipelines.core.params import BudgetParams
from pipelines.training.budget import TrainingBudget

BATCHES_PER_EPOCH = 10


def batches(count: int = BATCHES_PER_EPOCH) -> DataLoader:
    """Batch i has i + 1 target tokens (and one pad)."""
    out = []
    for i in range(count):
        tgt = torch.full((1, i + 2), 7)
        tgt[0, -1] = PAD_ID
        out.append({"src": torch.ones(1, 3, dtype=torch.long), "tgt_out": tgt})
    return DataLoader(out, batch_size=None)


class Counting(pl.LightningModule):
    """A one-weight model that records when validation runs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        return (self.weight - batch["tgt_out"].float().mean()).pow(2)

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self) -> None:
        self.validated_at.append(self.trainer.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(budget: BudgetParams, state: dict | None = None, **trainer_args) -> tuple:
    """Train `Counting` under `budget`, its count first restored from `state` if given."""
    callback = TrainingBudget(budget)
    if state is not None:
        callback.load_state_dict(state)
    module = Counting()
    trainer = pl.Trainer(
        max_epochs=int(budget.value) if budget.unit == "epochs" else -1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_args,
    )
    trainer.fit(module, batches(), batches(1))
    return trainer, module, callback


def test_epochs_train_whole_epochs():
    trainer, module, budget = fit(BudgetParams("epochs", 3))
    assert trainer.global_step == 3 * BATCHES_PER_EPOCH
    assert module.validated_at == [10, 20, 30]
    assert budget.used(trainer)["used_epochs"] == 3.0


def test_steps_stop_inside_an_epoch_and_validate_that_stretch():
    trainer, module, budget = fit(BudgetParams("steps", 13))
    assert trainer.global_step == 13
    assert module.validated_at == [10, 13]  # the epoch's end, then the budget's end
    used = budget.used(trainer)
    assert used["used_steps"] == 13 and used["used_epochs"] == 1.3
    assert used["budget_unit"] == "steps" and used["budget_value"] == 13


def test_steps_count_optimizer_steps_under_accumulation():
    trainer, _, budget = fit(BudgetParams("steps", 3), accumulate_grad_batches=2)
    assert trainer.global_step == 3 and budget.batches == 6


def test_tokens_stop_at_the_first_step_that_reaches_them():
    # Batch i has i + 1 target tokens: after 4 batches 1+2+3+4 = 10, after 5 batches 15.
    trainer, _, budget = fit(BudgetParams("tokens", 12))
    assert trainer.global_step == 5 and budget.tokens == 15


def test_padding_is_not_counted_as_tokens():
    _, _, budget = fit(BudgetParams("epochs", 1))
    assert budget.tokens == sum(range(1, BATCHES_PER_EPOCH + 1))  # 55, the pads left out


def test_seconds_stop_once_the_clock_passes_them(monkeypatch):
    ticks = iter(range(1000))  # a clock that advances one second per reading
    monkeypatch.setattr("pipelines.training.budget.time.monotonic", lambda: float(next(ticks)))
    trainer, module, budget = fit(BudgetParams("seconds", 4.5))
    assert trainer.global_step == 5 and budget.seconds >= 4.5
    assert module.validated_at[-1] == 5


def test_a_resumed_run_continues_the_count():
    state = {"batches": 20, "tokens": 95, "seconds": 3.0}
    loaded = TrainingBudget(BudgetParams("tokens", 100))
    loaded.load_state_dict(state)
    assert loaded.state_dict() == state
    trainer, _, budget = fit(BudgetParams("tokens", 100), state)
    assert trainer.global_step == 3 and budget.tokens == 95 + 1 + 2 + 3  # 101 >= 100


@pytest.mark.parametrize("unit", ["tokens", "seconds"])
def test_a_spent_budget_trains_no_further_after_a_resume(unit):
    spent = {"batches": 50, "tokens": 10**6, "seconds": 10**6}
    trainer, _, _ = fit(BudgetParams(unit, 10), spent)
    assert trainer.global_step == 0
