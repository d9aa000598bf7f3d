"""The train stage's progress bar shows the training loss read every ``log_every_n_steps``, and
training logs nothing that Lightning turns into a number (a host-device sync) every step."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.trainer.connectors.logger_connector import result
from torch.utils.data import DataLoader

from pipelines.training import progress
from pipelines.training.module import TranslationModule
from pipelines.training.progress import SparseRichProgressBar, SparseTQDMProgressBar
from tests.test_cuda_graphs import SHAPES, TRANSFORMER, VOCAB, _batch
from tests.training_helpers import TINY_OPTIM

STEPS, EVERY = 12, 4


def counted(monkeypatch, owner, name: str) -> list:
    """Calls of `owner.name` from now on, recorded as they go through."""
    calls, real = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def fit(module: pl.LightningModule, data, bar: pl.Callback) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, log_every_n_steps=EVERY, callbacks=[bar],
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


@pytest.mark.parametrize("bar_class", [SparseRichProgressBar, SparseTQDMProgressBar])
def test_training_converts_the_loss_only_when_the_bar_reads_it(bar_class, monkeypatch):
    conversions = counted(monkeypatch, result, "convert_tensors_to_scalars")
    reads = counted(monkeypatch, progress._SparseMetrics, "read")
    torch.manual_seed(0)
    module = TranslationModule(TRANSFORMER, TINY_OPTIM, VOCAB, VOCAB)
    batches = [_batch(i, SHAPES[i % len(SHAPES)]) for i in range(STEPS)]
    bar = bar_class(EVERY)
    trainer = fit(module, batches, bar)
    assert conversions == []  # Lightning's own, after every batch, for prog_bar metrics
    assert len(reads) == STEPS // EVERY + 1  # steps 0, 4 and 8, and the epoch's end
    shown = bar.get_metrics(trainer, module)
    assert shown["train/loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_metric_logged_to_the_bar_is_converted_after_every_batch(monkeypatch):
    """Why the loss is not logged with prog_bar (the Lightning this project installs)."""
    conversions = counted(monkeypatch, result, "convert_tensors_to_scalars")
    data = [(torch.randn(1, 4), torch.randn(1, 1)) for _ in range(STEPS)]
    fit(Regression(), data, TQDMProgressBar())
    assert len(conversions) >= STEPS


def test_the_train_stage_uses_it_with_the_logging_interval(tmp_path):
    from pipelines.core.params import load_params
    from pipelines.training.trainer import build_trainer
    from tests.training_helpers import workspace_params

    raw = workspace_params(train={"log_every_n_steps": 7})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    trainer, *_ = build_trainer(
        params, "transformer", tmp_path / "ckpt", tmp_path / "history.csv", None, 1
    )
    bar = trainer.progress_bar_callback
    assert isinstance(bar, progress._SparseMetrics) and bar.every == 7
