"""DVC stage `tokenizer`: train SentencePiece on the prepared training split and encode every split
into ``data/tokenized`` (see :mod:`pipelines.data.subwords`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.core.errors import run_main, setup_logging
from pipelines.core.params import DEFAULT_PARAMS, load_params
from pipelines.core.paths import PATHS
from pipelines.data.subwords import tokenize

logger = logging.getLogger("nmt.tokenizer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.tokenizer",
        description=(
            "Train SentencePiece on the prepared training split (joint or per side, per "
            "tokenizer.* params) and encode every prepared split into <out>/<split>.npz."
        ),
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument(
        "--prepared", type=Path, default=PATHS.prepared, help="prepare stage output folder"
    )
    parser.add_argument("--out", type=Path, default=PATHS.tokenized, help="output folder")
    return parser


@run_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    tokenize(args.prepared, params.tokenizer, args.out)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
