"""The comparison report and model selection, on hand-made pipeline outputs: seed means and
spreads, paired-bootstrap intervals, the budget column, and choices made on validation only."""

from __future__ import annotations

import builtins
import copy
import csv
import json
import statistics
from pathlib import Path

import pytest

from models.config import ConfigError, from_dict
from pipelines.core.params import Params, load_params
from pipelines.core.paths import ProjectPaths
from pipelines.core.scoring import bleu_difference, bleu_metric
from pipelines.reports import comparison
from pipelines.reports.selection import select
from tests.pipeline_helpers import REPO

REFERENCES = [
    "Ein Mann fährt Fahrrad auf der Straße.",
    "Zwei Kinder spielen im Park.",
    "Eine Frau liest ein Buch im Café.",
    "Ein Hund rennt über die Wiese.",
    "Drei Männer arbeiten auf einer Baustelle.",
    "Ein Mädchen isst ein Eis.",
] * 5
SPLITS = ["test_2016_flickr", "test_2017_flickr"]


def damaged(sentence: str, every: int, index: int) -> str:
    """`sentence` with its last word dropped on every `every`-th line: a worse system."""
    return sentence.rsplit(" ", 1)[0] if index % every == 0 else sentence


def make_params(**changes) -> Params:
    raw = {
        "architectures": ["transformer", "lstm_additive"],
        "seeds": [1, 2, 3],
        "budget": {"unit": "steps", "value": 50},
        "data": {"test_splits": SPLITS},
        "models": {
            "transformer": {"model": {"family": "transformer"}},
            "lstm_additive": {"model": {"family": "recurrent"}},
        },
    }
    raw.update(changes)
    return from_dict(Params, raw)


def write_outputs(root: Path, params: Params, val: dict, quality: dict) -> ProjectPaths:
    """Training summaries with validation BLEU `val[arch][seed]`, histories, and hypotheses that
    drop a word on every `quality[arch]`-th line of each test split (smaller: worse)."""
    paths = ProjectPaths(root)
    prepared = paths.prepared
    prepared.mkdir(parents=True)
    for split in [params.data.validation_split, *SPLITS]:
        rows = [json.dumps({"src": f"s{i}", "tgt": ref}) for i, ref in enumerate(REFERENCES)]
        (prepared / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    for run in params.runs():
        lines = [damaged(r, quality[run.arch], i + run.seed) for i, r in enumerate(REFERENCES)]
        folder = paths.hypotheses / run.name
        folder.mkdir(parents=True)
        metrics = {}
        for split in SPLITS:
            (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
            bleu = bleu_metric("de").corpus_score(lines, [REFERENCES]).score
            metrics[split] = {"bleu": round(bleu, 2), "chrf": 50.0, "signature": "sig"}
        paths.metrics.mkdir(exist_ok=True)
        (paths.metrics / f"{run.name}.json").write_text(json.dumps(metrics))
        summary = {
            "run_id": f"id-{run.name}",
            "num_parameters": 1000,
            "val_bleu": val[run.arch][run.seed],
            "train_seconds": 10.0 * run.seed,
            "tokens_per_sec": 100.0,
            "used_epochs": 1.5,
            "used_steps": 50,
            "used_tokens": 1234,
            "used_seconds": 10.0,
        }
        (paths.artifacts / run.name).mkdir(parents=True)
        (paths.artifacts / run.name / "training.json").write_text(json.dumps(summary))
        history = paths.logs / run.name / "history.csv"
        history.parent.mkdir(parents=True)
        history.write_text("epoch,train_seconds,val_bleu\n0,5.0,10.0\n1,9.0,19.5\n2,12.0,20.0\n")
    return paths


VAL = {"transformer": {1: 30.0, 2: 31.0, 3: 29.0}, "lstm_additive": {1: 20.0, 2: 22.0, 3: 21.0}}


def test_selection_reads_validation_only_even_when_the_test_sets_disagree(tmp_path, monkeypatch):
    params = make_params()
    # The LSTM's test hypotheses are perfect and the Transformer's damaged: a test-set choice
    # would pick the LSTM; validation BLEU says the Transformer.
    paths = write_outputs(tmp_path, params, VAL, {"transformer": 2, "lstm_additive": 10**9})
    opened: list[str] = []
    real_open, real_read = builtins.open, Path.read_text

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_read(path, *args, **kwargs):
        opened.append(str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(Path, "read_text", spy_read)
    selection = select(params, paths)
    monkeypatch.undo()
    assert selection.arch == "transformer" and selection.run.seed == 2  # its best seed
    assert selection.mean_val_bleu == pytest.approx({"transformer": 30.0, "lstm_additive": 21.0})
    read = [name for name in opened if str(tmp_path) in name]
    assert read and all(name.endswith("training.json") for name in read), read
    assert not any(split in name for name in read for split in SPLITS)


def test_the_table_has_seed_means_spreads_intervals_and_the_budget(tmp_path):
    params = make_params()
    paths = write_outputs(tmp_path, params, VAL, {"transformer": 10**9, "lstm_additive": 2})
    rows, selection = comparison.compare(params, paths)
    by_arch = {row["architecture"]: row for row in rows}
    best, lstm = by_arch["transformer"], by_arch["lstm_additive"]
    assert best["selected"] and not lstm["selected"]
    assert best["seeds"] == lstm["seeds"] == 3
    # Mean and sample standard deviation over the three seeds' scores.
    scores = [json.loads((paths.metrics / f"{r.name}.json").read_text()) for r in params.runs()]
    lstm_scores = [s[SPLITS[0]]["bleu"] for s in scores[3:]]
    assert lstm[f"{SPLITS[0]}_bleu"] == pytest.approx(statistics.fmean(lstm_scores), abs=0.01)
    assert lstm[f"{SPLITS[0]}_bleu_sd"] == pytest.approx(statistics.stdev(lstm_scores), abs=0.01)
    assert best["val_bleu"] == 30.0 and best["val_bleu_sd"] == pytest.approx(1.0)
    # The LSTM drops words: it is worse than the best, and the interval says so.
    assert lstm[f"{SPLITS[0]}_difference"] < 0
    assert lstm[f"{SPLITS[0]}_ci_low"] <= lstm[f"{SPLITS[0]}_difference"]
    assert lstm[f"{SPLITS[0]}_ci_high"] < 0
    assert best[f"{SPLITS[0]}_difference"] == ""  # the best has no difference to itself
    assert best["budget"] == "50 steps" and best["budget_used"] == 50
    assert best["seconds_to_95"] == pytest.approx(9.0)  # 19.5 >= 0.95 * 20
    with open(paths.reports / "comparison.csv") as handle:
        assert [row["architecture"] for row in csv.DictReader(handle)] == params.architectures
    report = (paths.reports / "comparison.md").read_text()
    assert "| **transformer** | 3 |" in report and "(best)" in report
    assert "50 of 50 steps" in report
    assert "pooled over the 3 seeds" in report
    assert "Reported only, never used for a decision: test_2016_flickr, test_2017_flickr" in report
    assert "registered: transformer-2" in report
    assert selection.run.name == "transformer-2"


def test_a_test_split_used_for_promotion_is_marked(tmp_path):
    params = make_params(seeds=[1], retrain={"promotion_split": SPLITS[0]})
    paths = write_outputs(tmp_path, params, VAL, {"transformer": 3, "lstm_additive": 2})
    comparison.compare(params, paths)
    report = (paths.reports / "comparison.md").read_text()
    assert f"{SPLITS[0]} † BLEU" in report and f"{SPLITS[1]} BLEU" in report
    assert "it is used for decisions" in report
    assert f"Reported only, never used for a decision: {SPLITS[1]}." in report
    assert "on the one seed's outputs (seed 1)" in report


def test_bleu_difference_is_antisymmetric_and_zero_for_a_system_against_itself():
    worse = [damaged(r, 2, i) for i, r in enumerate(REFERENCES)]
    same = bleu_difference(worse, worse, REFERENCES, "de")
    assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    up = bleu_difference(worse, REFERENCES, REFERENCES, "de")
    down = bleu_difference(REFERENCES, worse, REFERENCES, "de")
    assert up["difference"] == -down["difference"] > 0
    assert up["ci_low"] == pytest.approx(-down["ci_high"], abs=0.011)
    assert 0 < up["ci_low"] <= up["difference"] <= up["ci_high"]


def test_a_missing_training_names_the_stage_to_run(tmp_path):
    params = make_params()
    paths = write_outputs(tmp_path, params, VAL, {"transformer": 3, "lstm_additive": 2})
    (paths.artifacts / "lstm_additive-2" / "training.json").unlink()
    with pytest.raises(Exception, match=r"lstm_additive-2/training.json: missing; run train@"):
        comparison.compare(params, paths)


# --- params: the budget, the seeds and the promotion split ---------------------------------------

BASE = load_params(REPO / "params.yaml")


def raw_params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget": {"unit": "epochs", "value": 0}}, r"^budget\.value: must be > 0 epochs"),
        ({"budget": {"unit": "hours", "value": 1}}, r"^budget\.unit: "),
        ({"budget": {"unit": "steps", "value": 2.5}}, r"^budget\.value: must be a whole number"),
        ({"seeds": [1, 2, 1]}, r"^seeds: lists 1 more than once"),
        ({"seeds": []}, r"^seeds: needs at least one seed"),
        (
            {"retrain": {"promotion_split": "test_2018"}},
            r"^retrain\.promotion_split: 'test_2018' is neither the validation split",
        ),
    ],
)
def test_bad_budget_seeds_and_promotion_split_name_the_key(tmp_path, change, message):
    raw = raw_params()
    raw.update(change)
    with pytest.raises(ConfigError, match=message):
        from_dict(Params, copy.deepcopy(raw))


def test_the_only_test_split_cannot_be_the_promotion_split():
    raw = raw_params()
    raw["data"]["test_splits"] = ["test_2016_flickr"]
    raw["retrain"]["promotion_split"] = "test_2016_flickr"
    with pytest.raises(ConfigError, match=r"^retrain\.promotion_split: .*only test split"):
        from_dict(Params, raw)
    raw["retrain"]["promotion_split"] = "validation"
    assert from_dict(Params, raw).promotion_split == "validation"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 1}, r"^seed: replaced by `seeds: \[...\]`"),
        ({"train": {"max_time_s": 60}}, r"^train\.max_time_s: replaced by `budget`"),
        (
            {"models": {"transformer": {"optim": {"max_epochs": 3}}}},
            r"^models\.transformer\.optim\.max_epochs: replaced by `budget`",
        ),
    ],
)
def test_keys_of_older_params_files_say_where_they_went(tmp_path, change, message):
    from pipelines.core.params import deep_update

    path = tmp_path / "params.yaml"
    import yaml

    path.write_text(yaml.safe_dump(deep_update(raw_params(), change)))
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_the_default_params_give_every_architecture_one_budget_and_promote_on_validation():
    assert BASE.budget.unit == "epochs" and BASE.budget.value > 0
    assert BASE.promotion_split == BASE.data.validation_split
    assert BASE.reporting_splits == BASE.data.test_splits
    assert [run.name for run in BASE.runs("transformer")] == [f"transformer-{BASE.seeds[0]}"]
    gpu = load_params(REPO / "profiles" / "gpu.yaml")
    assert len(gpu.seeds) == 3 and {"convs2s", "gru", "lstm_none"} <= set(gpu.architectures)
