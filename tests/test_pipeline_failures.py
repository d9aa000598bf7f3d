"""`dvc repro` through failures: DVC's record always matches the files, and a killed train resumes.

One project copy (tiny profile, Transformer only) goes through, in order: a `dvc repro` whose
train stage fails at start-up (unreachable tracking server), one killed with SIGKILL in the middle
of training, and the `dvc repro` that finishes the job by resuming from the last checkpoint.
After each, every stage that ``dvc.lock`` records as done has its outputs complete on disk.
Those runs start from a copy that holds no trace of any run made in the checkout it is cut from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import pipeline_helpers
from tests.pipeline_helpers import (
    SHARED,
    TRANSFORMER,
    git,
    kill_groups,
    make_project_copy,
    project_env,
    run,
    tiny_params,
)

# The real `dvc repro` runs (minutes) pull from the DVC remote in ../shared.
needs_remote = pytest.mark.skipif(
    not (SHARED / "dvc-remote").exists(), reason="../shared/dvc-remote is not beside the checkout"
)

EPOCHS = 4
TRAIN = f"train@{TRANSFORMER}"
UPSTREAM = ("prepare", "tokenizer")
DOWNSTREAM = (TRAIN, f"evaluate@{TRANSFORMER}", "compare")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    params = tiny_params(
        architectures=["transformer"],
        data={"max_eval_pairs": 30, "test_splits": ["test_2016_flickr"]},
        train={"devices": 1, "strategy": "auto", "log_every_n_steps": 1},
        evaluate={"attention_examples": 0},
        budget={"unit": "epochs", "value": EPOCHS},
    )
    return make_project_copy(tmp_path_factory.mktemp("failures"), params)


def locked_stages(repo: Path) -> set[str]:
    lock = repo / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def stale_stages(repo: Path) -> set[str]:
    """Stages `dvc status` says must run again (changed deps, params or outs, or never run)."""
    return set(json.loads(run(repo, "dvc", "status", "--json").stdout or "{}"))


def assert_dvc_agrees_with_disk(repo: Path) -> set[str]:
    """Every stage recorded in dvc.lock has exactly its recorded outputs; returns those stages."""
    done = locked_stages(repo)
    stale = stale_stages(repo)
    assert not done & stale, f"recorded as done but outputs differ: {done & stale}"
    # An output of a stage recorded as done is never missing, partial or a leftover temp file.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in done:
        for out in lock[stage].get("outs", []):
            path = repo / out["path"]
            assert path.exists(), f"{stage}: {out['path']} recorded but missing"
            if path.is_dir():
                assert not [p for p in path.rglob("*.tmp")], f"{stage}: temp files in {path}"
    return done


def training_runs(repo: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client.search_runs(
        [e.experiment_id for e in experiments], filter_string="tags.architecture = 'transformer'"
    )


@pytest.mark.parametrize("stray", [False, True], ids=["clean", "after-a-run"])
def test_a_project_copy_takes_no_trace_of_a_run_in_the_checkout(tmp_path, monkeypatch, stray):
    """A checkout after `dvc repro` (dvc.lock staged in git by core.autostage, outputs, DVC's
    and MLflow's state, even where nothing ignores them) gives the copy a clean one would."""
    checkout = tmp_path / "checkout"
    sources = {
        "dvc.yaml": (pipeline_helpers.REPO / "dvc.yaml").read_text(),
        "params.yaml": "seed: 1\n",
        ".dvc/config": "[core]\n    remote = shared\n",
        ".dvc/.gitignore": "/tmp\n",
        "data/multi30k.dvc": (pipeline_helpers.REPO / "data" / "multi30k.dvc").read_text(),
        "pipelines/stages/train.py": "# committed\n",
        "pipelines/stages/new.py": "# uncommitted work: tested too\n",
    }
    left_by_a_run = [
        "dvc.lock",
        "metrics/x.json",
        f"metrics/{TRANSFORMER}.json",
        "reports/comparison.md",
        "logs/transformer/history.csv",
        "artifacts/transformer/config.json",
        "checkpoints/transformer/last.ckpt",
        "hypotheses/transformer/test_2016_flickr.txt",
        "data/multi30k/train.jsonl",
        "data/prepared/manifest.json",
        "data/tokenized/train.pt",
        "mlruns/mlflow.db",
        ".dvc/tmp/rwlock",
        ".dvc/cache/files/md5/00/abc",
        ".dvc/config.local",
        "dvc_plots/index.html",
    ]
    for name, text in sources.items():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(text)
    git(checkout, "init", "-q")
    git(checkout, "add", *(name for name in sources if name != "pipelines/stages/new.py"))
    git(checkout, "commit", "-qm", "project")
    if stray:
        for name in left_by_a_run:
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            (checkout / name).write_text("left by a run\n")
        git(checkout, "add", "dvc.lock")  # as `dvc repro` stages it
    monkeypatch.setattr(pipeline_helpers, "REPO", checkout)  # the real checkout is not touched

    copy = make_project_copy(tmp_path / "work", {"seed": 2})

    copied = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if ".git" not in p.parts}
    assert {name for name in copied if (copy / name).is_file()} == set(sources)
    assert not (copy / "dvc.lock").exists()
    assert yaml.safe_load((copy / "params.yaml").read_text()) == {"seed": 2}


@pytest.mark.slow
@needs_remote
def test_a_train_stage_failing_at_start_up_records_only_the_stages_that_finished(repo, tmp_path):
    env = project_env(repo) | {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # nothing listens
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--pull"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode != 0
    assert "does not answer" in done.stdout + done.stderr
    assert assert_dvc_agrees_with_disk(repo) == set(UPSTREAM)
    assert set(DOWNSTREAM) <= stale_stages(repo)
    assert not (repo / "artifacts" / TRANSFORMER).exists()


@pytest.mark.slow
@needs_remote
def test_a_train_stage_killed_mid_training_is_not_recorded_and_resumes(repo):
    log = repo.parent / "killed-repro.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=repo,
            env=project_env(repo),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    checkpoint = repo / "checkpoints" / TRANSFORMER / "last.ckpt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.1)
    kill_groups(process.pid)  # dvc repro and its stage command, as a preemption would
    process.wait()
    assert f"Running stage 'train@{TRANSFORMER}'" in log.read_text()

    assert assert_dvc_agrees_with_disk(repo) == set(UPSTREAM)
    assert TRAIN in stale_stages(repo)
    assert [run.info.status for run in training_runs(repo)] == ["RUNNING"]  # killed, unclosed

    resumed = run(repo, "dvc", "repro")
    output = resumed.stdout + resumed.stderr
    assert f"resuming {TRANSFORMER} from checkpoints/{TRANSFORMER}/last.ckpt" in output
    assert not stale_stages(repo)  # everything done and recorded
    assert assert_dvc_agrees_with_disk(repo) >= {*UPSTREAM, *DOWNSTREAM}

    history = (repo / "logs" / TRANSFORMER / "history.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in history] == list(range(EPOCHS))  # no epoch twice
    summary = json.loads((repo / "artifacts" / TRANSFORMER / "training.json").read_text())
    assert summary["epochs"] == EPOCHS
    # The killed run was continued, not duplicated: one run, finished, nothing RUNNING.
    assert [(r.info.run_id, r.info.status) for r in training_runs(repo)] == [
        (summary["run_id"], "FINISHED")
    ]
