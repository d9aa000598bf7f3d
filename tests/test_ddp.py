"""Real multi-process Lightning DDP on CPU (gloo): same training as one process, outputs once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.pipeline_helpers import TRANSFORMER
from tests.training_helpers import (
    clone_workspace,
    make_workspace,
    stage_cmd,
    train_killed_inside_second_epoch,
    workspace_params,
)

pytestmark = pytest.mark.slow

# Dropout off: each rank draws its own dropout masks, so only a dropout-free model can match a
# single process bit for bit. What must match is the data each optimizer step sees.
NO_DROPOUT = {"model": {"dropout": 0.0, "attention_dropout": 0.0}}
TWO_EPOCHS = {"unit": "epochs", "value": 2}
# The float32 all-reduce (g0 + g1) / 2 and accumulation g0 / 2 + g1 / 2 differ in the last bits;
# Adam's normalised updates let that grow over the steps, so the stated tolerance is relative:
# every weight tensor within 1e-3 of the single-process one (relative L2 norm), validation loss
# within 1e-3 nats.
TOLERANCE = 1e-3


def history(workspace: Path) -> list[dict[str, str]]:
    with open(workspace / "logs" / TRANSFORMER / "history.csv") as handle:
        return list(csv.DictReader(handle))


def train_in(path: Path, devices: int, **train: object) -> Path:
    params = workspace_params(
        models={"transformer": NO_DROPOUT},
        budget=TWO_EPOCHS,
        train={
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
            "accumulate_grad_batches": 2,
            "keep_global_batch": True,
            "batch_tokens": 600,
            **train,
        },
    )
    workspace = make_workspace(path, params)
    stage_cmd(workspace, "train", "--arch", "transformer")
    return workspace


@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return train_in(root / "single", devices=1), train_in(root / "ddp", devices=2)


def assert_same_training(single: Path, ddp: Path) -> None:
    """The same optimizer steps, validation curve and final weights, within `TOLERANCE`."""
    single_rows, ddp_rows = history(single), history(ddp)
    assert len(single_rows) == len(ddp_rows) == 2
    for one, two in zip(single_rows, ddp_rows, strict=True):
        assert one["step"] == two["step"]  # the same number of optimizer steps
        assert abs(float(one["val_loss"]) - float(two["val_loss"])) < TOLERANCE
        assert abs(float(one["val_bleu"]) - float(two["val_bleu"])) < 0.5
    single_state = torch.load(single / "checkpoints" / TRANSFORMER / "last.ckpt", weights_only=True)
    ddp_state = torch.load(ddp / "checkpoints" / TRANSFORMER / "last.ckpt", weights_only=True)
    for name, tensor in single_state["state_dict"].items():
        difference = (ddp_state["state_dict"][name] - tensor).norm() / tensor.norm().clamp(
            min=1e-12
        )
        assert difference < TOLERANCE, f"{name}: relative difference {difference:.2e}"


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(single_and_ddp):
    assert_same_training(*single_and_ddp)


def test_ddp_with_the_fused_loss_trains_as_one_process_without_it(single_and_ddp, tmp_path):
    # The fused loss hands DDP's reducer the same gradients, through its own autograd node.
    fused = train_in(tmp_path / "fused", devices=2, fused_loss=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{fused / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multi30k_tiny-en-de")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.architecture = 'transformer'"
    )
    assert run.data.params["train.fused_loss"] == "True"
    assert_same_training(single_and_ddp[0], fused)


def test_ddp_writes_outputs_and_the_mlflow_run_once(single_and_ddp):
    _, ddp = single_and_ddp
    client = MlflowClient(tracking_uri=f"sqlite:///{ddp / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multi30k_tiny-en-de")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.architecture = 'transformer'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["train.world_size"] == "2"
    # Global batch = per-device budget x devices x accumulation (2 // 2 devices = 1).
    assert params["train.global_batch_tokens"] == str(600 * 2 * 1)
    assert len(history(ddp)) == 2  # one row per epoch, not one per rank
    assert sorted(p.name for p in (ddp / "checkpoints" / TRANSFORMER).iterdir()) == [
        "best.ckpt",
        "fingerprint.json",
        "last.ckpt",
    ]


# Two CUDA devices, bf16 and CUDA graphs under DDP (graphs are captured again after the resume).
CUDA_GRAPHS = {"accelerator": "gpu", "precision": "bf16-mixed", "cuda_graphs": True}
TWO_GPUS = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
)


@pytest.mark.parametrize(
    "devices", [{}, pytest.param(CUDA_GRAPHS, marks=TWO_GPUS)], ids=["cpu", "cuda-graphs"]
)
def test_ddp_killed_inside_an_epoch_resumes_every_rank_exactly(tmp_path, devices):
    params = workspace_params(  # dropout on: each rank's random stream must be restored
        budget=TWO_EPOCHS,
        train={"devices": 2, "strategy": "ddp", "checkpoint_every_n_steps": 2, **devices},
    )
    reference = make_workspace(tmp_path / "reference", params)
    killed = clone_workspace(reference, tmp_path / "killed")
    stage_cmd(reference, "train", "--arch", "transformer")
    step = train_killed_inside_second_epoch(killed)
    state = torch.load(killed / "checkpoints" / TRANSFORMER / "last.ckpt", weights_only=True)
    assert len(state["nmt"]["rng"]) == 2  # both ranks' states, gathered
    resumed = stage_cmd(killed, "train", "--arch", "transformer")
    assert f"inside epoch 1, optimizer step {step}" in resumed.stderr
    assert [(r["step"], r["val_loss"]) for r in history(killed)] == [
        (r["step"], r["val_loss"]) for r in history(reference)
    ]
    final = torch.load(killed / "checkpoints" / TRANSFORMER / "last.ckpt", weights_only=True)
    expected = torch.load(reference / "checkpoints" / TRANSFORMER / "last.ckpt", weights_only=True)
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
