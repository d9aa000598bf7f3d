"""The prepared corpus (``data/prepared``): ``<split>.jsonl`` files of ``{"src", "tgt"}`` lines and
``manifest.json``; the one reader and writer of that layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.core.errors import PipelineError


def jsonl_bytes(pairs: list[tuple[str, str]]) -> bytes:
    lines = (json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in pairs)
    return "".join(lines).encode("utf-8")


def read_manifest(prepared: str | Path) -> dict[str, Any]:
    """The manifest written by :func:`prepare`."""
    path = Path(prepared) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PipelineError(f"{path} not found: run the prepare stage first") from err


def read_pairs(prepared: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Source and target sentences of one prepared split."""
    path = Path(prepared) / f"{split}.jsonl"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the prepare stage first")
    src, tgt = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            src.append(record["src"])
            tgt.append(record["tgt"])
    return src, tgt


def read_sources(prepared: str | Path, split: str) -> list[str]:
    """The source sentences of one prepared split."""
    return read_pairs(prepared, split)[0]


def read_references(prepared: str | Path, split: str) -> list[str]:
    """The target sentences (references) of one prepared split."""
    return read_pairs(prepared, split)[1]
