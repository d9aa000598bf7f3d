"""Shared fixtures: the tiny end-to-end pipeline run once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_helpers import make_project_copy, run, tiny_params


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
