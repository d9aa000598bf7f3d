"""`nmt fetch-corpus`: a Hugging Face dataset written into the corpus folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.core.errors import PipelineError
from pipelines.core.params import DataParams

log = logging.getLogger("nmt")


def split_renames(specs: list[str]) -> dict[str, str]:
    """``--split HUB=NAME`` options (``test=test_2016_flickr``) as a mapping."""
    renames: dict[str, str] = {}
    for spec in specs:
        hub, _, name = spec.partition("=")
        if not hub or not name or "/" in name:
            raise PipelineError(f"--split {spec}: expected HUB=NAME, e.g. test=test_2016_flickr")
        renames[hub] = name
    return renames


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipelines.core.params import load_params
    from pipelines.data.corpus import write_hub_corpus

    renames = split_renames(args.split)
    if args.out.exists() and not args.force:
        raise PipelineError(
            f"{args.out} exists (the DVC-tracked corpus?): pass --force to replace it"
        )
    data = replace(
        load_params(args.params).data,
        dataset=args.dataset,
        config=args.config,
        revision=args.revision,
    )
    written = write_hub_corpus(data, renames, args.out)
    log.info(
        "wrote %s: %s",
        args.out,
        ", ".join(f"{name} ({rows} pairs)" for name, rows in written.items()),
    )


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fetch-corpus",
        help="write a Hugging Face dataset into the corpus folder (no ../shared needed)",
        description="Load DATASET with Hugging Face `datasets` (a Hub id such as "
        "bentrevett/multi30k, a local folder laid out like a Hub repository, or a folder written "
        "by DatasetDict.save_to_disk) and write every split into OUT as <split>.jsonl.gz in the "
        'pipeline\'s layout ({"translation": {src: ..., tgt: ...}} per line, the languages of '
        "--params' data section), checked row by row. --split renames splits to the names "
        "params.yaml uses. Then run the pipeline on it: `dvc repro` records OUT's new version "
        "in its .dvc file.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="Hub id or local dataset folder")
    parser.add_argument("--config", default=None, help="dataset configuration (e.g. de-en)")
    parser.add_argument(
        "--revision", default=None, help="Hub branch, tag or commit to pin (default: main)"
    )
    parser.add_argument(
        "--split", action="append", default=[], metavar="HUB=NAME",
        help="write Hub split HUB as NAME (repeatable), e.g. test=test_2016_flickr",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path(DataParams().dataset),
        help=f"corpus folder to write (default {DataParams().dataset})",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="replace OUT if it exists (it is replaced whole)"
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"),
        help="params file whose data.src_lang and data.tgt_lang are written (default params.yaml)",
    )  # fmt: skip
    parser.set_defaults(func=run)
