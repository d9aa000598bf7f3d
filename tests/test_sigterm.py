"""`HostSigtermCheck`: Lightning's per-step SIGTERM check under DDP, moved to a gloo group (no
GPU synchronisation), still stops every rank at the step where rank 0 got the signal. Real
two-process DDP on CPU, a real SIGTERM; Lightning's own check, run alike, for comparison."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.ddp_sigterm_run import STEP
from tests.pipeline_helpers import REPO, project_env

# Where rank 0 has stopped, rank 1 leaves its step either through the SIGTERM (forwarded by
# Lightning's launcher) or through the connection its peer closed: a race, in both protocols.
STOPPED = {"SIGTERMException", "RuntimeError"}


@pytest.mark.parametrize("mode", ["host", "lightning"])
def test_a_sigterm_to_rank_0_stops_every_rank_at_that_step(tmp_path, mode):
    done = subprocess.run(
        [sys.executable, "-m", "tests.ddp_sigterm_run", str(tmp_path), mode],
        cwd=REPO,
        env=project_env(REPO),
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here
    )
    ranks = [json.loads((tmp_path / f"{mode}-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["exception"] == "SIGTERMException", done.stderr[-2000:]
    assert ranks[1]["exception"] in STOPPED
    assert ranks[0]["step"] == ranks[1]["step"] == STEP  # no rank went on training
    if mode == "host":  # every step's check went through the gloo group, on both ranks
        assert ranks[0]["checks"] == ranks[1]["checks"] == STEP


def test_without_several_processes_nothing_is_replaced():
    import lightning.pytorch as pl

    from pipelines.training.sigterm import METHOD, HostSigtermCheck

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    check = HostSigtermCheck()
    check.setup(trainer, None, "fit")
    check.on_train_start(trainer, None)
    assert METHOD not in vars(trainer.fit_loop.epoch_loop)  # the class's own method stays


def test_across_machines_lightning_s_check_stays(monkeypatch):
    """gloo across machines needs a network set-up an NCCL run may not have: no group there."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from pipelines.training.sigterm import HostSigtermCheck

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    made = []
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: made.append(kwargs))
    check = HostSigtermCheck()
    check.setup(SimpleNamespace(world_size=16, num_nodes=2), None, "fit")
    assert made == []
    check.setup(SimpleNamespace(world_size=8, num_nodes=1), None, "fit")
    assert made == [{"backend": "gloo"}]
