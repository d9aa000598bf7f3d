"""Parts that read the pipeline's outputs: time to reach validation BLEU levels from the training
histories, and BLEU per source-length bucket from the metrics files, whatever the runs' names."""

from __future__ import annotations

import json

import pytest

from pipelines.core.params import ArchParams
from pipelines.study.efficiency import first_reached, run_efficiency, run_family
from pipelines.study.path import evaluated_runs

MODELS = {
    "transformer": ArchParams(model={"family": "transformer"}),
    "lstm_additive": ArchParams(model={"family": "recurrent"}),
}
HEADER = "epoch,step,train_seconds,val_loss,val_bleu"


def write_history(logs, run: str, rows: list[str]) -> None:
    (logs / run).mkdir(parents=True)
    (logs / run / "history.csv").write_text("\n".join([HEADER, *rows]) + "\n")


def test_first_reached_is_the_first_validation_at_or_above_the_level():
    rows = [
        {"epoch": 0, "step": 10, "train_seconds": 5.0, "val_bleu": 4.0},
        {"epoch": 1, "step": 20, "train_seconds": 9.5, "val_bleu": 10.0},
        {"epoch": 2, "step": 30, "train_seconds": 14.0, "val_bleu": 9.0},
    ]
    assert first_reached(rows, 10.0).seconds == 9.5 and first_reached(rows, 10.0).step == 20
    assert first_reached(rows, 4.0).step == 10
    assert first_reached(rows, 10.5) is None


@pytest.mark.parametrize(
    ("run", "family"),
    [("transformer", "transformer"), ("transformer-1234", "transformer"),
     ("lstm_additive-7", "recurrent"), ("gru-1", None)],
)  # fmt: skip
def test_run_names_with_or_without_a_seed_map_to_their_family(run, family):
    assert run_family(run, MODELS) == family


def test_efficiency_names_the_first_run_at_each_level(tmp_path):
    logs = tmp_path / "logs"
    write_history(logs, "transformer-1234", ["0,50,30.0,3.1,8.0", "1,100,61.0,2.9,21.5"])
    write_history(logs, "lstm_additive-1234", ["0,40,20.0,3.5,9.0", "1,80,41.0,3.3,12.0"])
    result = run_efficiency([5.0, 10.0, 20.0, 40.0], logs, MODELS, tmp_path)
    (claim,) = result.claims
    assert claim.measured == (
        "first to reach validation BLEU 5: lstm_additive-1234, 10: lstm_additive-1234, "
        "20: transformer-1234"
    )
    assert claim.verdict == "mixed"  # first at one of the three levels some run reached
    text = "\n".join(result.lines)
    assert (
        "| transformer-1234 | transformer | 30 s, step 50 | 61 s, step 100 | 61 s, step 100 | – |"
        in text
    )
    assert "| lstm_additive-1234 | recurrent | 20 s, step 40 | 41 s, step 80 | – | – |" in text
    assert result.metrics["efficiency/transformer-1234/seconds_to_20"] == 61.0
    assert (tmp_path / "efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_efficiency_without_histories_or_without_a_rival_family_is_not_measured(tmp_path):
    assert run_efficiency([5.0], tmp_path / "logs", MODELS, tmp_path).claims[0].verdict == (
        "not measured"
    )
    write_history(tmp_path / "logs", "transformer", ["0,50,30.0,3.1,8.0"])
    (claim,) = run_efficiency([5.0], tmp_path / "logs", MODELS, tmp_path).claims
    assert claim.verdict == "not measured"
    assert "another family" in claim.measured


def test_evaluated_runs_are_every_metrics_file_but_prepare_and_the_decoding_settings(tmp_path):
    for name in ("transformer-1234", "lstm_none", "prepare"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name}))
    (tmp_path / "transformer-1234.decoding.json").write_text("{}")
    runs = evaluated_runs(tmp_path)
    assert list(runs) == ["lstm_none", "transformer-1234"]
    assert runs["lstm_none"] == {"name": "lstm_none"}
    assert evaluated_runs(tmp_path / "missing") == {}
