"""The checkpoint folder of one architecture: resume a killed run only under the same
configuration and code, else start afresh."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from pipelines.core.digest import code_digest
from pipelines.core.params import ModelRun, Params

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The code a training run executes: dvc.yaml's train@ deps, the stage script included.
TRAINING_CODE = (
    "models",
    "pipelines/core",
    "pipelines/data",
    "pipelines/training",
    "pipelines/tracking",
    "pipelines/stages/train.py",
)


def training_code_digest(root: Path = PROJECT_ROOT) -> str:
    """Digest of the code that trains (:data:`TRAINING_CODE` under `root`)."""
    return code_digest([root / part for part in TRAINING_CODE])


def fingerprint(params: Params, run: ModelRun, tokenized: Path) -> str:
    """Identifies a training configuration and the code that runs it: a checkpoint is resumed
    only under the same ones (a killed run), never by code that changed since (a DVC rerun
    after a code change trains afresh)."""
    state = {
        "code": training_code_digest(),
        "seed": run.seed,
        "arch": asdict(params.arch(run.arch)),
        "budget": asdict(params.budget),
        "train": asdict(params.train),
        "tokenized": sorted((p.name, p.stat().st_size) for p in tokenized.iterdir() if p.is_file()),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def resumable_checkpoint(ckpt_dir: Path, key: str) -> Path | None:
    """last.ckpt if it was written under the same configuration, else None (read-only)."""
    marker, last = ckpt_dir / "fingerprint.json", ckpt_dir / "last.ckpt"
    if (
        marker.exists()
        and last.exists()
        and json.loads(marker.read_text()).get("fingerprint") == key
    ):
        return last
    return None


def checkpoint_position(path: Path) -> str:
    """Where a checkpoint stands: its epoch and optimizer step, and whether inside the epoch."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    inside = "rng" in state.get("nmt", {})
    where = "inside" if inside else "at the end of"
    return f"{where} epoch {state['epoch']}, optimizer step {state['global_step']}"


def prepare_checkpoint_dir(ckpt_dir: Path, key: str) -> tuple[Path | None, str | None]:
    """last.ckpt to resume from, or a wiped folder when another configuration left it.

    Returns (checkpoint to resume from or None, the MLflow run id of a superseded run or None).
    """
    marker = ckpt_dir / "fingerprint.json"
    last = ckpt_dir / "last.ckpt"
    stale_run = None
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("fingerprint") == key and last.exists():
            return last, None
        stale_run = saved.get("run_id")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return None, stale_run


def saved_run_id(ckpt_dir: Path) -> str:
    """The MLflow run id recorded beside the checkpoints."""
    return json.loads((ckpt_dir / "fingerprint.json").read_text())["run_id"]
