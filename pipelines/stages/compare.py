"""DVC stage `compare`: one table and two plots comparing every trained architecture.

Writes ``reports/comparison.{md,csv}`` (seed means ± sd, paired-bootstrap intervals),
``reports/validation_bleu.csv``, ``reports/validation_curves.png`` and
``reports/bleu_per_test_set.png``, and attaches them to the pipeline's parent MLflow run. The
architecture with the best mean validation BLEU is selected (no test split decides) and its best
seed on validation is registered in the MLflow model registry, with the decoding settings its test
sets were decoded with; it becomes `champion` only when there is none yet. Replacing a champion is
`nmt retrain`'s decision (with its BLEU margin).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.core.errors import run_main, setup_logging
from pipelines.core.params import load_params
from pipelines.core.paths import PATHS
from pipelines.data.prepared import read_sources
from pipelines.inference.evaluation import settings_file
from pipelines.inference.settings import read_settings
from pipelines.reports.comparison import REPORT_FILES, compare
from pipelines.tracking.pipeline_run import log_comparison, register_best

log = logging.getLogger("nmt.compare")


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.compare",
        description="Compare every architecture in params.yaml over its seeds: "
        "reports/comparison.{md,csv} and PNG plots (DVC stage compare); register the model "
        "selected on validation BLEU (champion if none yet).",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    rows, selection = compare(params, PATHS)
    log_comparison(rows, selection, PATHS)
    log.info("wrote %s", ", ".join(str(PATHS.reports / name) for name in REPORT_FILES))
    log.info("selected on validation: %s (registering %s)", selection.arch, selection.run.name)
    example = read_sources(PATHS.prepared, params.data.validation_split)[:2]
    name, split = params.tracking.registered_model, params.data.validation_split
    # The settings its test sets were decoded with (the length penalty chosen on validation).
    decoding = read_settings(settings_file(PATHS.metrics, selection.run.name))
    promotion = register_best(
        selection, PATHS, name, split, example, decoding or params.evaluate.decoding()
    )
    log.info("%s version %s: %s", name, promotion.version, promotion.reason)


if __name__ == "__main__":
    main()
