"""A rank that dies mid-epoch: the run stops within a minute with one line (no hang, no
traceback), and the same command resumes it. Real two-process DDP on CPU (gloo); NCCL on GPUs
is where the parent watchdog matters most (a collective there waits 10 minutes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from pipelines.training.rank_failure import peer_lost
from tests.pipeline_helpers import REPO
from tests.training_helpers import make_workspace, stage_cmd, workspace_env, workspace_params


def test_peer_lost_knows_a_vanished_peer_from_other_errors():
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer.")
    assert peer_lost(gloo)
    assert peer_lost(dist.DistBackendError("NCCL communicator was aborted"))
    assert not peer_lost(RuntimeError("CUDA out of memory"))
    assert not peer_lost(ValueError("Connection reset by peer"))  # not from a backend


# A launcher that starts a rank watching its parent, then dies; the rank must notice.
ORPHAN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", (
    "import time\\n"
    "from pipelines.training.rank_failure import watch_parent\\n"
    "watch_parent(1, 'resume with dvc repro', period_s=0.2)\\n"
    "print('watching', flush=True)\\n"
    "time.sleep(60)\\n"
)])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_rank_whose_launcher_died_stops_with_one_line(tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-c", ORPHAN],
        cwd=REPO,
        env=workspace_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    launcher.stdout.readline()  # the rank's pid
    assert launcher.stdout.readline().strip() == "watching"
    launcher.send_signal(signal.SIGKILL)
    started = time.monotonic()
    _, stderr = launcher.communicate(timeout=30)  # the pipes close when the orphan exits too
    assert time.monotonic() - started < 10
    assert f"error: rank 1: the process that launched it (pid {launcher.pid}) is gone" in stderr
    assert "resume with dvc repro" in stderr


@pytest.mark.slow
def test_ddp_rank_killed_mid_epoch_fails_the_run_in_seconds_and_resumes(tmp_path):
    params = workspace_params(
        models={"transformer": {"optim": {"early_stopping_patience": 0}}},
        budget={"unit": "epochs", "value": 12},
        train={"devices": 2, "strategy": "ddp", "checkpoint_every_n_steps": 2},
    )
    workspace = make_workspace(tmp_path / "ws", params)
    run = subprocess.Popen(
        [sys.executable, "-m", "pipelines.stages.train", "--arch", "transformer"],
        cwd=workspace,
        env=workspace_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = workspace / "checkpoints" / "transformer-1234" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True)
    assert last.exists() and run.poll() is None, "the run ended before a checkpoint to kill at"
    ranks = [  # the process Lightning's launcher started for rank 1 (not a loader worker)
        pid
        for pid in children.stdout.split()
        if b"pipelines.stages.train" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    rank_1 = int(ranks[0])
    subprocess.run(["kill", "-9", str(rank_1)], check=True)
    started = time.monotonic()
    _, stderr = run.communicate(timeout=120)
    assert time.monotonic() - started < 60, "rank 0 must not wait for the dead rank"
    assert run.returncode == 2, stderr[-3000:]
    assert "error: transformer-1234: rank 0: another rank stopped during training" in stderr
    assert "`dvc repro` (or this command) resumes from" in stderr
    assert "Traceback" not in stderr
    resumed = stage_cmd(workspace, "train", "--arch", "transformer")
    assert "resuming transformer-1234 from" in resumed.stderr
    assert (workspace / "artifacts" / "transformer-1234" / "training.json").exists()
