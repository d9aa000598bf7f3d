"""`python -m benchmarks.train_untracked` on CPU against the tiny pipeline's data, run from the
outside: its per-epoch phase timer (`--phase-times`) and where it stops."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.pipeline_helpers import REPO, SHARED, TRANSFORMER, write_params

pytestmark = pytest.mark.slow

if not (SHARED / "dvc-remote").exists():
    pytest.skip("../shared/dvc-remote is not beside the checkout", allow_module_level=True)


def test_train_untracked_times_each_epoch_s_phases_and_stops_where_asked(tiny_pipeline, tmp_path):
    work = tmp_path / "work"  # Lightning's default logger writes below the working directory
    for folder in ("prepared", "tokenized"):
        shutil.copytree(tiny_pipeline.repo / "data" / folder, work / "data" / folder)
    params = copy.deepcopy(tiny_pipeline.params)
    params["budget"] = {"unit": "epochs", "value": 5}
    write_params(work, params)
    phases = tmp_path / "phases.json"
    command = [sys.executable, "-m", "benchmarks.train_untracked", "--arch", "transformer",
               "--params", "params.yaml", "--out", str(tmp_path / "out")]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*command, "--phase-times", str(phases), "--time-to-bleu", "0", "--stop-after-epoch", "1"],
        cwd=work, env=environ, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads(phases.read_text())
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]  # stopped after epoch 1 of the 5 budgeted
    previous_end = 0.0
    for epoch in epochs:
        assert epoch["training_s"] > 0 and epoch["validation_s"] > 0 and epoch["other_s"] >= 0
        spent = epoch["training_s"] + epoch["validation_s"] + epoch["other_s"]
        assert spent <= epoch["end_s"] - previous_end + 0.01  # the phases lie inside the epoch
        assert previous_end < epoch["val_bleu_at_s"] < epoch["end_s"]
        previous_end = epoch["end_s"]
    assert 0 < record["first_batch_s"] < epochs[0]["end_s"]
    summary = record["time_to_bleu"]  # every BLEU is >= 0: reached at the first validation
    assert summary["epoch"] == 0 and summary["seconds"] == epochs[0]["val_bleu_at_s"]
    assert summary["later_epochs"] == {"training_s": 0, "validation_s": 0, "other_s": 0}
    summary_file = tmp_path / "out" / "artifacts" / TRANSFORMER / "training.json"
    assert json.loads(summary_file.read_text())["used_epochs"] == 2
    assert not (tmp_path / "out" / "metrics").exists()  # stopped early: not evaluated

    refused = subprocess.run(
        [*command, "--time-to-bleu", "38"], cwd=work, env=environ, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "need --phase-times" in refused.stderr
