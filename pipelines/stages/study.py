"""DVC stage `study`: the seed's claims measured (issue #17), each part a switch in
``study.parts``.

Writes ``reports/study.md`` and its PNGs into ``reports/study/``, and logs both with the
measured numbers to a `study` MLflow run; ``--no-tracking`` skips MLflow (a lent GPU machine
without it). The full GPU run: ``python -m pipelines.stages.study --params profiles/gpu.yaml``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.core.atomic import atomic_path, atomic_write_text
from pipelines.core.errors import run_main, setup_logging
from pipelines.core.params import load_params
from pipelines.core.paths import PATHS
from pipelines.study.report import study_markdown
from pipelines.study.runner import run_study, setup_line
from pipelines.tracking import runs
from pipelines.tracking.study_run import log_study

log = logging.getLogger("nmt.study")

REPORT = "study.md"
FIGURES = "study"  # the folder of its PNGs, beside it


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.study",
        description="Measure the seed's claims (DVC stage study): the parts listed in "
        "study.parts (cost, path, positional, heads, efficiency); writes reports/study.md and "
        "reports/study/*.png and logs them to a `study` MLflow run.",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument(
        "--no-tracking",
        action="store_true",
        help="skip MLflow (for a machine without it); the report is written all the same",
    )
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    if not args.no_tracking:
        runs.connect()  # fails fast, before the study, if the tracking server does not answer
    report, figures = PATHS.reports / REPORT, PATHS.reports / FIGURES
    with atomic_path(figures, directory=True) as folder:
        results = run_study(params, PATHS, folder)
    atomic_write_text(report, study_markdown(results, setup_line(params)))
    log.info("wrote %s and %s/", report, figures)
    if not args.no_tracking:
        run_id = log_study(params, results, report, figures, PATHS)
        log.info("logged the study to MLflow run %s", run_id)


if __name__ == "__main__":
    main()
