"""The `study` stage end to end on a tiny setting: tiny models, synthetic lengths up to 64, a
few steps per part (seconds each), the real prepare and tokenizer stages on the Multi30k slice,
and a temporary MLflow store: the report, its figures and the `study` run."""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml

from pipelines.stages import prepare, tokenizer
from pipelines.stages import study as study_stage
from pipelines.study.report import PART_CLAIMS
from tests.pipeline_helpers import SHARED, TINY_STUDY, tiny_corpus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VERDICTS = ("supported", "not supported", "mixed", "not measured")
TOPICS = [topic for claims in PART_CLAIMS.values() for topic in claims]
# The evaluate stage's scores and the training histories of two runs named with their seeds.
BUCKETS = {"1-10": 31.25, "11-20": 28.5, "21-30": 22.75, "31+": 17.0}
HISTORIES = {
    "transformer-1234": "0,40,12.5,4.0,0.5\n1,80,25.0,3.5,2.5\n",
    "lstm_additive-1234": "0,30,10.0,4.2,1.5\n1,60,20.0,3.9,1.8\n",
}


def params(study: dict) -> dict:
    return {
        "architectures": ["transformer", "lstm_additive"],
        "models": {
            "transformer": {"model": {"family": "transformer"}},
            "lstm_additive": {"model": {"family": "recurrent"}},
        },
        "data": {"dataset": str(tiny_corpus()), "max_train_pairs": 300},
        "tokenizer": {"vocab_size": 250},
        "tracking": {"experiment": "study-test"},
        "study": study,
    }


def write_run_outputs(root) -> None:
    (root / "metrics").mkdir(exist_ok=True)
    scores = {"bleu": 27.0, "length_buckets": {b: {"bleu": v} for b, v in BUCKETS.items()}}
    (root / "metrics" / "transformer-1234.json").write_text(
        json.dumps({"test_2016_flickr": scores})
    )
    (root / "metrics" / "transformer-1234.decoding.json").write_text("{}")
    for run, rows in HISTORIES.items():
        (root / "logs" / run).mkdir(parents=True)
        (root / "logs" / run / "history.csv").write_text(
            "epoch,step,train_seconds,val_loss,val_bleu\n" + rows
        )


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The stage run once in a fresh folder with its own MLflow store: (folder, report)."""
    if not (SHARED / "multi30k").exists():
        pytest.skip("../shared/multi30k is not beside the checkout")
    root = tmp_path_factory.mktemp("study")
    (root / "params.yaml").write_text(yaml.safe_dump(params(TINY_STUDY)))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        prepare.main(["--params", "params.yaml"])
        tokenizer.main(["--params", "params.yaml"])
        write_run_outputs(root)
        study_stage.main(["--params", "params.yaml"])
    return root, (root / "reports" / "study.md").read_text(encoding="utf-8")


def table_rows(report: str) -> dict[str, list[str]]:
    """The claims table: topic -> [the seed says, measured, verdict]."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells and cells[0] in TOPICS:
            rows[cells[0]] = cells[1:]
    return rows


def test_the_report_has_a_measured_column_and_a_verdict_for_every_claim(study_run):
    _, report = study_run
    rows = table_rows(report)
    assert list(rows) == TOPICS
    for topic, (seed, measured, verdict) in rows.items():
        assert seed and measured, topic
        assert verdict.strip("*") in VERDICTS, topic
    for number, title in enumerate(
        ["Cost against length", "Path length", "Positional encoding", "Heads",
         "Training efficiency"], start=1
    ):  # fmt: skip
        assert f"## {number}. {title}" in report


def test_verdicts_follow_from_the_numbers(study_run):
    """The sequential chain and the permutation property are exact: their verdicts are fixed;
    the efficiency histories were written here, so their verdict is known too."""
    _, report = study_run
    rows = table_rows(report)
    assert rows["Sequential operations"][2] == "**supported**"
    assert re.search(r"recurrent 514 \(∝ n\^(0\.99|1\.00)\)", rows["Sequential operations"][1])
    assert rows["Permutation equivariance"][2] == "**supported**"
    # lstm_additive-1234 reaches BLEU 1 first (10 s), transformer-1234 reaches 2 (25 s) alone
    assert rows["Training time"][1] == (
        "first to reach validation BLEU 1: lstm_additive-1234, 2: transformer-1234"
    )
    assert rows["Training time"][2] == "**mixed**"


def test_the_report_reads_the_pipeline_s_metrics_and_histories(study_run):
    _, report = study_run
    assert "| transformer-1234 | 31.2 | 28.5 | 22.8 | 17 |" in report
    assert "| lstm_additive-1234 | recurrent | 10 s, step 30 | – |" in report
    assert "| transformer-1234 | transformer | 25 s, step 80 | 25 s, step 80 |" in report


def test_every_figure_the_report_shows_is_a_png_beside_it(study_run):
    root, report = study_run
    shown = re.findall(r"\]\(study/([\w.]+\.png)\)", report)
    written = sorted(path.name for path in (root / "reports" / "study").iterdir())
    assert sorted(shown) == written
    assert {"cost_time.png", "path_accuracy.png", "bleu_by_length.png", "heads_4.png"} <= set(
        written
    )
    for name in written:
        assert (root / "reports" / "study" / name).read_bytes()[:8] == PNG_MAGIC


def test_the_study_run_in_mlflow_holds_the_report_numbers_and_lineage(study_run):
    from mlflow.tracking import MlflowClient

    root, report = study_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "study" and run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["mlflow.source.name"] == "python -m pipelines.stages.study"
    assert {"git.commit", "dvc.data_hash", "version.torch", "device"} <= set(tags)
    verdicts = {topic: cells[2].strip("*") for topic, cells in table_rows(report).items()}
    assert {topic: tags[f"verdict.{topic}"] for topic in TOPICS} == verdicts
    assert run.data.params["study.lengths"] == "[16, 32, 64]"
    assert metrics["positional/exact_none"] <= 1e-12
    assert metrics["cost/recurrent/chain_exponent"] == pytest.approx(1.0, abs=0.05)
    assert metrics["efficiency/transformer-1234/seconds_to_2"] == 25.0
    assert 0.0 <= metrics["path/transformer/accuracy_far"] <= 1.0
    logged = [f.path for f in client.list_artifacts(run.info.run_id, "study")]
    assert "study/study.md" in logged
    figures = sorted(f.path for f in client.list_artifacts(run.info.run_id, "study/study"))
    assert figures == sorted(
        f"study/study/{path.name}" for path in (root / "reports" / "study").iterdir()
    )


def test_parts_switched_off_are_marked_and_no_tracking_needs_no_mlflow(tmp_path, monkeypatch):
    """Only `efficiency`, which needs no corpus, with --no-tracking where mlflow is missing."""
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(params({"parts": ["efficiency"], "bleu_levels": [2.0]}))
    )
    write_run_outputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    study_stage.main(["--params", "params.yaml", "--no-tracking"])
    rows = table_rows((tmp_path / "reports" / "study.md").read_text(encoding="utf-8"))
    assert rows["Complexity per layer"][1:] == ["part `cost` off", "**not measured**"]
    assert rows["Heads"][1:] == ["part `heads` off", "**not measured**"]
    assert rows["Training time"][2] == "**supported**"  # transformer-1234 alone reaches 2
    assert [p.name for p in (tmp_path / "reports" / "study").iterdir()] == ["efficiency.png"]
    assert not (tmp_path / "mlruns").exists()


def test_the_study_run_joins_the_parent_run_its_trainings_recorded(tmp_path):
    from pipelines.core.params import load_params
    from pipelines.core.paths import ProjectPaths
    from pipelines.tracking.study_run import pipeline_parent_id

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(TINY_STUDY)))
    loaded, paths = load_params(tmp_path / "params.yaml"), ProjectPaths(tmp_path)
    assert pipeline_parent_id(loaded, paths) is None  # nothing trained: a run of its own
    runs = loaded.runs()
    first, second = paths.artifacts / runs[0].name, paths.artifacts / runs[-1].name
    first.mkdir(parents=True)
    (first / "training.json").write_text(json.dumps({"parent_run_id": None}))
    second.mkdir(parents=True, exist_ok=True)
    (second / "training.json").write_text(json.dumps({"parent_run_id": "abc123"}))
    assert pipeline_parent_id(loaded, paths) == "abc123"
