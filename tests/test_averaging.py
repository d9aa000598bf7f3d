"""Checkpoint averaging: the mean of known state dicts, determinism, weights-only loading, the
choice of the last or best N epoch checkpoints, and the rule that keeps the average only if it
is better."""

from __future__ import annotations

import json
import pickle

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from pipelines.training.averaging import (
    EpochWeightsCheckpoint,
    average_checkpoints,
    average_state_dicts,
    epoch_checkpoint_callback,
    epoch_checkpoints,
    keep_averaged,
    load_state_dict,
    select_average,
)
from tests.pipeline_helpers import TRANSFORMER


def test_average_of_known_state_dicts():
    states = [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.0)},
        {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor(1.0)},
        {"w": torch.tensor([5.0, 9.0]), "b": torch.tensor(5.0)},
    ]
    averaged = average_state_dicts(states)
    torch.testing.assert_close(averaged["w"], torch.tensor([3.0, 5.0]), rtol=0, atol=0)
    torch.testing.assert_close(averaged["b"], torch.tensor(2.0), rtol=0, atol=0)


def test_average_keeps_dtypes_and_copies_equal_integer_tensors():
    states = [
        {"half": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "count": torch.tensor([7])},
        {"half": torch.tensor([2.0, 4.0], dtype=torch.bfloat16), "count": torch.tensor([7])},
    ]
    averaged = average_state_dicts(states)
    assert averaged["half"].dtype == torch.bfloat16
    assert averaged["half"].tolist() == [1.5, 3.0]
    assert averaged["count"].tolist() == [7]


def test_average_is_bitwise_deterministic():
    generator = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(64, 64, generator=generator)} for _ in range(5)]
    first = average_state_dicts(states)["w"]
    again = average_state_dicts([{k: v.clone() for k, v in s.items()} for s in states])["w"]
    assert torch.equal(first, again)
    # float64 accumulation: the result is the correctly rounded mean.
    expected = torch.stack([s["w"].double() for s in states]).mean(0).float()
    assert torch.equal(first, expected)


def test_average_of_one_state_dict_is_itself():
    state = {"w": torch.randn(3, 3)}
    assert torch.equal(average_state_dicts([state])["w"], state["w"])


@pytest.mark.parametrize(
    "other, message",
    [
        ({"w": torch.zeros(2), "extra": torch.zeros(1)}, "different keys"),
        ({"w": torch.zeros(3)}, "shape/dtype"),
        ({"w": torch.zeros(2, dtype=torch.float64)}, "shape/dtype"),
    ],
)
def test_mismatched_state_dicts_are_refused(other, message):
    with pytest.raises(ValueError, match=message):
        average_state_dicts([{"w": torch.zeros(2)}, other])


def test_differing_integer_tensors_are_refused():
    with pytest.raises(ValueError, match="non-floating"):
        average_state_dicts([{"n": torch.tensor([1])}, {"n": torch.tensor([2])}])


def test_no_state_dicts_is_an_error():
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])


def test_epoch_checkpoints_sorts_by_epoch_number(tmp_path):
    for epoch in (2, 10, 9, 1):
        torch.save({"state_dict": {}}, tmp_path / f"epoch{epoch:04d}.ckpt")
    (tmp_path / "best.ckpt").write_bytes(b"")
    (tmp_path / "epoch_notes.txt").write_text("not a checkpoint")
    names = [p.name for p in epoch_checkpoints(tmp_path, 3)]
    assert names == ["epoch0002.ckpt", "epoch0009.ckpt", "epoch0010.ckpt"]
    assert len(epoch_checkpoints(tmp_path, 10)) == 4
    assert epoch_checkpoints(tmp_path, 0) == []


def test_checkpoints_are_loaded_weights_only(tmp_path):
    path = tmp_path / "epoch0001.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "epoch": 1}, path)
    assert torch.equal(load_state_dict(path)["model.w"], torch.ones(2))
    evil = tmp_path / "epoch0002.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "hook": Exploit()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(evil)


class Exploit:
    """Any non-allowlisted class: unpickling it must be refused."""


def test_average_checkpoints_reads_lightning_checkpoints(tmp_path):
    paths = []
    for epoch, value in enumerate([1.0, 3.0]):
        path = tmp_path / f"epoch{epoch:04d}.ckpt"
        torch.save({"state_dict": {"model.w": torch.full((2,), value)}, "epoch": epoch}, path)
        paths.append(path)
    assert average_checkpoints(paths)["model.w"].tolist() == [2.0, 2.0]


@pytest.mark.parametrize(
    "best, averaged, expected", [(30.0, 30.5, True), (30.0, 30.0, False), (30.0, 29.0, False)]
)
def test_selection_rule_keeps_the_average_only_if_strictly_better(best, averaged, expected):
    assert keep_averaged(best, averaged) is expected


@pytest.mark.parametrize("averaged_wins", [True, False])
def test_select_average_leaves_the_winner_loaded(tmp_path, averaged_wins):
    model = nn.Linear(2, 1, bias=False)
    best = {"model.weight": torch.tensor([[1.0, 1.0]])}
    paths = []
    for epoch, value in enumerate([2.0, 4.0]):
        path = tmp_path / f"epoch{epoch:04d}.ckpt"
        torch.save({"state_dict": {"model.weight": torch.tensor([[value, value]])}}, path)
        paths.append(path)

    def score(candidate: nn.Module) -> float:  # the averaged weight is 3.0, the best 1.0
        weight = float(candidate.weight.detach()[0, 0])
        return weight if averaged_wins else -weight

    result = select_average(model, best, paths, score)
    assert result.kept == ("averaged" if averaged_wins else "best")
    expected = 3.0 if averaged_wins else 1.0
    assert model.weight.tolist() == [[expected, expected]]
    assert result.checkpoints == ["epoch0000.ckpt", "epoch0001.ckpt"]


SCORES = [1.0, 5.0, 3.0, 4.0, 2.0]  # epoch -> the validation score _TinyModule logs


class _TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())
        self.log("val/score", SCORES[self.current_epoch])  # a known score per epoch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_with(callback, epochs: int) -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)))
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        accelerator="cpu",
    )
    trainer.fit(_TinyModule(), data, data)


def test_epoch_checkpoint_callback_keeps_the_last_n_epochs(tmp_path):
    _fit_with(epoch_checkpoint_callback(tmp_path, 2), epochs=4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch0002.ckpt", "epoch0003.ckpt"]
    checkpoint = torch.load(tmp_path / "epoch0003.ckpt", weights_only=True)
    assert "optimizer_states" not in checkpoint  # weights only: small and fast to write
    assert set(checkpoint["state_dict"]) == {"layer.weight", "layer.bias"}


def test_epoch_checkpoint_callback_keeps_the_best_n_epochs_by_the_monitor(tmp_path):
    """With early stopping the last epochs lie past the peak: `of="best"` keeps the epochs with
    the highest validation score (here epochs 1 and 3 of scores 1, 5, 3, 4, 2), not the last."""
    _fit_with(epoch_checkpoint_callback(tmp_path, 2, of="best", monitor="val/score"), epochs=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch0001.ckpt", "epoch0003.ckpt"]
    assert [p.name for p in epoch_checkpoints(tmp_path, 2)] == ["epoch0001.ckpt", "epoch0003.ckpt"]


def test_epoch_checkpoint_callback_refuses_an_unknown_choice(tmp_path):
    with pytest.raises(ValueError, match="of must be 'last' or 'best', not 'first'"):
        epoch_checkpoint_callback(tmp_path, 2, of="first", monitor="val/score")
    with pytest.raises(ValueError, match="needs the metric to monitor"):
        epoch_checkpoint_callback(tmp_path, 2, of="best")


@pytest.mark.slow
@pytest.mark.parametrize("of", ["last", "best"])
def test_train_stage_exports_the_winner_of_best_versus_average(tmp_path, of):
    """The real train stage on the tiny corpus: N epochs are kept (the last, or those of the
    highest validation BLEU), the average is scored against the best checkpoint on validation, and
    the exported weights are the winner's."""
    from safetensors.torch import load_file

    from pipelines.reports.comparison import read_history
    from tests.training_helpers import make_workspace, stage_cmd, workspace_params

    params = workspace_params(
        train={"checkpoint_average": 2, "checkpoint_average_of": of},
        models={"transformer": {"optim": {"early_stopping_patience": 0}}},
        budget={"unit": "epochs", "value": 4},
    )
    workspace = make_workspace(tmp_path / "ws", params)
    stage_cmd(workspace, "train", "--arch", "transformer")

    epochs = workspace / "checkpoints" / TRANSFORMER / "epochs"
    kept = sorted(p.name for p in epochs.iterdir())
    if of == "last":
        assert kept == ["epoch0002.ckpt", "epoch0003.ckpt"]
    else:  # no epoch left out scored higher than one kept
        bleu = {
            f"epoch{int(row['epoch']):04d}.ckpt": row["val_bleu"]
            for row in read_history(workspace / "logs" / TRANSFORMER / "history.csv")
        }
        assert len(kept) == 2 and set(kept) <= set(bleu)
        assert min(bleu[k] for k in kept) >= max(v for k, v in bleu.items() if k not in kept)
    summary = json.loads((workspace / "artifacts" / TRANSFORMER / "training.json").read_text())
    averaging = summary["checkpoint_average"]
    assert averaging["checkpoints"] == kept
    assert summary["tokens_per_sec_steady"] > 0  # windows of epochs 1-3 (one per step here)
    averaged_wins = keep_averaged(averaging["best_val_bleu"], averaging["averaged_val_bleu"])
    assert averaging["kept"] == ("averaged" if averaged_wins else "best")

    if averaging["kept"] == "averaged":
        expected = average_checkpoints(sorted(epochs.iterdir()))
    else:
        expected = load_state_dict(workspace / "checkpoints" / TRANSFORMER / "best.ckpt")
    exported = load_file(workspace / "artifacts" / TRANSFORMER / "model.safetensors")
    for name, tensor in exported.items():
        assert torch.equal(tensor, expected[f"model.{name}"]), name


@pytest.mark.parametrize("of", ["last", "best"])
def test_the_trainer_keeps_epoch_weights_beside_the_best_checkpoint(tmp_path, of):
    """Both modes build a Trainer: in `best` mode the epoch callback monitors validation BLEU as
    the best-checkpoint callback does, and Lightning refuses two checkpoint callbacks whose saved
    state would share one key."""
    import yaml

    from pipelines.core.params import load_params
    from pipelines.training.trainer import MONITOR, build_trainer
    from tests.training_helpers import workspace_params

    raw = workspace_params(train={"checkpoint_average": 3, "checkpoint_average_of": of})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    trainer, _, best, _ = build_trainer(
        params, "transformer", tmp_path / "ckpt", tmp_path / "history.csv", None, 1
    )
    (epochs,) = [c for c in trainer.callbacks if isinstance(c, EpochWeightsCheckpoint)]
    assert epochs.monitor == (MONITOR if of == "best" else "epoch")
    assert epochs.save_top_k == 3 and epochs.dirpath == str(tmp_path / "ckpt" / "epochs")
    assert epochs.state_key != best.state_key
