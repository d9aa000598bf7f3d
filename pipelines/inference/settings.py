"""The decoding settings a model was evaluated with, recorded beside it, and the decoding device.

An exported folder that has been evaluated and shipped (the pyfunc model's ``model_dir``) holds
``decoding.json``: the :class:`~pipelines.core.params.DecodingSettings` its test scores were
obtained with. :meth:`Translator.load <pipelines.inference.translator.Translator.load>` reads it,
so `nmt translate` and the pyfunc model decode like the evaluation did unless told otherwise.
The evaluate stage's ``metrics/<run>.json`` holds the test splits' scores and, when the length
penalty was chosen on validation, how (:data:`SELECTION_KEY`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.config import ConfigError, from_dict
from pipelines.core.atomic import atomic_write_json
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings

DECODING_FILE = "decoding.json"
AUTO_DEVICE = "auto"
SELECTION_KEY = "decoding_selection"  # in metrics/<run>.json, beside the test splits' scores


def metrics_record(
    scores: dict[str, dict[str, Any]], selection: dict[str, Any] | None
) -> dict[str, Any]:
    """``metrics/<run>.json``: the test splits' `scores`, and the length penalty's `selection`
    on validation when there was one."""
    return {**scores, SELECTION_KEY: selection} if selection else scores


def split_scores(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The test splits' scores of a ``metrics/<run>.json`` record."""
    return {split: values for split, values in record.items() if split != SELECTION_KEY}


def read_settings(path: str | Path) -> DecodingSettings | None:
    """The settings in `path` (a ``decoding.json`` or a folder holding one); None without one."""
    path = Path(path)
    if path.is_dir():
        path = path / DECODING_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not valid JSON ({err})") from err
    except OSError as err:
        raise PipelineError(f"{path}: cannot be read ({err})") from err
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: expected a mapping of decoding settings")
    try:
        return from_dict(DecodingSettings, values)
    except ConfigError as err:
        raise PipelineError(f"{path}: {err}") from err


def write_settings(path: str | Path, settings: DecodingSettings) -> None:
    """Write the decoding settings only (an EvaluateParams' other keys stay out), atomically."""
    path = Path(path)
    if path.is_dir():
        path = path / DECODING_FILE
    atomic_write_json(path, settings.to_dict())


def resolve_device(device: str) -> str:
    """``auto`` is cuda when a CUDA device is visible, else cpu; any other device is kept."""
    if device != AUTO_DEVICE:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
