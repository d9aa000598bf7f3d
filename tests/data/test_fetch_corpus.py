"""`nmt fetch-corpus`: a Hugging Face dataset written into the corpus folder, offline.

The Hub dataset is replaced by the same layout on disk: a folder laid out like the
bentrevett/multi30k repository (README.md, train/val/test.jsonl with "en" and "de" columns) that
``datasets.load_dataset`` reads exactly as it reads the Hub's copy, and the same data written
with ``DatasetDict.save_to_disk``. Neither needs the network or ../shared.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.core.errors import PipelineError
from pipelines.core.params import DataParams, PrepareParams
from pipelines.data.corpus import write_hub_corpus
from pipelines.data.preparation import prepare
from pipelines.data.prepared import read_pairs
from tests.pipeline_helpers import git, make_project_copy, run

from .conftest import REPO

ROWS = {
    "train": [
        {"en": "Two young men are outside.", "de": "Zwei junge Männer sind im Freien."},
        {"en": "A dog runs.", "de": "Ein Hund rennt."},
        {"en": "A girl in a pink dress.", "de": "Ein Mädchen in einem rosa Kleid."},
    ],
    "val": [{"en": "A cat sleeps.", "de": "Eine Katze schläft."}],
    "test": [
        {"en": "A man rides a bike.", "de": "Ein Mann fährt Fahrrad."},
        {"en": "Children play.", "de": "Kinder spielen."},
    ],
}
README = "---\ntask_categories:\n- translation\nlanguage:\n- en\n- de\n---\n# Multi30k\n"
RENAMES = {"test": "test_2016_flickr"}


def hub_repo(folder: Path, rows: dict[str, list] = ROWS) -> Path:
    """A dataset folder laid out like a Hub repository of JSON Lines files."""
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(README)
    for split, records in rows.items():
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        (folder / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    return folder


def offline_env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "hf"),
        PYTHONPATH=str(REPO),
    )


def fetch(tmp_path: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.cli", "fetch-corpus", *args]
    return subprocess.run(
        command, cwd=cwd, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120
    )


def records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def pairs(hub_split: str) -> tuple[list[str], list[str]]:
    """The (English, German) sentences of a split of ROWS, as prepare writes them."""
    return [row["en"] for row in ROWS[hub_split]], [row["de"] for row in ROWS[hub_split]]


def hub_data(dataset: Path, **overrides) -> DataParams:
    return DataParams(dataset=str(dataset), test_splits=["test_2016_flickr"], **overrides)


def test_a_hub_layout_becomes_the_corpus_folder_and_round_trips_through_prepare(tmp_path):
    out = tmp_path / "multi30k"
    done = fetch(tmp_path, str(hub_repo(tmp_path / "hub")), "--split", "test=test_2016_flickr",
                 "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: train (3 pairs), validation (1 pairs), test_2016_flickr (2" in done.stderr
    files = sorted(path.name for path in out.iterdir())
    assert files == ["test_2016_flickr.jsonl.gz", "train.jsonl.gz", "validation.jsonl.gz"]
    # The layout of ../shared/multi30k: {"translation": {"de": ..., "en": ...}}, rows in order.
    assert records(out / "train.jsonl.gz") == [{"translation": row} for row in ROWS["train"]]
    first = gzip.decompress((out / "train.jsonl.gz").read_bytes()).decode().splitlines()[0]
    assert first == '{"translation": {"de": "Zwei junge Männer sind im Freien.", ' + (
        '"en": "Two young men are outside."}}'
    )
    prepare(hub_data(out), PrepareParams(), tmp_path / "prepared", str(tmp_path / "hf"))
    for split, hub_split in (("validation", "val"), ("test_2016_flickr", "test")):
        assert read_pairs(tmp_path / "prepared", split) == pairs(hub_split)


def test_a_saved_dataset_dict_gives_the_same_bytes(tmp_path):
    import datasets

    cache = str(tmp_path / "hf")
    hub = hub_repo(tmp_path / "hub")
    from_hub = write_hub_corpus(hub_data(hub), RENAMES, tmp_path / "a", cache)
    datasets.load_dataset(str(hub), cache_dir=cache).save_to_disk(str(tmp_path / "saved"))
    from_disk = write_hub_corpus(hub_data(tmp_path / "saved"), RENAMES, tmp_path / "b", cache)
    assert from_hub == from_disk == {"train": 3, "validation": 1, "test_2016_flickr": 2}
    for name in ("train", "validation", "test_2016_flickr"):
        blob = (tmp_path / "a" / f"{name}.jsonl.gz").read_bytes()
        assert blob == (tmp_path / "b" / f"{name}.jsonl.gz").read_bytes(), name
    # No time stamp in the gzip header: the same data is the same DVC version.
    write_hub_corpus(hub_data(hub), RENAMES, tmp_path / "a", cache)
    assert (tmp_path / "a" / "train.jsonl.gz").read_bytes() == (
        tmp_path / "b" / "train.jsonl.gz"
    ).read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "dev=x"], "split rename dev=x: no split 'dev' in {hub} (available: train, "
         "validation, test)"),
        (["--split", "test"], "--split test: expected HUB=NAME, e.g. test=test_2016_flickr"),
        (["--split", "test=train"], "splits train and test would both be named 'train'"),
        (["--params", "{params_fr}"], "language pair fr-de not in {hub}: no fr text; languages "
         "present: de, en"),
        (["--config", "nope"], "could not load '{hub}' (config 'nope', revision None)"),
    ],
)  # fmt: skip
def test_bad_requests_are_one_line_errors_and_write_nothing(tmp_path, args, message):
    hub = hub_repo(tmp_path / "hub")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["src_lang"] = "fr"
    (tmp_path / "fr.yaml").write_text(yaml.safe_dump(params))
    args = [arg.format(params_fr=tmp_path / "fr.yaml") for arg in args]
    done = fetch(tmp_path, str(hub), *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"error: {message.format(hub=hub)}")
    assert not (tmp_path / "out").exists()


def test_a_missing_text_names_the_split_and_row(tmp_path):
    rows = {**ROWS, "train": [ROWS["train"][0], {"en": "A cat.", "de": None}]}
    hub = hub_repo(tmp_path / "hub", rows)
    with pytest.raises(PipelineError, match=r"\[train\] row 1: missing language key 'de'$"):
        write_hub_corpus(hub_data(hub), RENAMES, tmp_path / "out", str(tmp_path / "hf"))
    assert not (tmp_path / "out").exists()


def test_an_existing_corpus_folder_is_replaced_only_with_force(tmp_path):
    hub, out = hub_repo(tmp_path / "hub"), tmp_path / "multi30k"
    out.mkdir()
    (out / "old.jsonl.gz").write_bytes(b"old")
    done = fetch(tmp_path, str(hub), "--out", str(out))
    assert done.returncode == 2
    expected = f"error: {out} exists (the DVC-tracked corpus?): pass --force to replace it"
    assert done.stderr.splitlines()[-1] == expected
    assert (out / "old.jsonl.gz").read_bytes() == b"old"
    done = fetch(tmp_path, str(hub), "--out", str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl.gz", "train.jsonl.gz",
                                                     "validation.jsonl.gz"]  # fmt: skip


def test_the_documented_command_runs_prepare_without_shared(tmp_path):
    """The README's command in a project copy with no ../shared and no DVC remote data."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    repo = make_project_copy(tmp_path / "work", params)
    (tmp_path / "work" / "shared").unlink()
    assert not (repo / "data" / "multi30k").exists()
    pointer_before = (repo / "data" / "multi30k.dvc").read_text()
    hub = hub_repo(tmp_path / "hub")
    done = fetch(tmp_path, str(hub), "--split", "test=test_2016_flickr", cwd=repo)
    assert done.returncode == 0, done.stderr
    run(repo, "dvc", "exp", "run", "-S", "data.test_splits=[test_2016_flickr]", "prepare")
    assert read_pairs(repo / "data" / "prepared", "test_2016_flickr") == pairs("test")
    # DVC recorded the new corpus as the data version the runs are tagged with.
    pointer = yaml.safe_load((repo / "data" / "multi30k.dvc").read_text())["outs"][0]
    assert pointer["nfiles"] == 3 and pointer["md5"] not in pointer_before
    assert "data/multi30k.dvc" in git(repo, "status", "--short")
