"""Fixtures of the data-pipeline tests: a 300-pair slice of Multi30k, prepared and tokenized."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from pipelines.core.params import DataParams, PrepareParams, TokenizerParams
from pipelines.data.preparation import prepare
from pipelines.data.subwords import tokenize
from tests.pipeline_helpers import tiny_corpus

REPO = Path(__file__).resolve().parents[2]
TINY_CORPUS = tiny_corpus()
TEST_SPLITS = ["test_2016_flickr", "test_2017_flickr"]
TINY_VOCAB = 500


def tiny_data(**overrides) -> DataParams:
    values = {"dataset": str(TINY_CORPUS), "test_splits": list(TEST_SPLITS)}
    values.update(overrides)
    return DataParams(**values)


def write_jsonl(path: Path, records: list, *, compress: bool = False) -> Path:
    """Write records (dicts, or raw bytes/str lines written as they are) as JSON Lines."""
    lines = []
    for record in records:
        if isinstance(record, bytes):
            lines.append(record)
        elif isinstance(record, str):
            lines.append(record.encode("utf-8"))
        else:
            lines.append(json.dumps(record, ensure_ascii=False).encode("utf-8"))
    blob = b"".join(line + b"\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob, mtime=0))
    else:
        path.write_bytes(blob)
    return path


def pair(en: str, de: str) -> dict:
    return {"translation": {"en": en, "de": de}}


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory, hf_cache: str) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(tiny_data(), PrepareParams(), out, cache_dir=hf_cache)
    return out


@pytest.fixture(scope="session")
def tokenized_tiny(tmp_path_factory: pytest.TempPathFactory, prepared_tiny: Path) -> Path:
    out = tmp_path_factory.mktemp("tokenized") / "tokenized"
    tokenize(prepared_tiny, TokenizerParams(vocab_size=TINY_VOCAB), out)
    return out


def stage_params(tmp_path: Path, data: dict | None = None, tokenizer: dict | None = None) -> Path:
    """The repository's params.yaml with `data` pointed at the tiny corpus, plus overrides."""
    base = REPO / "params.yaml"
    if not base.is_file():
        pytest.skip("params.yaml not present")
    params = yaml.safe_load(base.read_text(encoding="utf-8"))
    params["data"].update(
        {"dataset": str(TINY_CORPUS), "test_splits": list(TEST_SPLITS), "max_train_pairs": 0}
    )
    params["data"].update(data or {})
    params["tokenizer"].update(tokenizer or {})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path
