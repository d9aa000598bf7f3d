"""Prepare a parallel corpus: load, validate, normalize and filter it into JSON Lines.

The corpus comes through Hugging Face ``datasets``, either from a local folder of
``<split>.jsonl[.gz]`` files in the ``translation`` layout (``{"translation": {"de": ..., "en":
...}}``) or from a Hub id (``load_dataset(dataset, config, revision=...)``; a Hub dataset may also
use one column per language).

Every split is normalized the same way: Unicode normalization (``prepare.unicode_form``), control
characters removed (tabs and newlines become spaces), runs of whitespace collapsed to one space and
the ends stripped.

Bad data is either *filtered* (dropped and counted; training split only) or an *error* (the stage
stops with ``error: <file>:<line>: ...`` and exit status 2, before writing anything).

Filters, applied to the training split in this order, each row counted under the first that applies:

- ``empty``: the source or target is empty after normalization (also a sentence of only control
  characters);
- ``too_long``: more than ``prepare.max_tokens`` whitespace tokens on either side;
- ``length_ratio``: longer side / shorter side (whitespace tokens) above
  ``prepare.max_length_ratio``;
- ``duplicate``: the same (source, target) pair already kept (with ``prepare.drop_duplicates``);
- ``max_train_pairs``: beyond the first ``data.max_train_pairs`` kept pairs (0 keeps all).

``data.max_eval_pairs`` (0 = all, the default) keeps only the first N rows of the validation and
test splits; it exists for smoke tests and must stay 0 for any reported score.

Validation and test splits are kept whole, since test sets are for reporting: their rows are only
normalized, never dropped.

Errors (checked for every needed split, all files before any is loaded):

- a needed split has no file (``<split>.jsonl.gz`` or ``<split>.jsonl``) in the folder, or is not in
  the Hub dataset: names the split and the folder or the available splits;
- the language pair is not in the data at all (e.g. ``src_lang: fr``): one error naming the
  languages present, reported before any line-level error;
- a line that is not valid UTF-8 (``<file>:<line>: invalid UTF-8``), not valid JSON, not an object
  with a ``translation`` mapping, or whose ``translation`` lacks the source or target key (or has a
  non-string value): names file, line and key;
- a blank line inside a JSON Lines file, a file that is not valid gzip;
- a split with no rows, or a training split that the filters empty;
- an empty sentence (after normalization) in a validation or test split, which could not be scored.

Outputs: ``<out>/<split>.jsonl`` (``{"src": ..., "tgt": ...}`` per line, original order) for the
training, validation and every test split; ``<out>/manifest.json`` (role -> split name under
``train``, ``validation``, ``test``; per split ``rows``, ``sha256``, ``file``; the ``source``);
and the metrics file (default ``metrics/prepare.json``) with these stable keys::

    {"src_lang": str, "tgt_lang": str,
     "splits": {<split>: {"role": "train" | "validation" | "test",
                          "rows_in": int, "rows_out": int,
                          "normalized": int,      # rows whose text normalization changed
                          "control_chars": int,   # rows that had control characters removed
                          "filtered": {"empty": int, "too_long": int, "length_ratio": int,
                                       "duplicate": int, "max_train_pairs": int}}},
     "filtered": {<same filter keys>: int}}     # totals over the training split

The filter counts are always present (zero outside the training split).
"""


from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import PipelineError
from pipelines.core.params import DataParams, PrepareParams
from pipelines.data.corpus import SplitRows, is_local, load_corpus
from pipelines.data.normalize import normalize_text
from pipelines.data.prepared import jsonl_bytes

logger = logging.getLogger("nmt.prepare")

FILTERS = ("empty", "too_long", "length_ratio", "duplicate", "max_train_pairs")


def _token_count(text: str) -> int:
    return len(text.split(" ")) if text else 0


def process_split(
    rows: SplitRows, role: str, prep: PrepareParams, max_pairs: int = 0
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Normalize one split, and filter it when it is the training split; return pairs and stats."""
    stats: dict[str, Any] = {
        "role": role,
        "rows_in": len(rows.src),
        "rows_out": 0,
        "normalized": 0,
        "control_chars": 0,
        "filtered": dict.fromkeys(FILTERS, 0),
    }
    filtered = stats["filtered"]
    kept: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for index, (raw_src, raw_tgt) in enumerate(zip(rows.src, rows.tgt, strict=True)):
        src, src_control = normalize_text(raw_src, prep.unicode_form)
        tgt, tgt_control = normalize_text(raw_tgt, prep.unicode_form)
        stats["normalized"] += int(src != raw_src or tgt != raw_tgt)
        stats["control_chars"] += int(src_control or tgt_control)
        if role != "train":
            for text, lang in ((src, "source"), (tgt, "target")):
                if not text:
                    raise PipelineError(
                        f"{rows.where(index)}: empty {lang} sentence in the {role} split "
                        f"'{rows.name}' (after normalization); {role} sets are kept whole and "
                        "every sentence must be scorable, so fix or remove this line"
                    )
            kept.append((src, tgt))
            continue
        reason = _filter_reason(src, tgt, prep, seen)
        if reason is None and max_pairs and len(kept) >= max_pairs:
            reason = "max_train_pairs"
        if reason:
            filtered[reason] += 1
            continue
        seen.add((src, tgt))
        kept.append((src, tgt))
    stats["rows_out"] = len(kept)
    return kept, stats


def _filter_reason(
    src: str, tgt: str, prep: PrepareParams, seen: set[tuple[str, str]]
) -> str | None:
    if not src or not tgt:
        return "empty"
    src_len, tgt_len = _token_count(src), _token_count(tgt)
    if max(src_len, tgt_len) > prep.max_tokens:
        return "too_long"
    if max(src_len, tgt_len) / min(src_len, tgt_len) > prep.max_length_ratio:
        return "length_ratio"
    if prep.drop_duplicates and (src, tgt) in seen:
        return "duplicate"
    return None


def prepare(
    data: DataParams,
    prep: PrepareParams,
    out_dir: str | Path,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Load, validate, normalize and filter the corpus into `out_dir`; return the stage metrics.

    `out_dir` is replaced as a whole, atomically, only once every split has passed.
    """
    corpus = load_corpus(data, cache_dir)
    roles = {data.train_split: "train", data.validation_split: "validation"}
    roles.update(dict.fromkeys(data.test_splits, "test"))

    outputs: dict[str, bytes] = {}
    split_stats: dict[str, Any] = {}
    for rows in corpus:
        role = roles[rows.name]
        max_pairs = data.max_train_pairs if role == "train" else 0
        pairs, stats = process_split(rows, role, prep, max_pairs)
        if role != "train" and data.max_eval_pairs:  # smoke tests only; never for reported scores
            pairs = pairs[: data.max_eval_pairs]
            stats["rows_out"] = len(pairs)
        if not pairs:
            raise PipelineError(
                f"split '{rows.name}' ({rows.origin}) has no rows left after filtering: "
                f"{stats['filtered']} (relax prepare.max_tokens / prepare.max_length_ratio)"
            )
        outputs[rows.name] = jsonl_bytes(pairs)
        split_stats[rows.name] = stats
        dropped = sum(stats["filtered"].values())
        logger.info(
            "%s: %d rows in, %d out (%d normalized, %d filtered)",
            rows.name,
            stats["rows_in"],
            stats["rows_out"],
            stats["normalized"],
            dropped,
        )

    manifest = {
        "train": data.train_split,
        "validation": data.validation_split,
        "test": list(data.test_splits),
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "source": {
            "dataset": data.dataset,
            "kind": "local" if is_local(data.dataset) else "hub",
            "config": data.config,
            "revision": data.revision,
            "files": {r.name: r.origin for r in corpus} if is_local(data.dataset) else None,
        },
        "splits": {
            name: {
                "file": f"{name}.jsonl",
                "rows": split_stats[name]["rows_out"],
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
            for name, blob in outputs.items()
        },
    }
    with atomic_path(out_dir, directory=True) as tmp:
        for name, blob in outputs.items():
            (tmp / f"{name}.jsonl").write_bytes(blob)
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )

    train_filtered = split_stats[data.train_split]["filtered"]
    return {
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "splits": split_stats,
        "filtered": dict(train_filtered),
    }
