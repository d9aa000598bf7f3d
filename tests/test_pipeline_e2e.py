"""The real `dvc repro` on the tiny profile, in a throw-away copy of the project."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time

import pytest
import yaml

from tests.pipeline_helpers import REPO, SHARED, TRANSFORMER, git, run, trained, write_params

pytestmark = pytest.mark.slow

if not (SHARED / "dvc-remote").exists():
    pytest.skip("../shared/dvc-remote is not beside the checkout", allow_module_level=True)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_stage_output_exists_and_is_well_formed(tiny_pipeline):
    repo, params = tiny_pipeline.repo, tiny_pipeline.params
    stats = json.loads((repo / "metrics" / "prepare.json").read_text())
    assert stats["splits"]["train"]["rows_out"] == 300
    assert (repo / "data" / "tokenized" / "spm.model").stat().st_size > 0
    for arch in params["architectures"]:
        metrics = json.loads((repo / "metrics" / f"{trained(arch)}.json").read_text())
        # The length penalty was chosen on validation (the tiny profile has a grid).
        selection = metrics.pop("decoding_selection")
        assert selection["split"] == params["data"]["validation_split"]
        assert set(metrics) == set(params["data"]["test_splits"])
        for split, values in metrics.items():
            assert 0.0 <= values["bleu"] <= 100.0
            assert 0.0 <= values["chrf"] <= 100.0
            assert values["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
            lines = (repo / "hypotheses" / trained(arch) / f"{split}.txt").read_text().splitlines()
            assert len(lines) == params["data"]["max_eval_pairs"]
        summary = json.loads((repo / "artifacts" / trained(arch) / "training.json").read_text())
        assert summary["num_parameters"] > 0 and summary["run_id"]
        assert (repo / "artifacts" / trained(arch) / "model.safetensors").stat().st_size > 0
        history = (repo / "logs" / trained(arch) / "history.csv").read_text().splitlines()
        assert history[0].startswith("epoch,") and len(history) == 2
    with open(repo / "reports" / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["architecture"] for row in rows] == params["architectures"]
    report = (repo / "reports" / "comparison.md").read_text()
    assert re.search(r"^\| (\*\*)?transformer(\*\*)? \| 1 \|", report, re.M), report
    assert sum(row["selected"] == "True" for row in rows) == 1  # one, chosen on validation
    for png in ("validation_curves.png", "bleu_per_test_set.png"):
        assert (repo / "reports" / png).read_bytes()[:8] == PNG_MAGIC


def test_dvc_metrics_show_lists_bleu_per_architecture(tiny_pipeline):
    shown = run(tiny_pipeline.repo, "dvc", "metrics", "show", "--json").stdout
    metrics = json.loads(shown)
    files = next(iter(metrics.values()))["data"]
    for arch in tiny_pipeline.params["architectures"]:
        data = files[f"metrics/{trained(arch)}.json"]["data"]
        assert isinstance(data["test_2016_flickr"]["bleu"], float)


def test_mlflow_holds_a_finished_run_per_architecture(tiny_pipeline):
    from mlflow.tracking import MlflowClient

    store = tiny_pipeline.repo / "mlruns" / "mlflow.db"
    assert store.exists(), "the pipeline must write the SQLite store under mlruns/"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("multi30k-en-de")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    archs = tiny_pipeline.params["architectures"]
    for arch in archs:
        run_ = by_name[trained(arch)]
        assert run_.info.status == "FINISHED"
        assert "test/test_2016_flickr/bleu" in run_.data.metrics
        assert "val/bleu" in run_.data.metrics
        assert run_.data.tags["mlflow.parentRunId"]
    parents = {by_name[trained(arch)].data.tags["mlflow.parentRunId"] for arch in archs}
    assert len(parents) == 1  # one pipeline run groups the trainings and the study
    assert by_name["study"].data.tags["mlflow.parentRunId"] in parents
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_second_repro_does_nothing(tiny_pipeline):
    started = time.monotonic()
    done = run(tiny_pipeline.repo, "dvc", "repro")
    elapsed = time.monotonic() - started
    assert "Running stage" not in done.stdout
    assert "up to date" in done.stdout
    assert elapsed < 60, f"an up-to-date repro took {elapsed:.0f} s"


def _stages_run(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_changing_beam_size_reruns_only_evaluate_and_compare(tiny_pipeline):
    from mlflow.tracking import MlflowClient

    repo = tiny_pipeline.repo
    archs = tiny_pipeline.params["architectures"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["max_len_margin"] = 1  # shorter hypotheses: the scores must move
    write_params(repo, params)
    # the study reads metrics/ too (BLEU per source length), so it reruns after evaluate
    expected = {f"evaluate@{trained(a)}" for a in archs} | {"compare", "study"}
    try:
        out = run(repo, "dvc", "repro").stdout
        assert _stages_run(out) == expected, out
    finally:
        write_params(repo, tiny_pipeline.params)
        restored = run(repo, "dvc", "repro").stdout
    # Evaluate logs its scores to the MLflow run, so going back to the old params must run it
    # again (not restore its outputs from DVC's run cache) for MLflow to agree with metrics/.
    assert _stages_run(restored) == expected, restored
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    for arch in archs:
        run_id = json.loads((repo / "artifacts" / trained(arch) / "training.json").read_text())[
            "run_id"
        ]
        logged = client.get_run(run_id).data.metrics
        metrics = json.loads((repo / "metrics" / f"{trained(arch)}.json").read_text())
        for split in tiny_pipeline.params["data"]["test_splits"]:
            assert logged[f"test/{split}/bleu"] == metrics[split]["bleu"], (arch, split)
            assert logged[f"test/{split}/chrf"] == metrics[split]["chrf"], (arch, split)
        # ... and the validation BLEU of each length penalty it chose among.
        for length_penalty, bleu in metrics["decoding_selection"]["bleu"].items():
            assert logged[f"validation/validation/beam_bleu/lp_{length_penalty}"] == bleu


def test_metrics_and_curves_are_compared_across_commits(tiny_pipeline, tmp_path):
    """Metrics and the report are small files in git, so `dvc metrics diff` compares commits, and
    the top-level plot overlays every architecture's validation BLEU curve."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_pipeline.repo, repo, symlinks=True)
    archs = tiny_pipeline.params["architectures"]
    tracked = ["params.yaml", "dvc.lock", "metrics", "reports"]
    git(repo, "add", *tracked)
    git(repo, "commit", "-qm", "margin 8")
    assert f"metrics/{TRANSFORMER}.json" in git(repo, "ls-files", "metrics")
    assert "reports/comparison.csv" in git(repo, "ls-files", "reports")
    assert "validation_curves.png" not in git(repo, "ls-files", "reports")  # images stay out
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["max_len_margin"] = 1  # shorter hypotheses: the scores must move
    write_params(repo, params)
    run(repo, "dvc", "repro")
    git(repo, "add", *tracked)
    git(repo, "commit", "-qm", "margin 1")
    diff = json.loads(run(repo, "dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json").stdout)
    changed = [key for arch in archs for key in diff.get(f"metrics/{trained(arch)}.json", {})]
    assert any(key.endswith((".bleu", ".chrf")) for key in changed), diff
    params_diff = json.loads(run(repo, "dvc", "params", "diff", "HEAD~1", "--json").stdout)
    margin = params_diff["params.yaml"]["evaluate.max_len_margin"]
    assert (margin["old"], margin["new"]) == (8, 1)
    shown = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)
    curves = shown["data"]["Validation BLEU by architecture"][0]["content"]["data"]["values"]
    assert {row["field"] for row in curves} == set(archs)


def test_readme_names_the_commands_it_promises():
    readme = (REPO / "README.md").read_text()
    for command in ("dvc repro", "python -m pytest", "dvc metrics show", "nmt ui"):
        assert command in readme
