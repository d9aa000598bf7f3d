"""Helpers for end-to-end tests: a throw-away copy of the project running the real `dvc repro`."""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.params import deep_update

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# The first lines of each Multi30k split: the corpus of the tests that need no DVC pull.
TINY_CORPUS_LINES = {"train": 300, "validation": 40, "test_2016_flickr": 30, "test_2017_flickr": 30}


def cut_corpus(folder: Path, lines: dict[str, int]) -> None:
    """Write the first `lines[split]` lines of each split of ../shared/multi30k into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in lines.items():
        with gzip.open(SHARED / "multi30k" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as src:
            head = "".join(next(src) for _ in range(count))
        (folder / f"{split}.jsonl").write_text(head, encoding="utf-8")


def tiny_corpus() -> Path:
    """A folder `multi30k_tiny` with the first lines of each split of ../shared/multi30k.

    The corpus lives in ../shared and in DVC, never in the repository: this slice of it is cut
    once per machine into the temporary folder (written aside, then renamed into place). The
    path is returned even when ../shared is missing; tests/conftest.py then skips what needs it.
    """
    source = SHARED / "multi30k"
    if not source.exists():
        return Path(tempfile.gettempdir()) / "nmt-tests-missing" / "multi30k_tiny"
    sizes = "-".join(str((source / f"{s}.jsonl.gz").stat().st_size) for s in TINY_CORPUS_LINES)
    target = Path(tempfile.gettempdir()) / f"nmt-tests-{sizes}" / "multi30k_tiny"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent))
    cut_corpus(work, TINY_CORPUS_LINES)
    try:
        work.rename(target)
    except OSError:  # another test process cut it first: the same lines
        shutil.rmtree(work)
    return target


# The study on a CI budget: tiny models, synthetic lengths up to 64, a few steps per part.
TINY_STUDY: dict[str, Any] = {
    "seed": 7,
    "device": "cpu",
    "d_model": 16,
    "n_heads": 2,
    "layers": 1,
    "lengths": [16, 32, 64],
    "repeats": 1,
    "vocab_size": 100,
    "steps": 8,
    "batch_tokens": 256,
    "warmup_steps": 2,
    "synthetic_max_length": 64,
    "eval_examples": 40,
    "max_train_tokens": 24,
    "probe_pairs": 20,
    "head_counts": [1, 2, 4],
    "bleu_levels": [1.0, 2.0],
}

# The tiny profile: a few hundred pairs, tiny models, one short epoch. Applied on top of the
# real params.yaml so that the test exercises the same keys users edit.
TINY_OVERRIDES: dict[str, Any] = {
    "data": {"max_train_pairs": 300, "max_eval_pairs": 100},
    "tokenizer": {"vocab_size": 250},
    # Two CPU processes (gloo): the end-to-end run is also the DDP run of the pipeline.
    "train": {
        "batch_tokens": 1024,
        "log_every_n_steps": 2,
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "checkpoint_every_n_steps": 1,  # in-epoch checkpoints gather every rank's RNG state
    },
    "evaluate": {
        "beam_size": 2,
        "max_len_margin": 8,
        "batch_size": 100,
        "attention_examples": 1,
        "length_penalty_grid": [0.0, 2.0],  # chosen on validation, per run
    },
    "models": {
        "transformer": {
            "model": {
                "d_model": 32,
                "n_heads": 2,
                "d_ff": 64,
                "encoder_layers": 1,
                "decoder_layers": 1,
            },
            "optim": {"warmup_steps": 10},
        },
        **{
            arch: {"model": {"embedding_dim": 32, "hidden_size": 32}}
            for arch in ("lstm_additive", "lstm_none", "lstm_multiplicative", "gru")
        },
    },
    "budget": {"unit": "epochs", "value": 1},
    "study": TINY_STUDY,
}
# The seed of params.yaml's (and so the tiny profile's) one training per architecture.
SEED = yaml.safe_load((REPO / "params.yaml").read_text())["seeds"][0]


def trained(arch: str, seed: int = SEED) -> str:
    """The name of a training's outputs and stages: ``<arch>-<seed>``."""
    return f"{arch}-{seed}"


TRANSFORMER = trained("transformer")


def tiny_params(**extra: Any) -> dict[str, Any]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    deep_update(params, TINY_OVERRIDES)
    return deep_update(params, extra)


def write_params(repo: Path, params: dict[str, Any]) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# What a project copy never takes, whatever state the checkout it is cut from is in: DVC's record
# of a run (dvc.lock, which `dvc repro` stages in git: core.autostage) and DVC's own state, and
# what a run of the pipeline or of its tools leaves besides the outputs dvc.yaml declares.
DVC_STATE = ("dvc.lock", ".dvc/tmp", ".dvc/cache", ".dvc/config.local", "dvc_plots")
RUN_STATE = ("mlruns", "runs", "tmp", ".nmt-retrain.lock")


def listed_files(root: Path) -> list[str]:
    """The files of the checkout at `root`: tracked, and untracked but not ignored by git."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def pipeline_outputs(root: Path, names: list[str]) -> set[str]:
    """What the pipeline of the checkout at `root` writes, as paths relative to `root`.

    The outs, metrics and plots of dvc.yaml's stages, and the outs of the ``.dvc`` files among
    `names`; a templated path (``checkpoints/${item}``) stands for its folder before the
    template (``checkpoints``).
    """
    paths: list[str] = []
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text()) if "dvc.yaml" in names else None
    for stage in (pipeline or {}).get("stages", {}).values():
        body = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            paths += [
                entry if isinstance(entry, str) else next(iter(entry))
                for entry in body.get(key, [])
            ]
    for name in names:
        if name.endswith(".dvc") and not name.startswith(".dvc/"):
            folder = Path(name).parent
            outs = (yaml.safe_load((root / name).read_text()) or {}).get("outs", [])
            paths += [(folder / out["path"]).as_posix() for out in outs]
    prefixes = {path.split("${")[0].rstrip("/") for path in paths}
    return {Path(prefix).as_posix() for prefix in prefixes if prefix}


def project_files(root: Path | None = None) -> list[str]:
    """The files a project copy takes from the checkout at `root` (default: this one).

    The source is what git lists (tracked, and untracked but not ignored, so uncommitted work is
    tested too), less anything DVC or a pipeline run wrote there: a copy starts as a fresh clone
    would, whatever the user last ran in their checkout.
    """
    root = REPO if root is None else root
    names = listed_files(root)
    excluded = {*DVC_STATE, *RUN_STATE, *pipeline_outputs(root, names)}
    return [
        name
        for name in names
        if not any(name == path or name.startswith(f"{path}/") for path in excluded)
    ]


def make_project_copy(workdir: Path, params: dict[str, Any]) -> Path:
    """Copy the project (`project_files`) into a fresh git repository with `params`.

    ``shared`` beside it links to the real ../shared, so the DVC remote URL works unchanged.
    """
    source, repo = REPO, workdir / "project"
    for name in project_files(source):
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    (workdir / "shared").symlink_to(SHARED)
    write_params(repo, params)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "test copy")
    return repo


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    ).stdout


def project_env(repo: Path) -> dict[str, str]:
    """The environment of a pipeline run in `repo`: its own store, no inherited MLflow run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(repo)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(
    repo: Path, *command: str, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command in `repo` (dvc, python -m ...), returning its captured output."""
    if command[0] == "dvc":
        command = (sys.executable, "-m", "dvc", *command[1:])
    done = subprocess.run(
        command, cwd=repo, env=project_env(repo), capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({done.returncode}):\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields from the state on (state, ppid, pgrp, ...), or None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def kill_groups(*pgids: int, timeout: float = 60) -> None:
    """SIGKILL whole process groups, as an OOM killer or a preemption does, and reap them as init.

    The killed processes' orphans are reaped here (this process becomes their subreaper for the
    duration), so the outcome does not depend on whether pid 1 of a CI container reaps: left as
    zombies they would still look alive to pid checks, ours and DVC's. Members that are this
    process's own children are left to their ``Popen`` objects.
    """
    me = os.getpid()
    members = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[2]) in pgids
    ]
    orphans = [pid for pid in members if (fields := _stat(pid)) and int(fields[1]) != me]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        for group in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while orphans := [pid for pid in orphans if _stat(pid) is not None]:
            assert time.monotonic() < deadline, f"killed processes {orphans} never went away"
            for pid in orphans:
                fields = _stat(pid)
                if fields and fields[0] == "Z" and int(fields[1]) == me:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
            time.sleep(0.05)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
