"""Shared fixtures: the tiny end-to-end pipeline run once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_helpers import SHARED, make_project_copy, run, tiny_params

# Test modules that read the Multi30k slice cut from ../shared (tests.pipeline_helpers.tiny_corpus).
NEEDS_CORPUS = {
    "test_averaging.py",
    "test_batching.py",
    "test_ddp.py",
    "test_prepare.py",
    "test_reliability.py",
    "test_tokenizer.py",
}


def pytest_collection_modifyitems(config, items) -> None:
    if (SHARED / "multi30k").exists():
        return
    skip = pytest.mark.skip(reason="../shared/multi30k is not beside the checkout")
    for item in items:
        if item.path.name in NEEDS_CORPUS:
            item.add_marker(skip)


@dataclass
class PipelineRun:
    repo: Path
    params: dict[str, Any]
    output: str


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> PipelineRun:
    """A project copy on the tiny profile after one real `dvc repro --pull`."""
    params = tiny_params()
    repo = make_project_copy(tmp_path_factory.mktemp("e2e"), params)
    done = run(repo, "dvc", "repro", "--pull")
    return PipelineRun(repo=repo, params=params, output=done.stdout + done.stderr)
