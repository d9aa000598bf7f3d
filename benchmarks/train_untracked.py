"""Train one architecture with one seed as the train stage does, but without MLflow, then evaluate
it as the evaluate stage does: for lent GPU machines that have no mlflow installed.

    python -m benchmarks.train_untracked --arch convs2s --seed 1234 --params profiles/gpu.yaml \\
        --out results/

It builds the module, the data module and the Trainer with the train stage's own functions (the
params file's ``budget``; Lightning's default logger instead of MLflow) and writes what the two
stages write, under ``<out>``: ``artifacts/<arch>-<seed>/training.json`` (the same summary, with
no MLflow run ids), ``logs/<arch>-<seed>/history.csv`` (and ``step_profile.json`` with
``train.profile_steps``), ``metrics/<arch>-<seed>.json`` and
``.decoding.json`` (the length penalty chosen on validation as the evaluate stage chooses it) and
``hypotheses/<arch>-<seed>/``. The model itself stays in a temporary folder. With those folders
copied into a checkout, ``pipelines.reports.comparison.compare`` writes the comparison report.
Reads ``data/prepared`` and ``data/tokenized`` (for the params file's tokenizer settings) from the
working directory.

``--phase-times FILE`` times every epoch's training, validation and the rest
(`pipelines.training.phase_times`); ``--time-to-bleu 38 --stop-after-epoch 40`` adds when
validation BLEU first reached 38, by phase, and ends the run after epoch 40 without evaluating it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lightning.pytorch as pl

from pipelines.core.atomic import atomic_write_json
from pipelines.core.params import load_params
from pipelines.core.paths import PATHS, ProjectPaths
from pipelines.data.vocab import Tokenizers
from pipelines.inference.evaluation import choose_decoding, evaluate, record_settings
from pipelines.inference.settings import metrics_record, resolve_device
from pipelines.inference.translator import Translator
from pipelines.stages.train import (
    build_module,
    data_module,
    export_config,
    load_best,
    training_summary,
)
from pipelines.training.export import export_model
from pipelines.training.phase_times import PhaseTimer
from pipelines.training.trainer import accumulation, build_trainer, world_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_untracked",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--arch", required=True, help="an entry of `models` in the params file")
    parser.add_argument("--seed", type=int, help="one of the params file's seeds (default: first)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="root of the output folders")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="stop after training.json (no export, no decoding): throughput and profile runs",
    )
    parser.add_argument(
        "--phase-times",
        type=Path,
        metavar="FILE",
        help="write the seconds each epoch spent training, validating and otherwise "
        "(pipelines.training.phase_times) to this JSON file",
    )
    parser.add_argument(
        "--time-to-bleu",
        type=float,
        metavar="BLEU",
        help="with --phase-times: also when validation BLEU first reached BLEU, by phase",
    )
    parser.add_argument(
        "--stop-after-epoch",
        type=int,
        metavar="N",
        help="with --phase-times: stop once epoch N (from 0) is validated; implies --train-only",
    )
    args = parser.parse_args(argv)
    timing_options = (args.time_to_bleu, args.stop_after_epoch)
    if any(option is not None for option in timing_options) and not args.phase_times:
        parser.error("--time-to-bleu and --stop-after-epoch need --phase-times")
    timer = PhaseTimer(args.stop_after_epoch) if args.phase_times else None
    train_only = args.train_only or args.stop_after_epoch is not None
    params = load_params(args.params)
    run = params.model_run(args.arch, args.seed)
    out = ProjectPaths(args.out)
    work = Path(tempfile.mkdtemp(prefix=f"untracked-{run.name}-"))
    pl.seed_everything(run.seed, workers=True)
    tokenizers = Tokenizers.load(PATHS.tokenized)
    module = build_module(run, params, PATHS, tokenizers, None)
    accumulate = accumulation(params.train, world_size(params))
    history = out.logs / run.name / "history.csv"
    trainer, monitor, best, budget = build_trainer(
        params, run.arch, work / "checkpoints", history, None, accumulate
    )
    if timer is not None:
        trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=data_module(params, PATHS, run.seed, accumulate))
    if trainer.global_rank != 0:  # with DDP, the first process exports and evaluates
        return
    if timer is not None:
        atomic_write_json(args.phase_times, timer.record(args.time_to_bleu))
    averaging = None if train_only else load_best(module, best.best_model_path, params, PATHS)
    summary = training_summary(run, params, module, monitor, trainer, budget, averaging)
    summary.update(run_id=None, parent_run_id=None)
    atomic_write_json(out.artifacts / run.name / "training.json", summary)
    if train_only:
        return
    model_dir = work / "model"
    export_model(module.model, export_config(run.arch, params, tokenizers), tokenizers, model_dir)
    translator = Translator.load(model_dir, device=resolve_device(params.evaluate.device))
    validation = params.data.validation_split
    chosen, selection = choose_decoding(translator, PATHS.prepared, validation, params.evaluate)
    metrics = evaluate(
        translator, params.data.test_splits, chosen, PATHS.prepared, out.hypotheses / run.name
    )
    atomic_write_json(out.metrics / f"{run.name}.json", metrics_record(metrics, selection))
    record_settings(out.metrics, run.name, chosen)
    scores = {split: values["bleu"] for split, values in metrics.items()}
    print(
        json.dumps(
            {
                "run": run.name,
                "val_bleu": summary["val_bleu"],
                "decoding_selection": selection,
                "test_bleu": scores,
            }
        )
    )


if __name__ == "__main__":
    main()
