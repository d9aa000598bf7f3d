"""A tiny training workspace: prepared and tokenized fixture data plus a params file."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml

from pipelines.core.params import deep_update
from tests.pipeline_helpers import REPO, project_env, tiny_corpus, tiny_params

FIXTURE_CORPUS = tiny_corpus()

# Optimiser settings of the in-process Lightning tests (TranslationModule's `optim`).
TINY_OPTIM = {
    "lr": 1e-3,
    "betas": [0.9, 0.98],
    "weight_decay": 0.01,
    "label_smoothing": 0.1,
    "schedule": "constant",
    "warmup_steps": 0,
}


def quiet_trainer(callbacks: list[pl.Callback], **settings: Any) -> pl.Trainer:
    """A Lightning Trainer for in-process tests: bf16-mixed, norm clipping at 1.0, and no logger,
    checkpoints, progress bar or model summary; `settings` add to or override these."""
    defaults = {
        "precision": "bf16-mixed",
        "gradient_clip_val": 1.0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(callbacks=callbacks, **{**defaults, **settings})


def workspace_params(**extra: Any) -> dict[str, Any]:
    """The tiny profile on the 300-pair slice of Multi30k (`tiny_corpus`), transformer only."""
    params = tiny_params()
    params["architectures"] = ["transformer"]
    params["data"].update(dataset=str(FIXTURE_CORPUS), max_train_pairs=0)
    params["tokenizer"]["vocab_size"] = 200
    params["train"].update(log_every_n_steps=1, devices=1, strategy="auto")
    return deep_update(params, extra)


def make_workspace(path: Path, params: dict[str, Any]) -> Path:
    """Write params.yaml and run the real prepare and tokenizer stages in `path`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("prepare", "tokenizer"):
        stage_cmd(path, stage)
    return path


def clone_workspace(source: Path, target: Path) -> Path:
    """A copy with the same data and params but no training outputs or tracking store."""
    target.mkdir(parents=True)
    shutil.copy2(source / "params.yaml", target / "params.yaml")
    shutil.copytree(source / "data", target / "data")
    return target


def stage_cmd(
    workspace: Path, stage: str, *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", f"pipelines.stages.{stage}", *args],
        cwd=workspace,
        env=env or workspace_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{stage} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def workspace_env() -> dict[str, str]:
    env = project_env(REPO)
    env["PYTHONPATH"] = str(REPO)
    return env


# Train, and SIGKILL the whole run (every rank) right after the first checkpoint saved inside the
# second epoch. A script file, not `python -c`: Lightning starts DDP ranks by rerunning it.
KILL_INSIDE_SECOND_EPOCH = textwrap.dedent(
    """
    import os, signal
    import pipelines.stages.train as train
    from pipelines.training.callbacks import AtomicCheckpointIO
    real = AtomicCheckpointIO.save_checkpoint
    def save(self, checkpoint, path, storage_options=None):
        real(self, checkpoint, path, storage_options)
        if "rng" in checkpoint["nmt"] and checkpoint["epoch"] == 1:
            print("killed at step", checkpoint["global_step"], flush=True)
            os.killpg(0, signal.SIGKILL)
    AtomicCheckpointIO.save_checkpoint = save
    train.main(["--arch", "transformer"])
    """
)


def train_killed_inside_second_epoch(workspace: Path) -> int:
    """Train in `workspace` until the first in-epoch checkpoint of epoch 1; returns its step."""
    (workspace / "kill_inside_epoch.py").write_text(KILL_INSIDE_SECOND_EPOCH)
    done = subprocess.run(
        [sys.executable, "kill_inside_epoch.py"],
        cwd=workspace,
        env=workspace_env(),
        capture_output=True,
        text=True,
        start_new_session=True,  # its own process group: the kill takes every rank, not pytest
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return int(done.stdout.split("killed at step ")[1].split()[0])
