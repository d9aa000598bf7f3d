"""The length penalty chosen on the validation split: the best beam-search BLEU wins, ties keep
the configured value, no test split is read, and the comparison report says what each run used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.params import DecodingSettings, EvaluateParams
from pipelines.inference import evaluation
from pipelines.inference.evaluation import choose_decoding
from pipelines.reports import comparison
from tests.test_comparison import REFERENCES, SPLITS, VAL, make_params, write_outputs

VALIDATION = "validation"


class ScriptedTranslator:
    """Translates every sentence into its reference when the length penalty is `good`, else into
    the reference's first word; records the penalties it decoded with."""

    def __init__(self, good: float | None) -> None:
        self.config = {"tgt_lang": "de"}
        self.good = good
        self.decoded: list[float] = []

    def translate(self, sources: list[str], settings: DecodingSettings, progress: bool = False):
        self.decoded.append(settings.length_penalty)
        references = [REFERENCES[int(source[1:])] for source in sources]
        if settings.length_penalty == self.good:
            return references
        return [reference.split()[0] for reference in references]


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    for split in [VALIDATION, *SPLITS]:
        rows = [json.dumps({"src": f"s{i}", "tgt": ref}) for i, ref in enumerate(REFERENCES)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.fixture
def read_splits(monkeypatch) -> list[str]:
    """Every split the evaluation module opens."""
    opened: list[str] = []
    real = evaluation.read_pairs

    def spy(prepared, split):
        opened.append(split)
        return real(prepared, split)

    monkeypatch.setattr(evaluation, "read_pairs", spy)
    return opened


def test_the_best_validation_bleu_chooses_and_no_test_split_is_read(prepared, read_splits):
    settings = EvaluateParams(length_penalty=0.6, length_penalty_grid=[0.0, 1.0, 1.5])
    translator = ScriptedTranslator(good=1.0)
    chosen, record = choose_decoding(translator, prepared, VALIDATION, settings)
    assert chosen == DecodingSettings(length_penalty=1.0)
    assert translator.decoded == [0.6, 0.0, 1.0, 1.5]  # the configured value first
    assert read_splits == [VALIDATION] * 4
    assert record["split"] == VALIDATION and record["length_penalty"] == 1.0
    assert list(record["bleu"]) == ["0.6", "0.0", "1.0", "1.5"]
    assert record["bleu"]["1.0"] == pytest.approx(100.0)
    assert max(record["bleu"].values()) == record["bleu"]["1.0"] > record["bleu"]["0.6"]


def test_a_tie_keeps_the_configured_length_penalty(prepared):
    settings = EvaluateParams(length_penalty=0.6, length_penalty_grid=[0.2, 1.0])
    chosen, record = choose_decoding(ScriptedTranslator(good=None), prepared, VALIDATION, settings)
    assert len(set(record["bleu"].values())) == 1
    assert chosen.length_penalty == 0.6 and record["length_penalty"] == 0.6


def test_without_a_grid_nothing_is_decoded(prepared, read_splits):
    settings = EvaluateParams(length_penalty=0.8, batch_size=7)
    translator = ScriptedTranslator(good=1.0)
    assert choose_decoding(translator, prepared, VALIDATION, settings) == (
        settings.decoding(),
        None,
    )
    # A grid holding only the configured value has nothing to choose either.
    same = EvaluateParams(length_penalty=0.8, length_penalty_grid=[0.8])
    assert choose_decoding(translator, prepared, VALIDATION, same)[1] is None
    assert translator.decoded == [] and read_splits == []


def test_the_report_says_which_length_penalty_each_run_decoded_with(tmp_path):
    params = make_params(evaluate={"length_penalty_grid": [1.0]})
    paths = write_outputs(tmp_path, params, VAL, {"transformer": 10**9, "lstm_additive": 2})
    for run in params.runs():  # the Transformer's seed 2 chose 1.0 on validation
        metrics_file = paths.metrics / f"{run.name}.json"
        metrics = json.loads(metrics_file.read_text())
        penalty = 1.0 if run.name == "transformer-2" else 0.6
        bleu = {"0.6": 20.0, "1.0": 21.0 if penalty == 1.0 else 19.0}
        selection = {"split": VALIDATION, "bleu": bleu, "length_penalty": penalty}
        metrics_file.write_text(json.dumps({**metrics, "decoding_selection": selection}))
    rows, _ = comparison.compare(params, paths)
    assert [row["length_penalty"] for row in rows] == ["0.6 1.0 0.6", "0.6 0.6 0.6"]
    report = (paths.reports / "comparison.md").read_text()
    assert (
        "Length penalty: chosen per run among 0.6, 1.0 by beam-search BLEU on validation "
        "(`evaluate.length_penalty_grid`): transformer 0.6, 1.0, 0.6; lstm_additive 0.6, 0.6, 0.6."
    ) in report
    assert "the length penalty, and the selected architecture" in report


def test_without_a_grid_the_report_gives_the_one_length_penalty(tmp_path):
    params = make_params(seeds=[1])
    paths = write_outputs(tmp_path, params, VAL, {"transformer": 3, "lstm_additive": 2})
    comparison.compare(params, paths)
    report = (paths.reports / "comparison.md").read_text()
    assert "Length penalty 0.6 for every run (`evaluate.length_penalty`)." in report
