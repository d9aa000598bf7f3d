"""A checkpoint is resumed only under the same configuration and the same code."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from pipelines.core.params import load_params
from pipelines.training import checkpoints
from tests.pipeline_helpers import REPO, TRANSFORMER


def _code_tree(root: Path) -> Path:
    for package in ("models", "pipelines"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def test_code_digest_follows_python_sources_only(tmp_path):
    root = _code_tree(tmp_path / "project")
    digest_of = checkpoints.training_code_digest
    digest = digest_of(root)
    assert digest == checkpoints.training_code_digest(
        REPO
    )  # the same files give the same digest anywhere
    (root / "models" / "notes.txt").write_text("not code")
    assert digest_of(root) == digest
    attention = root / "models" / "attention.py"
    attention.write_text(attention.read_text() + "\n# changed\n")
    assert digest_of(root) != digest
    attention.rename(root / "models" / "attention_renamed.py")
    assert digest_of(root) not in (
        digest,
        digest_of(REPO),
    )


def test_fingerprint_changes_with_the_code(tmp_path, monkeypatch):
    params = load_params(REPO / "params.yaml")
    tokenized = tmp_path / "tokenized"
    tokenized.mkdir()
    (tokenized / "train.npz").write_bytes(b"x")
    run = params.model_run("transformer")
    monkeypatch.setattr(checkpoints, "training_code_digest", lambda: "old")
    before = checkpoints.fingerprint(params, run, tokenized)
    assert checkpoints.fingerprint(params, run, tokenized) == before
    monkeypatch.setattr(checkpoints, "training_code_digest", lambda: "new")
    assert checkpoints.fingerprint(params, run, tokenized) != before


def test_fingerprint_changes_with_the_seed_and_the_budget(tmp_path):
    params = load_params(REPO / "params.yaml")
    tokenized = tmp_path / "tokenized"
    tokenized.mkdir()
    run = params.model_run("transformer")
    before = checkpoints.fingerprint(params, run, tokenized)
    other_seed = dataclasses.replace(run, seed=run.seed + 1)
    assert checkpoints.fingerprint(params, other_seed, tokenized) != before
    params.budget.value += 1
    assert checkpoints.fingerprint(params, run, tokenized) != before


def test_a_checkpoint_of_other_code_is_not_resumed(tmp_path):
    ckpt_dir = tmp_path / "checkpoints" / TRANSFORMER
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.ckpt").write_bytes(b"checkpoint")
    (ckpt_dir / "fingerprint.json").write_text('{"fingerprint": "old-code", "run_id": ""}')
    assert checkpoints.resumable_checkpoint(ckpt_dir, "old-code") == ckpt_dir / "last.ckpt"
    assert checkpoints.resumable_checkpoint(ckpt_dir, "new-code") is None
    assert checkpoints.prepare_checkpoint_dir(ckpt_dir, "new-code") == (None, "")
    assert list(ckpt_dir.iterdir()) == []  # the stale checkpoint is gone
