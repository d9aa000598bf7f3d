"""The splits a training run read, as mlflow.data datasets: name, digest, schema and source.

A real prepare of a DVC-tracked corpus (`dvc add`) and of a Hugging Face dataset, logged into a
real SQLite store and read back through MLflow's client and ``mlflow.data.get_source``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.core.params import DataParams, PrepareParams
from pipelines.data.preparation import prepare
from pipelines.tracking.dataset_inputs import DvcDatasetSource, log_dataset_inputs

PAIRS = [
    {"en": "Two young men are outside.", "de": "Zwei junge Männer sind im Freien."},
    {"en": "A dog runs.", "de": "Ein Hund rennt."},
    {"en": "A girl in a pink dress.", "de": "Ein Mädchen in einem rosa Kleid."},
]
ROLES = {"train": "train", "validation": "validation"}


def write_split(path: Path, rows: list[dict], translation: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = ({"translation": row} if translation else row for row in rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@pytest.fixture
def client(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("inputs", artifact_location=(tmp_path / "artifacts").as_uri())
    return client


def logged_inputs(client, prepared: Path) -> dict:
    """Log `prepared` into a new run; its dataset inputs by name, as MLflow gives them back."""
    experiment = client.get_experiment_by_name("inputs").experiment_id
    run_id = client.create_run(experiment).info.run_id
    log_dataset_inputs(client, run_id, prepared)
    return {d.dataset.name: d for d in client.get_run(run_id).inputs.dataset_inputs}


def check_dataset(dataset_input, prepared: Path, split: str, role: str) -> None:
    """Digest, schema, row count and role of one logged split."""
    dataset = dataset_input.dataset
    blob = (prepared / f"{split}.jsonl").read_bytes()
    assert dataset.digest == hashlib.sha256(blob).hexdigest()[:16]
    columns = json.loads(dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in columns] == [("src", "string"), ("tgt", "string")]
    assert json.loads(dataset.profile)["num_rows"] == blob.count(b"\n")
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": role}


def test_a_dvc_tracked_corpus_is_logged_with_its_file_and_data_version(
    tmp_path, monkeypatch, client
):
    import mlflow.data

    project = tmp_path / "project"
    for split in ("train", "validation", "test_2016_flickr"):
        write_split(project / "data" / "multi30k" / f"{split}.jsonl", PAIRS, translation=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    for command in (["init", "--no-scm", "-q"], ["add", "-q", "data/multi30k"]):
        subprocess.run([sys.executable, "-m", "dvc", *command], cwd=project, check=True)
    md5 = yaml.safe_load((project / "data" / "multi30k.dvc").read_text())["outs"][0]["md5"]
    monkeypatch.chdir(project)
    data = DataParams(dataset="data/multi30k", test_splits=["test_2016_flickr"])
    prepare(data, PrepareParams(), Path("data/prepared"), str(tmp_path / "hf"))

    inputs = logged_inputs(client, Path("data/prepared"))
    assert set(inputs) == {"train", "validation", "test_2016_flickr"}
    for split, dataset_input in inputs.items():
        check_dataset(dataset_input, Path("data/prepared"), split, ROLES.get(split, "test"))
        assert dataset_input.dataset.source_type == "dvc"
        path = f"data/multi30k/{split}.jsonl"
        assert json.loads(dataset_input.dataset.source) == {"path": path, "md5": md5}
        source = mlflow.data.get_source(dataset_input)
        assert isinstance(source, DvcDatasetSource)
        assert (source.path, source.md5, source.load()) == (path, md5, path)
    assert md5.endswith(".dir")


def test_a_hub_dataset_is_logged_with_its_id_split_and_revision(tmp_path, monkeypatch, client):
    """The Hub id is served offline from a folder laid out like its repository."""
    import datasets
    import mlflow.data
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    repo = tmp_path / "hub"
    for split in ("train", "validation", "test"):
        write_split(repo / f"{split}.jsonl", PAIRS, translation=False)
    load_dataset = datasets.load_dataset
    asked = []

    def from_folder(path, name=None, **kwargs):
        asked.append((path, name, kwargs["revision"]))
        return load_dataset(str(repo), cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(datasets, "load_dataset", from_folder)
    monkeypatch.chdir(tmp_path)
    data = DataParams(dataset="someone/multi30k", revision="0123abc", test_splits=["test"])
    prepare(data, PrepareParams(), tmp_path / "prepared")
    assert asked == [("someone/multi30k", None, "0123abc")]

    inputs = logged_inputs(client, tmp_path / "prepared")
    assert set(inputs) == {"train", "validation", "test"}
    for split, dataset_input in inputs.items():
        check_dataset(dataset_input, tmp_path / "prepared", split, ROLES.get(split, "test"))
        assert dataset_input.dataset.source_type == "hugging_face"
        source = mlflow.data.get_source(dataset_input)
        assert isinstance(source, HuggingFaceDatasetSource)
        assert (source.path, source.split, source.revision) == (
            "someone/multi30k",
            split,
            "0123abc",
        )
