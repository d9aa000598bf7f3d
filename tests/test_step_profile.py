"""`train.profile_steps`: the step profiler's window (the second epoch, after a warm-up), its
summary, and the train stage writing one per rank and logging them to MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipelines.core.params import ConfigError, load_params
from pipelines.training.profiling import EPOCH, STEP, StepProfiler
from tests.training_helpers import make_workspace, stage_cmd, workspace_params

FETCH = "[_TrainingEpochLoop].train_dataloader_next"
TRAINING_STEP = "[Strategy]SingleDeviceStrategy.training_step"
VALIDATION = "[Strategy]SingleDeviceStrategy.validation_step"
SLEEP_S = 0.01
VALIDATION_S = 0.5


def run_epochs(profiler: StepProfiler, batches_per_epoch: list[int]) -> None:
    """Call the profiler as Lightning's fit loop does: per batch the fetch, then the batch around
    the training step (some arithmetic and a sleep of `SLEEP_S`); validation (`VALIDATION_S`)
    inside the epoch, after its last batch; the summary at the end."""
    profiler.setup("fit", local_rank=0)
    for batches in batches_per_epoch:
        profiler.start(EPOCH)
        for _ in range(batches):
            with profiler.profile(FETCH):
                pass
            with profiler.profile(STEP), profiler.profile(TRAINING_STEP):
                torch.randn(64, 64) @ torch.randn(64, 64)
                time.sleep(SLEEP_S)
        with profiler.profile(VALIDATION):
            time.sleep(VALIDATION_S)
        profiler.stop(EPOCH)
    profiler.describe()


def test_steps_are_timed_in_the_second_epoch_and_traced_in_the_third(tmp_path):
    output = tmp_path / "step_profile.json"
    run_epochs(StepProfiler(3, output), [4, 8, 8])
    summary = json.loads(output.read_text())
    assert summary["epoch"] == 1 and summary["steps"] == 3 and summary["rank"] == 0
    assert summary["wall_ms_per_step"] >= SLEEP_S * 1e3
    host = summary["host_ms_per_step_by_action"]
    assert set(host) == {FETCH, STEP, TRAINING_STEP}  # validation is not a step's
    # Nested actions: the batch holds the training step, and the step fits in the wall time.
    assert SLEEP_S * 1e3 <= host[TRAINING_STEP] <= host[STEP] <= summary["wall_ms_per_step"]
    assert summary["epoch_start_ms"] >= 0
    trace = summary["trace"]
    assert trace["epoch"] == 2 and trace["steps"] == 3
    assert trace["aten_ops_per_step"] >= 3  # two randn and a matmul per step, recorded
    assert isinstance(trace["runtime_calls"], list)
    assert ("gpu" in trace) == torch.cuda.is_available()


def test_windows_end_where_the_epoch_s_training_does_before_validation(tmp_path):
    output = tmp_path / "step_profile.json"
    run_epochs(StepProfiler(10, output), [3, 5, 5])  # 2 warm-up steps, then 3 of 10 counted
    summary = json.loads(output.read_text())
    assert summary["steps"] == 3 and summary["trace"]["steps"] == 3
    # The validation's half second is in neither window (it would add 167 ms to each step).
    assert summary["wall_ms_per_step"] < 100
    assert summary["trace"]["wall_ms_per_step_traced"] < 100


def test_without_a_third_epoch_the_profile_has_the_timing_alone(tmp_path):
    output = tmp_path / "step_profile.json"
    run_epochs(StepProfiler(3, output), [4, 8])
    summary = json.loads(output.read_text())
    assert summary["steps"] == 3 and "trace" not in summary


@pytest.mark.parametrize("epochs", [[6], [6, 2]], ids=["one epoch", "warm-up only"])
def test_no_profile_without_a_timed_step_of_a_second_epoch(tmp_path, epochs):
    output = tmp_path / "step_profile.json"
    run_epochs(StepProfiler(3, output), epochs)
    assert not output.exists()


def test_a_negative_step_count_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(workspace_params(train={"profile_steps": -1})))
    with pytest.raises(ConfigError, match=r"^train\.profile_steps: must be >= 0"):
        load_params(path)


def test_the_train_stage_writes_a_profile_per_rank_and_logs_them_to_mlflow(tmp_path):
    params = workspace_params(
        budget={"unit": "epochs", "value": 3},
        train={"profile_steps": 2, "accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    )
    workspace = make_workspace(tmp_path / "ws", params)
    run_name = f"transformer-{params['seeds'][0]}"
    logs = workspace / "logs" / run_name
    logs.mkdir(parents=True)
    (logs / "step_profile.rank2.json").write_text("{}")  # an earlier run's, on more devices
    stage_cmd(workspace, "train", "--arch", "transformer")

    names = sorted(path.name for path in logs.glob("step_profile*"))
    assert names == ["step_profile.json", "step_profile.rank1.json"]
    for name, rank in zip(names, (0, 1), strict=True):
        summary = json.loads((logs / name).read_text())
        assert summary["rank"] == rank and 1 <= summary["steps"] <= 2
        assert 1 <= summary["trace"]["steps"] <= 2
        host = summary["host_ms_per_step_by_action"]
        assert "[Strategy]DDPStrategy.training_step" in host and STEP in host
    training = json.loads((workspace / "artifacts" / run_name / "training.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    logged = client.list_artifacts(training["run_id"], "profile")
    assert sorted(Path(item.path).name for item in logged) == names
