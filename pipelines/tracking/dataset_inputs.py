"""The splits a training run reads, as MLflow datasets (``mlflow.data``) on the run.

Each prepared split is a pandas dataset (schema ``src``/``tgt``, row count, the SHA-256 of its
prepared file as digest) whose source is where the prepare stage read it: a file of the local
corpus at its DVC data version (:class:`DvcDatasetSource`), or a Hugging Face Hub split at its
revision (MLflow's ``HuggingFaceDatasetSource``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source

from pipelines.data.prepared import read_manifest, read_pairs
from pipelines.tracking import runs

DIGEST_CHARS = 16  # MLflow's digest column is short; 16 hex characters of the SHA-256


class DvcDatasetSource(DatasetSource):
    """A file of a DVC-tracked folder at one data version: the folder's md5 in its ``.dvc`` file
    ("" when the folder is not tracked). ``dvc checkout`` at the run's git commit restores it."""

    def __init__(self, path: str, md5: str) -> None:
        self.path = path
        self.md5 = md5

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        """The file's path, relative to the repository root."""
        return self.path

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built explicitly, never guessed from a bare path

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("a DvcDatasetSource is built from a path and a data version")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "md5": self.md5}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict["path"], source_dict["md5"])


# Readers of a run's inputs get the source back with mlflow.data.get_source(dataset_input).
register_dataset_source(DvcDatasetSource)


def split_source(source: dict[str, Any], split: str) -> DatasetSource:
    """Where the prepare stage read `split`, from its manifest's ``source`` entry."""
    if source["kind"] == "hub":
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        return HuggingFaceDatasetSource(
            path=source["dataset"],
            config_name=source["config"],
            split=split,
            revision=source["revision"],
        )
    return DvcDatasetSource(source["files"][split], runs.data_hash(source["dataset"]))


def log_dataset_inputs(client, run_id: str, prepared: Path) -> None:
    """Log every prepared split as a dataset input of `run_id`, tagged with its role."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    manifest = read_manifest(prepared)
    roles = {manifest["train"]: "train", manifest["validation"]: "validation"}
    roles.update(dict.fromkeys(manifest["test"], "test"))
    inputs = []
    for split, info in manifest["splits"].items():
        src, tgt = read_pairs(prepared, split)
        dataset = mlflow.data.from_pandas(
            pd.DataFrame({"src": src, "tgt": tgt}),
            source=split_source(manifest["source"], split),
            targets="tgt",
            name=split,
            digest=info["sha256"][:DIGEST_CHARS],
        )
        context = InputTag(MLFLOW_DATASET_CONTEXT, roles.get(split, "other"))
        # The client API takes entities; mlflow.log_input would need the run to be active here.
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[context]))
    client.log_inputs(run_id, datasets=inputs)
