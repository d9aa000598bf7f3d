"""The prepare stage: determinism, normalization, each filter's count, each error's message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.config import ConfigError, from_dict
from pipelines.data import preparation as prepare_module
from pipelines.core.errors import PipelineError
from pipelines.core.params import DataParams, PrepareParams
from pipelines.data.corpus import is_local
from pipelines.data.normalize import normalize_text
from pipelines.data.prepared import read_pairs
from pipelines.data.preparation import FILTERS, prepare

from .conftest import REPO, TEST_SPLITS, TINY_CORPUS, pair, stage_params, tiny_data, write_jsonl

GOOD = [
    pair("A dog runs .", "Ein Hund rennt ."),
    pair("Two cats sleep .", "Zwei Katzen schlafen ."),
]


def make_corpus(folder: Path, **splits: list) -> Path:
    """A corpus folder whose splits default to two good pairs; pass a split=None to omit it."""
    defaults = {"train": GOOD, "validation": GOOD, **dict.fromkeys(TEST_SPLITS, GOOD)}
    defaults.update(splits)
    for name, records in defaults.items():
        if records is not None:
            write_jsonl(folder / f"{name}.jsonl", records)
    return folder


def run_prepare(folder: Path, out: Path, cache: str, prep: PrepareParams | None = None, **data):
    return prepare(tiny_data(dataset=str(folder), **data), prep or PrepareParams(), out, cache)


# ----------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(
    ("raw", "form", "expected", "had_control"),
    [
        ("  A  dog\t runs .\n", "NFKC", "A dog runs .", False),
        ("ﬁne ½", "NFKC", "fine 1⁄2", False),
        ("ﬁne", "none", "ﬁne", False),
        ("Cafe\u0301", "NFC", "Café", False),
        ("non\u00a0breaking", "NFKC", "non breaking", False),
        ("bell\x07 and nul\x00!", "NFKC", "bell and nul!", True),
        ("\ufeffzero\u200bwidth", "NFC", "zerowidth", True),
        ("\x00\x07\x1b", "NFKC", "", True),
    ],
)
def test_normalize_text(raw: str, form: str, expected: str, had_control: bool) -> None:
    assert normalize_text(raw, form) == (expected, had_control)


# ----------------------------------------------------------------------------- the tiny real corpus


def test_prepare_is_deterministic(tmp_path: Path, hf_cache: str) -> None:
    first = run_prepare(TINY_CORPUS, tmp_path / "a", hf_cache)
    second = run_prepare(TINY_CORPUS, tmp_path / "b", hf_cache)
    assert first == second
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(
        ["manifest.json", "train.jsonl", "validation.jsonl"] + [f"{s}.jsonl" for s in TEST_SPLITS]
    )
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left"


def test_outputs_manifest_and_stats(prepared_tiny: Path) -> None:
    manifest = json.loads((prepared_tiny / "manifest.json").read_text())
    assert manifest["train"] == "train"
    assert manifest["validation"] == "validation"
    assert manifest["test"] == TEST_SPLITS
    assert manifest["source"]["kind"] == "local"
    assert manifest["source"]["dataset"] == str(TINY_CORPUS)
    for split, entry in manifest["splits"].items():
        blob = (prepared_tiny / entry["file"]).read_bytes()
        assert entry["rows"] == blob.count(b"\n")
        import hashlib

        assert entry["sha256"] == hashlib.sha256(blob).hexdigest(), split
    # validation and test splits are kept whole, in order
    src, tgt = read_pairs(prepared_tiny, "validation")
    assert len(src) == manifest["splits"]["validation"]["rows"] == 40
    assert src[0] == "A group of men are loading cotton onto a truck"
    assert tgt[0] == "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"


def test_stats_keys(tmp_path: Path, hf_cache: str) -> None:
    stats = run_prepare(TINY_CORPUS, tmp_path / "out", hf_cache)
    assert set(stats) == {"src_lang", "tgt_lang", "splits", "filtered"}
    assert set(stats["filtered"]) == set(FILTERS)
    assert list(stats["splits"]) == ["train", "validation", *TEST_SPLITS]
    for split, entry in stats["splits"].items():
        assert set(entry) == {
            "role",
            "rows_in",
            "rows_out",
            "normalized",
            "control_chars",
            "filtered",
        }, split
        assert set(entry["filtered"]) == set(FILTERS)
        assert entry["rows_in"] - sum(entry["filtered"].values()) == entry["rows_out"]
    assert stats["splits"]["train"]["rows_in"] == 300
    assert stats["splits"]["validation"]["role"] == "validation"
    assert stats["splits"][TEST_SPLITS[0]]["role"] == "test"
    json.dumps(stats)  # metrics must be JSON-serializable


@pytest.mark.parametrize(("src_lang", "tgt_lang"), [("en", "de"), ("de", "en")])
def test_either_direction(tmp_path: Path, hf_cache: str, src_lang: str, tgt_lang: str) -> None:
    out = tmp_path / "out"
    run_prepare(TINY_CORPUS, out, hf_cache, src_lang=src_lang, tgt_lang=tgt_lang)
    src, tgt = read_pairs(out, "train")
    english = "Two young, White males are outside near many bushes."
    german = "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert (src[0], tgt[0]) == ((english, german) if src_lang == "en" else (german, english))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["src_lang"], manifest["tgt_lang"]) == (src_lang, tgt_lang)


def test_max_train_pairs_keeps_the_first(tmp_path: Path, hf_cache: str) -> None:
    full = run_prepare(TINY_CORPUS, tmp_path / "full", hf_cache)
    capped = run_prepare(TINY_CORPUS, tmp_path / "capped", hf_cache, max_train_pairs=50)
    train = capped["splits"]["train"]
    assert train["rows_out"] == 50
    assert train["filtered"]["max_train_pairs"] == full["splits"]["train"]["rows_out"] - 50
    full_src, _ = read_pairs(tmp_path / "full", "train")
    capped_src, _ = read_pairs(tmp_path / "capped", "train")
    assert capped_src == full_src[:50]
    assert capped["splits"]["validation"]["rows_out"] == 40  # caps only the training split


# ----------------------------------------------------------------------------- filters


def test_each_filter_counts_on_a_crafted_train_split(tmp_path: Path, hf_cache: str) -> None:
    train = [
        *GOOD,  # kept
        pair("", "Leer ."),  # empty
        pair("Only control .", "\x00\x07"),  # empty (control characters only)
        pair(" ".join(["word"] * 5000), "Ein sehr langer Satz ."),  # too_long
        pair(" ".join(["w"] * 101), " ".join(["w"] * 101)),  # too_long (> max_tokens=100)
        pair(" ".join(["w"] * 100), " ".join(["w"] * 100)),  # kept: exactly max_tokens
        pair("Hi", "Hallo du da drüben"),  # length_ratio 4 > 3
        pair("Hi there you", "Hallo"),  # length_ratio exactly 3: kept
        GOOD[0],  # duplicate
        pair("A  dog\truns .", "Ein Hund rennt ."),  # duplicate after normalization
        pair("A cat\x00 sleeps .", "Eine Katze schläft ."),  # kept, control char removed
        pair("ﬁsh swim .", "Fische schwimmen ."),  # kept, NFKC
    ]
    folder = make_corpus(tmp_path / "corpus", train=train)
    stats = run_prepare(folder, tmp_path / "out", hf_cache)
    assert stats["filtered"] == {
        "empty": 2,
        "too_long": 2,
        "length_ratio": 1,
        "duplicate": 2,
        "max_train_pairs": 0,
    }
    entry = stats["splits"]["train"]
    assert (entry["rows_in"], entry["rows_out"]) == (13, 6)
    assert entry["control_chars"] == 2  # the control-only row and the cat
    assert entry["normalized"] == 4  # control-only, double space, cat, ligature
    src, _ = read_pairs(tmp_path / "out", "train")
    assert src == [
        "A dog runs .",
        "Two cats sleep .",
        " ".join(["w"] * 100),
        "Hi there you",
        "A cat sleeps .",
        "fish swim .",
    ]


def test_duplicates_kept_when_asked(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "corpus", train=[*GOOD, GOOD[0]])
    stats = run_prepare(folder, tmp_path / "out", hf_cache, PrepareParams(drop_duplicates=False))
    assert stats["filtered"]["duplicate"] == 0
    assert stats["splits"]["train"]["rows_out"] == 3


def test_validation_and_test_are_kept_whole(tmp_path: Path, hf_cache: str) -> None:
    long_pair = pair(" ".join(["w"] * 500), "kurz")  # would be filtered from train twice over
    folder = make_corpus(tmp_path / "corpus", validation=[*GOOD, long_pair, GOOD[0]])
    stats = run_prepare(folder, tmp_path / "out", hf_cache)
    assert stats["splits"]["validation"]["rows_out"] == 4
    assert stats["splits"]["validation"]["filtered"] == dict.fromkeys(FILTERS, 0)


def test_gzip_and_plain_files(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "corpus", train=None)
    write_jsonl(folder / "train.jsonl", GOOD, compress=True)
    stats = run_prepare(folder, tmp_path / "out", hf_cache)
    assert stats["splits"]["train"]["rows_out"] == 2


# ----------------------------------------------------------------------------- errors


def expect_error(
    folder: Path, tmp_path: Path, cache: str, pattern: str = "", prefix: str = "", **data
) -> str:
    """Run prepare, expecting a one-line PipelineError matching `pattern` or starting `prefix`."""
    with pytest.raises(PipelineError) as info:
        run_prepare(folder, tmp_path / "out", cache, **data)
    assert not (tmp_path / "out").exists(), "nothing is written when the data is bad"
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(prefix), message
    assert re.search(pattern, message), message
    return message


def test_invalid_utf8_names_file_and_line(tmp_path: Path, hf_cache: str) -> None:
    bad = b'{"translation": {"en": "caf\xe9", "de": "Caf\xe9"}}'
    folder = make_corpus(tmp_path / "c", train=[*GOOD, bad])
    path = folder / "train.jsonl"
    expect_error(folder, tmp_path, hf_cache, prefix=f"{path}:3: invalid UTF-8")


def test_invalid_utf8_in_gzip(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", validation=None)
    write_jsonl(folder / "validation.jsonl", [b"\xff\xfe", *GOOD], compress=True)
    path = folder / "validation.jsonl.gz"
    expect_error(folder, tmp_path, hf_cache, prefix=f"{path}:1: invalid UTF-8")


def test_invalid_json(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", train=[GOOD[0], '{"translation": {"en": '])
    expect_error(folder, tmp_path, hf_cache, prefix=f"{folder / 'train.jsonl'}:2: invalid JSON")


def test_missing_translation_key(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", train=[*GOOD, {"en": "x", "de": "y"}])
    expect_error(
        folder, tmp_path, hf_cache, prefix=f"{folder / 'train.jsonl'}:3: missing key 'translation'"
    )


def test_missing_language_key(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(
        tmp_path / "c", test_2017_flickr=[GOOD[0], {"translation": {"en": "A dog ."}}]
    )
    path = folder / "test_2017_flickr.jsonl"
    expect_error(folder, tmp_path, hf_cache, prefix=f"{path}:2: missing language key 'de'")


def test_non_string_text(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", train=[{"translation": {"en": 3, "de": "drei"}}])
    expect_error(folder, tmp_path, hf_cache, r"train.jsonl:1: 'translation.en' must be a string")


def test_language_pair_not_present_is_one_error_first(tmp_path: Path, hf_cache: str) -> None:
    # a line-level problem too: the pair error still comes first
    folder = make_corpus(tmp_path / "c", train=[*GOOD, "not json"])
    message = expect_error(
        folder, tmp_path, hf_cache, "language pair fr-de not in", src_lang="fr", tgt_lang="de"
    )
    assert "languages present: de, en" in message
    assert str(folder) in message


def test_missing_split_files_are_all_named(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", validation=None, test_2017_flickr=None)
    message = expect_error(folder, tmp_path, hf_cache, "validation, test_2017_flickr not found")
    assert str(folder) in message


def test_missing_folder(tmp_path: Path, hf_cache: str) -> None:
    expect_error(tmp_path / "nowhere", tmp_path, hf_cache, "dataset folder .*nowhere not found")


def test_empty_split(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", test_2016_flickr=None)
    (folder / "test_2016_flickr.jsonl").write_bytes(b"")
    expect_error(folder, tmp_path, hf_cache, "split 'test_2016_flickr' .* is empty")


def test_blank_line(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", train=[GOOD[0], "", GOOD[1]])
    expect_error(folder, tmp_path, hf_cache, prefix=f"{folder / 'train.jsonl'}:2: blank line")


def test_not_gzip(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", train=None)
    (folder / "train.jsonl.gz").write_bytes(b"plain text, not gzip\n")
    expect_error(folder, tmp_path, hf_cache, "train.jsonl.gz: not a valid gzip file")


@pytest.mark.parametrize("text", ["", "   ", "\x00\x1b"])
def test_unscorable_sentence_in_validation_or_test(
    tmp_path: Path, hf_cache: str, text: str
) -> None:
    folder = make_corpus(tmp_path / "c", validation=[*GOOD, pair("A dog .", text)])
    path = folder / "validation.jsonl"
    message = expect_error(folder, tmp_path, hf_cache, prefix=f"{path}:3: empty")
    assert "target" in message
    folder = make_corpus(tmp_path / "d", test_2017_flickr=[pair(text, "Ein Hund .")])
    expect_error(folder, tmp_path, hf_cache, prefix=f"{folder / 'test_2017_flickr.jsonl'}:1: empty")


def test_train_emptied_by_filters(tmp_path: Path, hf_cache: str) -> None:
    folder = make_corpus(tmp_path / "c", train=[pair("", "x"), pair("Hi", "a b c d e")])
    expect_error(folder, tmp_path, hf_cache, "no rows left after filtering")


def test_bad_data_keeps_previous_output(tmp_path: Path, hf_cache: str) -> None:
    good = make_corpus(tmp_path / "good")
    run_prepare(good, tmp_path / "out", hf_cache)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    bad = make_corpus(tmp_path / "bad", train=[pair("", "x")])
    with pytest.raises(PipelineError):
        run_prepare(bad, tmp_path / "out", hf_cache)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


# ----------------------------------------------------------------------------- the Hub branch


@pytest.mark.parametrize(
    ("dataset", "local"),
    [
        ("data/multi30k", True),
        ("./corpus", True),
        ("/abs/corpus", True),
        ("a/b/c", True),
        ("bentrevett/multi30k", False),
        ("wmt/wmt14", False),
        ("opus100", False),
    ],
)
def test_is_local(dataset: str, local: bool) -> None:
    assert is_local(dataset) is local


def fake_hub(monkeypatch: pytest.MonkeyPatch, splits: dict, calls: list | None = None) -> None:
    import datasets

    def load_dataset(*args, **kwargs):
        if calls is not None:
            calls.append((args, kwargs))
        if isinstance(splits, Exception):
            raise splits
        return datasets.DatasetDict(
            {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def hub_splits(rows: list) -> dict:
    return {"train": rows, "validation": rows, **dict.fromkeys(TEST_SPLITS, rows)}


def test_hub_dataset_translation_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    fake_hub(monkeypatch, hub_splits(GOOD), calls)
    data = tiny_data(dataset="someone/corpus", config="de-en", revision="v1.0")
    stats = prepare(data, PrepareParams(), tmp_path / "out")
    assert calls == [(("someone/corpus", "de-en"), {"revision": "v1.0", "cache_dir": None})]
    assert stats["splits"]["train"]["rows_out"] == 2
    src, tgt = read_pairs(tmp_path / "out", "validation")
    assert (src[0], tgt[0]) == ("A dog runs .", "Ein Hund rennt .")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == {
        "dataset": "someone/corpus",
        "kind": "hub",
        "config": "de-en",
        "revision": "v1.0",
        "files": None,
    }


def test_hub_dataset_column_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"en": "A dog .", "de": "Ein Hund ."}]
    fake_hub(monkeypatch, hub_splits(rows))
    prepare(tiny_data(dataset="someone/flat"), PrepareParams(), tmp_path / "out")
    assert read_pairs(tmp_path / "out", "train") == (["A dog ."], ["Ein Hund ."])


def test_hub_missing_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, {"train": GOOD, "validation": GOOD, "test": GOOD})
    with pytest.raises(
        PipelineError,
        match="test_2016_flickr, test_2017_flickr not in someone/c "
        r"\(available: train, validation, test\)",
    ):
        prepare(tiny_data(dataset="someone/c"), PrepareParams(), tmp_path / "out")


def test_hub_language_pair_not_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, hub_splits(GOOD))
    with pytest.raises(PipelineError, match="languages present: de, en"):
        prepare(tiny_data(dataset="someone/c", src_lang="fr"), PrepareParams(), tmp_path / "o")


def test_hub_missing_text_names_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [GOOD[0], {"translation": {"en": "A cat .", "de": None}}]
    fake_hub(monkeypatch, hub_splits(rows))
    with pytest.raises(PipelineError, match=r"someone/c\[train\] row 1: missing language key 'de'"):
        prepare(tiny_data(dataset="someone/c"), PrepareParams(), tmp_path / "out")


def test_hub_load_failure_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, ConnectionError("no network"))
    with pytest.raises(PipelineError, match=r"could not load 'someone/c'.*ConnectionError"):
        prepare(tiny_data(dataset="someone/c"), PrepareParams(), tmp_path / "out")


# ----------------------------------------------------------------------------- the stage command


def run_stage(tmp_path: Path, params: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "pipelines.stages.prepare", "--params", str(params)]
    command += ["--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]


def test_stage_invalid_utf8_exits_2(tmp_path: Path) -> None:
    bad = b'{"translation": {"en": "\xc3\x28", "de": "x"}}'
    folder = make_corpus(tmp_path / "c", train=[*GOOD, *GOOD, bad])
    result = run_stage(tmp_path, stage_params(tmp_path, data={"dataset": str(folder)}))
    assert_one_line_error(result, f"{folder / 'train.jsonl'}:5: invalid UTF-8")
    assert not (tmp_path / "metrics.json").exists()


def test_stage_missing_language_key_exits_2(tmp_path: Path) -> None:
    folder = make_corpus(tmp_path / "c", validation=[GOOD[0], {"translation": {"de": "Hund"}}])
    result = run_stage(tmp_path, stage_params(tmp_path, data={"dataset": str(folder)}))
    assert_one_line_error(result, f"{folder / 'validation.jsonl'}:2: missing language key 'en'")


def test_stage_unknown_language_exits_2(tmp_path: Path) -> None:
    folder = make_corpus(tmp_path / "c")
    result = run_stage(
        tmp_path, stage_params(tmp_path, data={"dataset": str(folder), "src_lang": "fr"})
    )
    assert_one_line_error(result, "languages present: de, en")


def test_stage_bad_params_exit_2(tmp_path: Path) -> None:
    params = stage_params(tmp_path, data={"tgt_lang": "en"})
    result = run_stage(tmp_path, params)
    assert_one_line_error(result, "data.tgt_lang: must differ from src_lang")


def test_stage_writes_outputs_and_metrics(tmp_path: Path) -> None:
    result = run_stage(tmp_path, stage_params(tmp_path))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["splits"]["train"]["rows_in"] == 300
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.stages.prepare", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--params" in result.stdout and "--out" in result.stdout


def test_module_documents_filters_and_errors() -> None:
    doc = prepare_module.__doc__ or ""
    for name in FILTERS:
        assert f"``{name}``" in doc, name
    assert "invalid UTF-8" in doc and "languages present" in doc


def test_validation_split_must_differ_from_train() -> None:
    with pytest.raises(ConfigError, match=r"data\.validation_split: must differ from train_split"):
        from_dict(DataParams, {"validation_split": "train"}, prefix="data")
    with pytest.raises(ConfigError, match=r"data\.test_splits: lists a split twice"):
        from_dict(DataParams, {"test_splits": ["a", "a"]}, prefix="data")
