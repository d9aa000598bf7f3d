"""Killed runs resume, divergence stops cleanly, bad params and dead tracking servers fail fast."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from pipelines.core.params import load_params
from pipelines.training.optim import linear_schedule
from tests.pipeline_helpers import TRANSFORMER
from tests.training_helpers import (
    clone_workspace,
    make_workspace,
    stage_cmd,
    train_killed_inside_second_epoch,
    workspace_env,
    workspace_params,
)

pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    params = workspace_params(budget={"unit": "epochs", "value": EPOCHS})
    return make_workspace(tmp_path_factory.mktemp("reliability") / "base", params)


def final_metrics(workspace: Path) -> list[dict]:
    lines = (workspace / "logs" / TRANSFORMER / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    return [
        {k: v for k, v in row.items() if k in ("epoch", "step", "val_loss", "val_bleu")}
        for row in rows
    ]


def runs(workspace: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multi30k_tiny-en-de")
    return client.search_runs(
        [experiment.experiment_id], filter_string="tags.architecture = 'transformer'"
    )


def run_until_checkpoint_then_kill(workspace: Path, wait_for: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.stages.train", "--arch", "transformer"],
        cwd=workspace,
        env=workspace_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = workspace / wait_for
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, "training ended before the checkpoint appeared"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def reference(workspace, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    reference = clone_workspace(workspace, tmp_path_factory.mktemp("reference") / "run")
    stage_cmd(reference, "train", "--arch", "transformer")
    return reference


def assert_same_training(resumed: Path, reference: Path) -> None:
    """Deterministic on CPU: the resumed run reproduces the uninterrupted one exactly."""
    assert final_metrics(resumed) == final_metrics(reference)
    last = Path("checkpoints") / TRANSFORMER / "last.ckpt"
    resumed_state = torch.load(resumed / last, weights_only=True)
    reference_state = torch.load(reference / last, weights_only=True)
    for name, tensor in reference_state["state_dict"].items():
        assert torch.equal(resumed_state["state_dict"][name], tensor), name
    # One MLflow run, continued, and nothing left RUNNING.
    summary = json.loads((resumed / "artifacts" / TRANSFORMER / "training.json").read_text())
    assert summary["epochs"] == EPOCHS
    assert [(run.info.run_id, run.info.status) for run in runs(resumed)] == [
        (summary["run_id"], "FINISHED")
    ]


def test_best_checkpoint_holds_the_weights_and_last_the_whole_state(reference):
    folder = reference / "checkpoints" / TRANSFORMER
    best = torch.load(folder / "best.ckpt", weights_only=True)
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in best and "lr_schedulers" not in best
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert last["optimizer_states"] and last["lr_schedulers"] and last["loops"]


def test_killed_training_resumes_and_matches_an_uninterrupted_run(workspace, reference, tmp_path):
    killed = clone_workspace(workspace, tmp_path / "killed")
    run_until_checkpoint_then_kill(killed, f"checkpoints/{TRANSFORMER}/last.ckpt")
    resumed = stage_cmd(killed, "train", "--arch", "transformer")
    assert f"resuming {TRANSFORMER} from checkpoints/{TRANSFORMER}/last.ckpt" in resumed.stderr
    assert_same_training(killed, reference)


@pytest.mark.parametrize(
    ("num_workers", "accumulate", "schedule"),
    [(0, 1, "inverse_sqrt"), (2, 1, "inverse_sqrt"), (0, 2, "inverse_sqrt"), (0, 1, "linear")],
)
def test_killed_inside_an_epoch_resumes_at_that_step_exactly(
    workspace, reference, tmp_path, num_workers, accumulate, schedule
):
    def variant(name: str) -> Path:
        copy = clone_workspace(workspace, tmp_path / name)
        params = yaml.safe_load((copy / "params.yaml").read_text())
        params["train"]["checkpoint_every_n_steps"] = 4 // accumulate  # changes no number
        # Loader processes (their seeds), accumulation (fewer, larger steps) and the schedule do.
        params["train"].update(num_workers=num_workers, accumulate_grad_batches=accumulate)
        params["models"]["transformer"]["optim"]["schedule"] = schedule
        (copy / "params.yaml").write_text(yaml.safe_dump(params))
        return copy

    if (num_workers, accumulate, schedule) != (0, 1, "inverse_sqrt"):
        reference = variant("reference")
        stage_cmd(reference, "train", "--arch", "transformer")
    killed = variant("killed")
    step = train_killed_inside_second_epoch(killed)
    steps_per_epoch = -(-_steps_per_epoch(workspace) // accumulate)
    assert steps_per_epoch < step < 2 * steps_per_epoch  # inside the second epoch

    resumed = stage_cmd(killed, "train", "--arch", "transformer")
    assert f"inside epoch 1, optimizer step {step}" in resumed.stderr
    assert_same_training(killed, reference)
    if schedule == "linear":
        assert_linear_rates_end_with_the_budget(killed, EPOCHS * steps_per_epoch)


def assert_linear_rates_end_with_the_budget(workspace: Path, total_steps: int) -> None:
    """Every rate MLflow holds for the run, the resumed stretch's too, is the linear decay's,
    which reaches zero after `total_steps` (the budget's epochs of the training plan)."""
    optim = load_params(workspace / "params.yaml").models["transformer"].optim
    factor = linear_schedule(optim.warmup_steps, total_steps)
    (run,) = runs(workspace)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    key = next(k for k in run.data.metrics if k.startswith("train/lr"))
    history = sorted({(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)})
    assert [step for step, _ in history] == list(range(total_steps))  # each step once
    for step, rate in history:
        assert rate == pytest.approx(optim.lr * factor(step)), step


def test_kill_between_temporary_write_and_rename_keeps_the_previous_checkpoint(workspace, tmp_path):
    killed = clone_workspace(workspace, tmp_path / "killed")
    # Kill the process inside the second save of last.ckpt, after the temporary file is written.
    driver = textwrap.dedent(
        """
        import os, signal, sys
        import pipelines.stages.train as train
        saves = []
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("last.ckpt"):
                saves.append(dst)
                if len(saves) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = replace
        train.main(["--arch", "transformer"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", driver], cwd=killed, env=workspace_env(), capture_output=True
    )
    assert done.returncode == -signal.SIGKILL
    ckpt_dir = killed / "checkpoints" / TRANSFORMER
    assert (ckpt_dir / ".last.ckpt.tmp").exists(), "the kill must land after the temporary write"
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0  # the first, complete save
    resumed = stage_cmd(killed, "train", "--arch", "transformer")
    assert "resuming transformer" in resumed.stderr
    assert len(final_metrics(killed)) == EPOCHS


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(workspace, tmp_path):
    diverging = clone_workspace(workspace, tmp_path / "nan")
    driver = textwrap.dedent(
        """
        import torch
        import pipelines.training.loss as lit
        real = lit.label_smoothed_nll
        def poisoned(logits, target, smoothing):
            smoothed, nll = real(logits, target, smoothing)
            if torch.is_grad_enabled() and poisoned.calls >= poisoned.after:
                smoothed = smoothed * float("nan")
            poisoned.calls += torch.is_grad_enabled()
            return smoothed, nll
        poisoned.calls, poisoned.after = 0, STEPS
        lit.label_smoothed_nll = poisoned
        from pipelines.stages.train import main
        main(["--arch", "transformer"])
        """
    )
    # Poison the first step of the second epoch: one good epoch (and checkpoint) exists by then.
    steps_per_epoch = _steps_per_epoch(workspace)
    done = subprocess.run(
        [sys.executable, "-c", driver.replace("STEPS", str(steps_per_epoch))],
        cwd=diverging,
        env=workspace_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {TRANSFORMER}: training loss is nan at step")
    assert "Traceback" not in done.stderr
    state = torch.load(diverging / "checkpoints" / TRANSFORMER / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())
    assert [run.info.status for run in runs(diverging)] == ["FAILED"]


def _steps_per_epoch(workspace: Path) -> int:
    from pipelines.data.tokenized import load_split
    from pipelines.training.batching import TokenBucketBatchSampler

    params = load_params(workspace / "params.yaml")
    split = load_split(workspace / "data" / "tokenized", "train")
    sampler = TokenBucketBatchSampler(
        split.src_lengths, split.tgt_lengths, params.train.batch_tokens, num_replicas=1, rank=0
    )
    return len(sampler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_in_seconds_before_training(workspace, tmp_path):
    dead = clone_workspace(workspace, tmp_path / "dead")
    env = workspace_env() | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()
    done = stage_cmd(dead, "train", "--arch", "transformer", check=False, env=env)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert "does not answer" in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 30
    assert not (dead / "checkpoints" / TRANSFORMER / "last.ckpt").exists()


BAD_PARAMS = [
    ({"models": {"transformer": {"model": {"n_heads": 3}}}}, "models.transformer.model.n_heads"),
    ({"evaluate": {"beam_size": 0}}, "evaluate.beam_size"),
    ({"models": {"transformer": {"model": {"dropout": -0.1}}}}, "models.transformer.model.dropout"),
    ({"train": {"batch_tokenz": 10}}, "train.batch_tokenz: unknown key"),
    ({"train": {"batch_tokens": "many"}}, "train.batch_tokens: expected an integer"),
    ({"data": {"test_splits": []}}, "data.test_splits"),
    ({"retrain": {"max_p_value": 0}}, "retrain.max_p_value"),
    ({"budget": {"unit": "hours"}}, "budget.unit"),
    ({"budget": {"value": 0}}, "budget.value: must be > 0"),
    ({"seeds": [7, 7]}, "seeds: lists 7 more than once"),
    (
        {"train": {"checkpoint_average_of": "first"}},
        "train.checkpoint_average_of: must be one of last, best, not 'first'",
    ),
    ({"retrain": {"promotion_split": "dev"}}, "retrain.promotion_split: 'dev' is neither"),
]


@pytest.mark.parametrize(("override", "named"), BAD_PARAMS)
def test_bad_params_are_rejected_before_any_work_naming_the_key(
    workspace, tmp_path, override, named
):
    from pipelines.core.params import deep_update

    params = deep_update(yaml.safe_load((workspace / "params.yaml").read_text()), override)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = stage_cmd(tmp_path, "train", "--arch", "transformer", check=False)
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "checkpoints").exists()


def test_missing_test_split_is_named_before_loading(workspace, tmp_path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["data"]["test_splits"] = ["test_2016_flickr", "test_2099"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = stage_cmd(tmp_path, "prepare", check=False)
    assert done.returncode == 2 and "test_2099" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "prepared").exists()


def test_each_seed_is_its_own_training_and_run(workspace, tmp_path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params.update(seeds=[1234, 99], budget={"unit": "steps", "value": 3})
    seeded = clone_workspace(workspace, tmp_path / "seeded")
    (seeded / "params.yaml").write_text(yaml.safe_dump(params))
    for seed in ("1234", "99"):
        stage_cmd(seeded, "train", "--arch", "transformer", "--seed", seed)
    weights = {
        seed: load_file(seeded / "artifacts" / f"transformer-{seed}" / "model.safetensors")
        for seed in (1234, 99)
    }
    assert weights[1234].keys() == weights[99].keys()
    assert any(not torch.equal(weights[1234][k], weights[99][k]) for k in weights[1234])
    found = {run.info.run_name: run for run in runs(seeded)}
    assert set(found) == {"transformer-1234", "transformer-99"}
    for name, run in found.items():
        seed = name.rsplit("-", 1)[1]
        assert run.data.tags["seed"] == seed and run.data.params["seed"] == seed
        assert run.data.metrics["budget/used_steps"] == 3
    assert len({run.info.run_id for run in found.values()}) == 2
    refused = stage_cmd(seeded, "train", "--arch", "transformer", "--seed", "5", check=False)
    assert refused.returncode == 2
    assert "--seed 5: not in params seeds [1234, 99]" in refused.stderr
    assert "Traceback" not in refused.stderr
