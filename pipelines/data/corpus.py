"""Load a parallel corpus through Hugging Face ``datasets`` and validate it, file by file and line
by line: a local folder of ``<split>.jsonl[.gz]`` in the ``translation`` layout, or a Hub id.
:func:`write_hub_corpus` writes a Hub dataset into that local layout.

Errors name the file and line (or the Hub split and row); see ``pipelines.data.preparation``."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import PipelineError
from pipelines.core.params import DataParams

SPLIT_SUFFIXES = (".jsonl.gz", ".jsonl")
SAVED_DATASET_DICT = "dataset_dict.json"  # what DatasetDict.save_to_disk writes


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


def open_hub(data: DataParams, cache_dir: str | None = None) -> Any:
    """The ``DatasetDict`` of `data.dataset`: a Hub id or a local folder laid out like a Hub
    repository (``load_dataset(dataset, config, revision=...)``), or a folder written by
    ``DatasetDict.save_to_disk`` (``load_from_disk``)."""
    import datasets

    saved = Path(data.dataset).expanduser()
    try:
        if (saved / SAVED_DATASET_DICT).is_file():
            return datasets.load_from_disk(str(saved))
        return datasets.load_dataset(
            data.dataset, data.config, revision=data.revision, cache_dir=cache_dir
        )
    except Exception as err:  # network, auth, unknown id or config: all the user's to fix
        raise PipelineError(
            f"could not load {data.dataset!r} (config {data.config!r}, revision "
            f"{data.revision!r}): {type(err).__name__}: {err}"
        ) from err


def load_hub(data: DataParams, cache_dir: str | None = None) -> list[SplitRows]:
    """Load a Hub dataset (:func:`open_hub`): the needed splits, checked row by row."""
    loaded = open_hub(data, cache_dir)
    available = list(loaded)
    missing = [split for split in needed_splits(data) if split not in available]
    if missing:
        raise PipelineError(
            f"split(s) {', '.join(missing)} not in {data.dataset} (available: "
            f"{', '.join(available)})"
        )
    return _hub_rows(loaded, needed_splits(data), data)


def _hub_rows(loaded: Any, splits: list[str], data: DataParams) -> list[SplitRows]:
    """The rows of `splits` of a loaded Hub dataset, once the language pair is known present."""
    origin = data.dataset if data.config is None else f"{data.dataset}/{data.config}"
    present = set().union(*(_hub_languages(loaded[split]) for split in splits))
    problem = _language_error(present, data.src_lang, data.tgt_lang, origin)
    if problem:
        raise PipelineError(problem)
    return [
        _split_rows(loaded[split], split, f"{origin}[{split}]", data, is_file=False)
        for split in splits
    ]


def write_hub_corpus(
    data: DataParams, renames: dict[str, str], out: Path, cache_dir: str | None = None
) -> dict[str, int]:
    """Write every split of the Hub dataset `data.dataset` into `out` in the local layout.

    Split `s` becomes ``<renames.get(s, s)>.jsonl.gz`` (``{"translation": {src, tgt}}`` per row,
    in order; gzip without a time stamp, so the same data gives the same bytes and DVC hash).
    `out` is replaced as a whole once every row has passed; returns rows per written split.
    """
    loaded = open_hub(data, cache_dir)
    for split, name in renames.items():
        if split not in loaded:
            raise PipelineError(
                f"split rename {split}={name}: no split {split!r} in {data.dataset} "
                f"(available: {', '.join(loaded)})"
            )
    names = {split: renames.get(split, split) for split in loaded}
    for name in set(names.values()):
        clash = [split for split, given in names.items() if given == name]
        if len(clash) > 1:
            raise PipelineError(f"splits {' and '.join(clash)} would both be named {name!r}")
    written = {}
    with atomic_path(out, directory=True) as tmp:
        for rows in _hub_rows(loaded, list(loaded), data):
            records = (
                json.dumps(
                    {"translation": {data.src_lang: src, data.tgt_lang: tgt}},
                    ensure_ascii=False,
                    sort_keys=True,
                )
                + "\n"
                for src, tgt in zip(rows.src, rows.tgt, strict=True)
            )
            blob = "".join(records).encode("utf-8")
            name = names[rows.name]
            (tmp / f"{name}.jsonl.gz").write_bytes(gzip.compress(blob, mtime=0))
            written[name] = len(rows.src)
    return written


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
