"""The gradient reduction CUDA graphs use under DDP (`FlatGradientSync`): real two-process
Lightning DDP on CPU (gloo) against DDP's own reduction and, on a machine with two GPUs, the
pipeline's CUDA graphs callback under DDP (NCCL) against eager DDP."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.pipeline_helpers import REPO, project_env

# DDP and the flat buffer both divide each gradient by the world size and sum the two ranks'
# values, so the weights agree to float32 rounding; 1e-5 is the bound.
TOLERANCE = 1e-5


def _train(out, mode: str, accelerator: str = "cpu", accumulate: int = 1) -> list[dict]:
    script = [sys.executable, "-m", "tests.ddp_flat_sync_run"]
    done = subprocess.run(
        [*script, str(out), mode, accelerator, str(accumulate)],
        cwd=REPO,
        env=project_env(REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [
        torch.load(out / f"{mode}-{accumulate}-rank{rank}.pt", weights_only=True) for rank in (0, 1)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("flat_sync")
    runs = {mode: _train(out, mode) for mode in ("ddp", "flat", "inplace", "none")}
    runs |= {f"{mode}+accumulate": _train(out, mode, accumulate=2) for mode in ("ddp", "inplace")}
    return runs


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_flat_all_reduce_trains_as_ddp_does(trained):
    ddp, flat = trained["ddp"], trained["flat"]
    assert _max_difference(flat[0]["state"], flat[1]["state"]) == 0.0  # the ranks agree
    assert _max_difference(flat[0]["state"], ddp[0]["state"]) <= TOLERANCE
    from tests.ddp_flat_sync_run import STEPS

    assert flat[0]["reductions"] == flat[1]["reductions"] == STEPS  # one all-reduce per step


def test_gradients_laid_out_flat_are_reduced_in_place_as_ddp_reduces_them(trained):
    """The layout of CUDA graphs' gradients (views of one buffer, reduced with no copies): the
    same weights as DDP's reduction, and the gradients are still views after training."""
    ddp, inplace = trained["ddp"], trained["inplace"]
    assert inplace[0]["views"] and inplace[1]["views"]
    assert not trained["flat"][0]["views"]  # the copying path, for gradients laid out apart
    assert _max_difference(inplace[0]["state"], inplace[1]["state"]) == 0.0
    assert _max_difference(inplace[0]["state"], ddp[0]["state"]) <= TOLERANCE
    assert _max_difference(inplace[0]["state"], trained["flat"][0]["state"]) <= TOLERANCE


def test_flat_gradients_keep_values_and_refuse_mixed_dtypes():
    from pipelines.training.gradient_sync import flat_gradients

    weights = [torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
    weights[0].grad = torch.arange(6.0).reshape(2, 3)
    buffer = flat_gradients(weights)
    assert buffer.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0]
    buffer.mul_(2)  # the gradients are the buffer
    assert weights[0].grad.tolist() == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]
    assert weights[1].grad.shape == (4,)
    mixed = [torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.float64)]
    assert flat_gradients(mixed) is None and mixed[0].grad is None


def test_with_accumulation_the_flat_all_reduce_runs_once_per_optimizer_step(trained):
    """Two batches per step: DDP reduces on the last (Lightning runs the first under no_sync),
    the flat buffer after both; the same sums, one reduction per optimizer step."""
    ddp, flat = trained["ddp+accumulate"], trained["inplace+accumulate"]
    assert _max_difference(flat[0]["state"], flat[1]["state"]) == 0.0
    assert _max_difference(flat[0]["state"], ddp[0]["state"]) <= TOLERANCE
    assert _max_difference(flat[0]["state"], trained["inplace"][0]["state"]) > 1e-3  # accumulated
    from tests.ddp_flat_sync_run import STEPS

    assert flat[0]["reductions"] == STEPS


def test_without_a_reduction_the_ranks_drift_apart(trained):
    """The check above can fail: with DDP's reduction off and nothing in its place, each rank
    steps with its own gradients."""
    none = trained["none"]
    assert _max_difference(none[0]["state"], none[1]["state"]) > 1e-3
    assert _max_difference(none[0]["state"], trained["ddp"][0]["state"]) > 1e-3


def test_average_gradients_refuses_mixed_dtypes():
    from pipelines.training.gradient_sync import average_gradients

    weights = [torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.float64)]
    weights[0].grad, weights[1].grad = torch.ones(2), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="one flat buffer needs one dtype"):
        average_gradients(weights)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA GPUs (CUDA graphs under DDP over NCCL)",
)
def test_cuda_graphs_under_ddp_train_as_eager_ddp_does(tmp_path):
    """Replayed forward/backward graphs on both GPUs, gradients averaged by one flat all-reduce:
    the weights after the steps within 1e-5 of eager DDP's, the same on both ranks."""
    eager, graphed = _train(tmp_path, "ddp", "gpu"), _train(tmp_path, "graphs", "gpu")
    assert _max_difference(graphed[0]["state"], graphed[1]["state"]) == 0.0
    assert _max_difference(graphed[0]["state"], eager[0]["state"]) <= TOLERANCE
    assert graphed[0]["reductions"] > 0
    assert graphed[0]["views"] and graphed[1]["views"]  # reduced in place, no copies
