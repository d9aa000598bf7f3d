"""DVC stage `prepare`: load a parallel corpus, validate, normalize and filter it into JSON Lines.

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

import argparse
import gzip
import hashlib
import json
import logging
import re
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_path, atomic_write_json
from pipelines.core.errors import PipelineError, run_main, setup_logging
from pipelines.core.params import DEFAULT_PARAMS, DataParams, PrepareParams, load_params

logger = logging.getLogger("pipelines.stages.prepare")  # not __main__ under `python -m`

DEFAULT_OUT = Path("data/prepared")
DEFAULT_METRICS = Path("metrics/prepare.json")
FILTERS = ("empty", "too_long", "length_ratio", "duplicate", "max_train_pairs")
SPLIT_SUFFIXES = (".jsonl.gz", ".jsonl")

# Zero-width characters that are invisible formatting noise in these corpora; other format
# characters (ZWJ/ZWNJ) carry meaning in some scripts and are kept.
_INVISIBLE = {"\ufeff", "\u200b", "\u2060"}
_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"}


# ----------------------------------------------------------------------------- normalization


def strip_control(text: str) -> str:
    """Remove control characters; whitespace controls (tab, newline, ...) become spaces."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in _WHITESPACE_CONTROLS:
            out.append(" ")
        elif unicodedata.category(char) == "Cc" or char in _INVISIBLE:
            continue
        else:
            out.append(char)
    return "".join(out)


_SPACES = re.compile(r"\s+")


def normalize_text(text: str, unicode_form: str) -> tuple[str, bool]:
    """Normalize one sentence; also say whether control characters were removed."""
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    stripped = strip_control(text)
    had_control = stripped != text and any(
        c not in _WHITESPACE_CONTROLS and (unicodedata.category(c) == "Cc" or c in _INVISIBLE)
        for c in text
    )
    return _SPACES.sub(" ", stripped).strip(), had_control


# ----------------------------------------------------------------------------- sources


@dataclass
class SplitRows:
    """One split's raw text, with where each row came from (for error messages)."""

    name: str
    src: list[str]
    tgt: list[str]
    origin: str  # file path or "<hub id>[<split>]"
    line_offset: int = 1  # row i is line i + line_offset of a file (row i + 0 of a Hub split)
    is_file: bool = True

    def where(self, index: int) -> str:
        if self.is_file:
            return f"{self.origin}:{index + self.line_offset}"
        return f"{self.origin} row {index}"


def is_local(dataset: str) -> bool:
    """A dataset given as an existing path, or written like one, is a local folder."""
    if Path(dataset).exists():
        return True
    # Hub ids are "name" or "owner/name"; anything else written like a path is a missing folder.
    return dataset.startswith((".", "/", "~", "data/")) or dataset.count("/") > 1


def split_file(folder: Path, split: str) -> Path | None:
    for suffix in SPLIT_SUFFIXES:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _raw_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            yield from handle
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise PipelineError(f"{path}: not a valid gzip file ({err})") from err


@dataclass
class _FileScan:
    rows: int = 0
    languages: set[str] = field(default_factory=set)
    first_error: str | None = None


def _scan_file(path: Path, src_lang: str, tgt_lang: str) -> _FileScan:
    """Check every line of one JSON Lines split; remember the first problem and the languages."""
    scan = _FileScan()
    for number, raw in enumerate(_raw_lines(path), start=1):
        where = f"{path}:{number}"
        problem = None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problem = f"{where}: invalid UTF-8 (byte {err.start})"
        else:
            if not line.strip():
                problem = f"{where}: blank line (JSON Lines needs one object per line)"
            else:
                problem = _check_record(line, where, src_lang, tgt_lang, scan.languages)
                scan.rows += 1
        if problem and scan.first_error is None:
            scan.first_error = problem
    return scan


def _check_record(
    line: str, where: str, src_lang: str, tgt_lang: str, languages: set[str]
) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return f"{where}: invalid JSON ({err.msg} at column {err.colno})"
    if not isinstance(record, dict):
        return f"{where}: expected a JSON object, got {type(record).__name__}"
    translation = record.get("translation")
    if translation is None:
        return f"{where}: missing key 'translation' (expected {{\"translation\": {{lang: text}}}})"
    if not isinstance(translation, dict):
        return f"{where}: 'translation' must be an object mapping language to text"
    languages.update(translation)
    for lang in (src_lang, tgt_lang):
        if lang not in translation:
            present = ", ".join(sorted(translation)) or "none"
            return f"{where}: missing language key '{lang}' in 'translation' (has: {present})"
        if not isinstance(translation[lang], str):
            return f"{where}: 'translation.{lang}' must be a string, got {translation[lang]!r}"
    return None


def _language_error(present: set[str], src_lang: str, tgt_lang: str, origin: str) -> str | None:
    missing = [lang for lang in (src_lang, tgt_lang) if lang not in present]
    if not missing or not present:
        return None
    return (
        f"language pair {src_lang}-{tgt_lang} not in {origin}: no {', '.join(missing)} text; "
        f"languages present: {', '.join(sorted(present))} (set data.src_lang / data.tgt_lang)"
    )


def needed_splits(data: DataParams) -> list[str]:
    return [data.train_split, data.validation_split, *data.test_splits]


def validate_local(folder: Path, data: DataParams) -> dict[str, Path]:
    """Check every needed split file line by line; return split -> file. Raises PipelineError."""
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"dataset {folder} is not a folder of <split>.jsonl[.gz] files")
    if not folder.is_dir():
        hint = ""
        if Path(f"{folder}.dvc").is_file():
            hint = f" (tracked by DVC: run `dvc pull {folder}.dvc`)"
        raise PipelineError(f"dataset folder {folder} not found{hint}")
    files = {split: split_file(folder, split) for split in needed_splits(data)}
    missing = [split for split, path in files.items() if path is None]
    if missing:
        found = sorted(p.name for p in folder.iterdir() if p.name.endswith(SPLIT_SUFFIXES))
        raise PipelineError(
            f"split(s) {', '.join(missing)} not found in {folder} (expected <split>.jsonl.gz or "
            f"<split>.jsonl; found: {', '.join(found) or 'none'})"
        )
    paths: dict[str, Path] = {split: path for split, path in files.items() if path is not None}
    scans = {split: _scan_file(path, data.src_lang, data.tgt_lang) for split, path in paths.items()}
    present = set().union(*(scan.languages for scan in scans.values()))
    problem = _language_error(present, data.src_lang, data.tgt_lang, str(folder))
    if problem:
        raise PipelineError(problem)
    for scan in scans.values():
        if scan.first_error:
            raise PipelineError(scan.first_error)
    for split, scan in scans.items():
        if scan.rows == 0:
            raise PipelineError(f"split '{split}' ({paths[split]}) is empty")
    return paths


def load_local(folder: Path, data: DataParams, cache_dir: str | None = None) -> list[SplitRows]:
    """Validate, then load the local JSON Lines splits through ``datasets``."""
    import datasets

    paths = validate_local(folder, data)
    try:
        loaded = datasets.load_dataset(
            "json",
            data_files={split: str(path) for split, path in paths.items()},
            cache_dir=cache_dir,
        )
    except Exception as err:  # e.g. an extra field whose type changes from line to line
        raise PipelineError(
            f"{folder}: the JSON Lines files passed validation but `datasets` could not load "
            f"them: {type(err).__name__}: {err}"
        ) from err
    return [
        _split_rows(loaded[split], split, str(paths[split]), data, is_file=True) for split in paths
    ]


def load_hub(data: DataParams, cache_dir: str | None = None) -> list[SplitRows]:
    """Load a Hub dataset: ``load_dataset(dataset, config, revision=...)``."""
    import datasets

    try:
        loaded = datasets.load_dataset(
            data.dataset, data.config, revision=data.revision, cache_dir=cache_dir
        )
    except Exception as err:  # network, auth, unknown id or config: all the user's to fix
        raise PipelineError(
            f"could not load {data.dataset!r} (config {data.config!r}, revision "
            f"{data.revision!r}) from the Hugging Face Hub: {type(err).__name__}: {err}"
        ) from err
    available = list(loaded)
    missing = [split for split in needed_splits(data) if split not in available]
    if missing:
        raise PipelineError(
            f"split(s) {', '.join(missing)} not in {data.dataset} (available: "
            f"{', '.join(available)})"
        )
    origin = data.dataset if data.config is None else f"{data.dataset}/{data.config}"
    present = set().union(*(_hub_languages(loaded[split]) for split in needed_splits(data)))
    problem = _language_error(present, data.src_lang, data.tgt_lang, origin)
    if problem:
        raise PipelineError(problem)
    rows = []
    for split in needed_splits(data):
        rows.append(_split_rows(loaded[split], split, f"{origin}[{split}]", data, is_file=False))
    return rows


def _hub_languages(dataset: Any) -> set[str]:
    """Languages of a split: keys of its ``translation`` feature, or its column names."""
    features = dataset.features
    if "translation" in features:
        feature = features["translation"]
        languages = getattr(feature, "languages", None)
        if languages is not None:
            return set(languages)
        if isinstance(feature, dict):
            return set(feature)
        return set()
    return set(dataset.column_names)


def _split_rows(
    dataset: Any, split: str, origin: str, data: DataParams, is_file: bool
) -> SplitRows:
    rows = SplitRows(name=split, src=[], tgt=[], origin=origin, is_file=is_file)
    if len(dataset) == 0:
        raise PipelineError(f"split '{split}' ({origin}) is empty")
    if "translation" in dataset.column_names:
        pairs = dataset["translation"]
        columns = {lang: [p.get(lang) if p else None for p in pairs] for lang in _langs(data)}
    else:
        columns = {lang: dataset[lang] for lang in _langs(data)}
    for lang in _langs(data):
        for index, text in enumerate(columns[lang]):
            if not isinstance(text, str):
                raise PipelineError(f"{rows.where(index)}: missing language key '{lang}'")
    rows.src, rows.tgt = columns[data.src_lang], columns[data.tgt_lang]
    return rows


def _langs(data: DataParams) -> tuple[str, str]:
    return data.src_lang, data.tgt_lang


def load_corpus(data: DataParams, cache_dir: str | None = None) -> list[SplitRows]:
    """All needed splits, in order train, validation, tests; raises PipelineError on bad data."""
    if is_local(data.dataset):
        return load_local(Path(data.dataset).expanduser(), data, cache_dir)
    return load_hub(data, cache_dir)


# ----------------------------------------------------------------------------- processing


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


def jsonl_bytes(pairs: list[tuple[str, str]]) -> bytes:
    lines = (json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in pairs)
    return "".join(lines).encode("utf-8")


def prepare(
    data: DataParams,
    prep: PrepareParams,
    out_dir: str | Path = DEFAULT_OUT,
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


# ----------------------------------------------------------------------------- stage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.prepare",
        description=(
            "Load the parallel corpus named by data.dataset (local folder of <split>.jsonl[.gz] "
            "or a Hugging Face Hub id), validate it, normalize every split, filter the training "
            "split, and write <out>/<split>.jsonl, <out>/manifest.json and the metrics file."
        ),
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS, help="metrics JSON file")
    return parser


@run_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    stats = prepare(params.data, params.prepare, args.out)
    atomic_write_json(args.metrics, stats)
    logger.info("wrote %s and %s", args.out, args.metrics)


if __name__ == "__main__":
    main()
