"""`nmt retrain`: one scheduled retraining pass (pipelines.ops.retrain)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from pipelines.ops.retrain import main as retrain_main

    raise SystemExit(retrain_main(args))


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "retrain",
        help="scheduled retraining: pull new data, retrain, promote only if better",
        description="One idempotent retraining pass for a scheduler (cron, systemd, CI): take a "
        "lock; bring in the latest code and data (git pull --ff-only and dvc pull when the branch "
        "has an upstream, else the workspace as it is); if anything changed, run `dvc repro`, "
        "score the new model (selected on validation) and the champion on retrain.promotion_split "
        "(default: the validation split) with the same beam "
        "settings and sacreBLEU signature, and move `champion` only if the new one reaches the "
        "champion's BLEU + retrain.margin_bleu (and, if retrain.max_p_value is set, a paired "
        "bootstrap p-value at most that). Each decision goes to "
        "reports/retrain/<UTC time>.json and to MLflow tags. Exit codes: 0 up to date, "
        "10 promoted, 11 not promoted, 1 failed (champion untouched), 75 locked by another run.",
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"),
        help="the params file retrain reads, relative to the repository root (the pipeline "
        "itself always reads params.yaml)",
    )  # fmt: skip
    parser.add_argument(
        "--lock", type=Path, default=Path(".nmt-retrain.lock"),
        help="lock file, relative to the repository root (default .nmt-retrain.lock)",
    )  # fmt: skip
    parser.set_defaults(func=run)
