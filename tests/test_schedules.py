"""Learning-rate schedules: their multipliers, and the linear decay ending where the budget does."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from models import BOS_ID, PAD_ID
from pipelines.core.errors import ConfigError
from pipelines.core.params import BudgetParams, Params, from_dict
from pipelines.training.budget import TrainingBudget
from pipelines.training.module import TranslationModule
from pipelines.training.optim import build_scheduler, inverse_sqrt_schedule, linear_schedule
from tests.models.conftest import TINY_TRANSFORMER
from tests.pipeline_helpers import tiny_params
from tests.training_helpers import TINY_OPTIM, quiet_trainer

VOCAB = 30
BATCHES_PER_EPOCH = 4
LR = 1e-3


def test_linear_warms_up_then_falls_to_zero_at_the_total():
    factor = linear_schedule(warmup_steps=4, total_steps=12)
    assert [factor(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [factor(step) for step in range(4, 13)] == pytest.approx(
        [8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    )
    assert factor(40) == 0.0  # past the budget (a resumed, finished run): never negative
    no_warmup = linear_schedule(warmup_steps=0, total_steps=4)
    assert [no_warmup(step) for step in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_inverse_sqrt_peaks_at_the_end_of_warmup():
    factor = inverse_sqrt_schedule(warmup_steps=4)
    assert [factor(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(15) == pytest.approx(0.5)  # sqrt(4 / 16)


def test_linear_without_a_known_total_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ValueError, match="'linear' schedule needs the run's total"):
        build_scheduler(optimizer, "linear", 0)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (2, 6), generator=generator)
    tgt = torch.randint(4, VOCAB, (2, 5), generator=generator)
    tgt[1, 3:] = PAD_ID
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), tgt[:, :-1]], dim=1)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt}


class ListData(pl.LightningDataModule):
    """`BATCHES_PER_EPOCH` fixed batches an epoch, and their count as the real data module
    gives it (`TranslationDataModule.steps_per_epoch`)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader([_batch(i) for i in range(BATCHES_PER_EPOCH)], batch_size=None)

    def steps_per_epoch(self) -> int:
        return BATCHES_PER_EPOCH


def _fit_linear(max_epochs: int = -1, budget_steps: int | None = None) -> list[float]:
    """Train the tiny Transformer under the linear schedule, for `max_epochs` or, as the train
    stage does, until `TrainingBudget` has seen `budget_steps`; the rate each step trained with."""
    optim = {**TINY_OPTIM, "lr": LR, "schedule": "linear", "warmup_steps": 2}
    module = TranslationModule(TINY_TRANSFORMER, optim, VOCAB, VOCAB, budget_steps=budget_steps)
    rates: list[float] = []
    module.on_train_batch_start = lambda batch, index: rates.append(
        module.trainer.optimizers[0].param_groups[0]["lr"]
    )
    budget = [] if budget_steps is None else [TrainingBudget(BudgetParams("steps", budget_steps))]
    trainer = quiet_trainer(
        budget, accelerator="cpu", precision="32-true", max_epochs=max_epochs, limit_val_batches=0
    )
    trainer.fit(module, datamodule=ListData())
    return rates


def test_linear_decay_spans_the_epochs_budget():
    rates = _fit_linear(max_epochs=3)  # 12 steps: 2 of warmup, 10 of decay
    assert len(rates) == 3 * BATCHES_PER_EPOCH
    assert rates[:4] == pytest.approx([LR / 2, LR, LR, LR * 9 / 10])
    assert rates[-1] == pytest.approx(LR / 10)  # the last step still learns; the next would not


def test_linear_decay_spans_the_steps_budget():
    rates = _fit_linear(budget_steps=7)  # the Trainer has no end of its own: the budget stops it
    assert len(rates) == 7
    assert rates[-1] == pytest.approx(LR / 5)  # 5 decay steps


@pytest.mark.parametrize("unit", ["tokens", "seconds"])
def test_params_refuse_linear_without_a_step_count(unit):
    raw = tiny_params()
    raw["budget"] = {"unit": unit, "value": 1000}
    raw["models"]["transformer"]["optim"]["schedule"] = "linear"
    with pytest.raises(ConfigError, match=rf"^models\.transformer\.optim\.schedule: .*not {unit}$"):
        from_dict(Params, copy.deepcopy(raw))
    raw["budget"] = {"unit": "steps", "value": 1000}
    assert from_dict(Params, raw).models["transformer"].optim.schedule == "linear"
