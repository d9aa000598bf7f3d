"""DVC stage `prepare`: load, validate, normalize and filter the corpus into ``data/prepared``.

What is filtered and what is an error: :mod:`pipelines.data.preparation`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.core.atomic import atomic_write_json
from pipelines.core.errors import run_main, setup_logging
from pipelines.core.params import DEFAULT_PARAMS, load_params
from pipelines.core.paths import PATHS
from pipelines.data.preparation import prepare

logger = logging.getLogger("nmt.prepare")


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
    parser.add_argument("--out", type=Path, default=PATHS.prepared, help="output folder")
    parser.add_argument(
        "--metrics", type=Path, default=PATHS.metrics / "prepare.json", help="metrics JSON file"
    )
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
