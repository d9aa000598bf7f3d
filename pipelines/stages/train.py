"""DVC stage `train@<arch>-<seed>`: train one architecture with one seed, tracked in MLflow.

Trains for the comparison's ``budget`` (the same for every architecture). Resumes from
``checkpoints/<arch>-<seed>/last.ckpt`` when a previous run of the same configuration and code was
killed, continuing its MLflow run. Writes the exported model to ``artifacts/<arch>-<seed>/`` and
the validation curve to ``logs/<arch>-<seed>/history.csv``. With ``retrain.start: warm`` it
fine-tunes the registry's champion when the champion fits (same model and vocabulary).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import MLFlowLogger

from pipelines.core.atomic import atomic_write_json
from pipelines.core.errors import PipelineError, run_main, setup_logging
from pipelines.core.params import ModelRun, Params, load_params
from pipelines.core.paths import PATHS, ProjectPaths
from pipelines.core.scoring import bleu_metric
from pipelines.data.prepared import read_references
from pipelines.data.vocab import Tokenizers
from pipelines.tracking import registry, runs
from pipelines.tracking.training_runs import (
    finish_training_run,
    log_training_shape,
    open_training_run,
)
from pipelines.training.averaging import apply_checkpoint_average
from pipelines.training.budget import TrainingBudget
from pipelines.training.callbacks import TrainingMonitor, write_history
from pipelines.training.checkpoints import fingerprint, resumable_checkpoint
from pipelines.training.datamodule import TranslationDataModule
from pipelines.training.export import export_model, warm_start
from pipelines.training.low_precision import check_precision_support
from pipelines.training.module import DivergenceError, TranslationModule
from pipelines.training.profiling import profile_files
from pipelines.training.rank_failure import first_line, peer_lost, watch_parent
from pipelines.training.trainer import (
    accumulation,
    build_trainer,
    global_batch_tokens,
    launch_rank,
    world_size,
)
from pipelines.training.validation import ValidationBleu

log = logging.getLogger("nmt.train")


def build_module(
    run: ModelRun, params: Params, paths: ProjectPaths, tokenizers: Tokenizers, run_id: str | None
) -> TranslationModule:
    """The LightningModule of `run`, scoring validation BLEU on the prepared validation split,
    its model compiled for training if ``train.compile`` says so."""
    validation = ValidationBleu(
        detokenize=tokenizers.decode_tgt,
        references=read_references(paths.prepared, params.data.validation_split),
        tgt_lang=params.data.tgt_lang,
        max_len_margin=params.train.val_max_len_margin,
    )
    module = TranslationModule(
        model_config=params.arch(run.arch).model,
        optim=asdict(params.arch(run.arch).optim),
        src_vocab_size=tokenizers.src_vocab_size,
        tgt_vocab_size=tokenizers.tgt_vocab_size,
        check_finite_every=params.train.log_every_n_steps if torch.cuda.is_available() else 1,
        seed=run.seed,
        validation_bleu=validation,
        checkpoint_extras={"run_id": run_id},
        fused_loss=params.train.fused_loss,
        budget_steps=int(params.budget.value) if params.budget.unit == "steps" else None,
    )
    if params.train.compile:  # in place: state-dict keys stay unprefixed for export and resume
        module.model.compile_for_training()
    return module


def train(
    run: ModelRun,
    params: Params,
    paths: ProjectPaths,
    params_file: Path,
    init_from: Path | None = None,
) -> dict[str, Any]:
    """Train `run` (fine-tuning the exported model `init_from` if it fits), export the best
    checkpoint and return the training summary (rank 0; other ranks return {})."""
    pl.seed_everything(run.seed, workers=True)
    tokenizers = Tokenizers.load(paths.tokenized)
    ckpt_dir = paths.checkpoints / run.name
    if launch_rank() != 0:  # a rank whose launcher died stops instead of waiting in a collective
        watch_parent(launch_rank(), resume_hint(ckpt_dir))
    key = fingerprint(params, run, paths.tokenized)
    client = runs.connect()  # fails fast, before any training, if the server does not answer
    run_id = parent_id = None
    if launch_rank() == 0:
        run_id, parent_id, resume_from = open_training_run(
            client, params, run, params_file, ckpt_dir, paths.prepared, tokenizers, key
        )
    else:  # rank 0 has settled the folder before launching the other ranks
        resume_from = resumable_checkpoint(ckpt_dir, key)
    module = build_module(run, params, paths, tokenizers, run_id)
    if init_from is not None and resume_from is None:  # a resumed run has its weights already
        start = warm_start(module.model, init_from, tokenizers, params.arch(run.arch).model)
        log.info("%s: %s", run.name, start)
        client.set_tag(run_id, "train.start", start)
    accumulate = accumulation(params.train, world_size(params))
    logger = MLFlowLogger(params.experiment_name, tracking_uri=runs.tracking_uri(), run_id=run_id)
    history = paths.logs / run.name / "history.csv"
    if launch_rank() == 0:  # a profile of an earlier run must not pass for this one's
        for stale in profile_files(history.parent):
            stale.unlink()
    trainer, monitor, checkpoint, budget = build_trainer(
        params, run.arch, ckpt_dir, history, logger, accumulate
    )
    global_batch = global_batch_tokens(params, trainer)
    if trainer.is_global_zero and resume_from is None:
        log_training_shape(client, run_id, global_batch, trainer.world_size, module.model)
    data = data_module(params, paths, run.seed, accumulate)
    fit(trainer, module, data, resume_from, run, ckpt_dir)
    if not trainer.is_global_zero:
        return {}
    if monitor.rows:  # a run resumed at its very end validates no more: DVC removed the curve
        write_history(history, monitor.rows)
    best = checkpoint.best_model_path or str(ckpt_dir / "last.ckpt")
    averaging = load_best(module, best, params, paths)
    config = export_config(run.arch, params, tokenizers)
    export_model(module.model, config, tokenizers, paths.artifacts / run.name)
    summary = training_summary(run, params, module, monitor, trainer, budget, averaging)
    summary.update(run_id=run_id, parent_run_id=parent_id)
    atomic_write_json(paths.artifacts / run.name / "training.json", summary)
    finish_training_run(client, run_id, summary, history, params.data.validation_split)
    for profile in profile_files(history.parent):
        client.log_artifact(run_id, str(profile), artifact_path="profile")
    return summary


def resume_hint(ckpt_dir: Path) -> str:
    """What a user does after a run stopped mid-way."""
    return f"`dvc repro` (or this command) resumes from {ckpt_dir / 'last.ckpt'}"


def fit(
    trainer: pl.Trainer,
    module: TranslationModule,
    data: TranslationDataModule,
    resume_from: str | None,
    run: ModelRun,
    ckpt_dir: Path,
) -> None:
    """``trainer.fit``, with the failures a user acts on as one line: divergence (the last good
    checkpoint is kept) and another rank lost mid-run (resume)."""
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except DivergenceError as err:
        raise PipelineError(
            f"{run.name}: {err}; the last good checkpoint is kept in {ckpt_dir}"
        ) from err
    except Exception as err:
        if trainer.world_size > 1 and peer_lost(err):
            raise PipelineError(
                f"{run.name}: rank {trainer.global_rank}: another rank stopped during training "
                f"({first_line(err)}); {resume_hint(ckpt_dir)}"
            ) from err
        raise


def data_module(
    params: Params, paths: ProjectPaths, seed: int, accumulate: int
) -> TranslationDataModule:
    """The training (shuffled by `seed`) and validation loaders of the tokenized splits."""
    return TranslationDataModule(
        paths.tokenized,
        params.data.train_split,
        params.data.validation_split,
        batch_tokens=params.train.batch_tokens,
        seed=seed,
        accumulate=accumulate,
        num_workers=params.train.num_workers,
        length_multiple=params.train.length_multiple,
        val_batch_tokens=params.train.val_batch_tokens,  # 0: batch_tokens
    )


def load_best(
    module: TranslationModule, best: str, params: Params, paths: ProjectPaths
) -> dict[str, Any] | None:
    """Load the best checkpoint's weights into `module`, then average the kept epochs' weights
    into it if asked and if that is better on validation; returns what averaging did."""
    state = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    if params.train.checkpoint_average <= 1:
        return None
    averaging = apply_checkpoint_average(
        module.model,
        module.validation_bleu,
        state["state_dict"],
        Path(best).parent / "epochs",
        params.train.checkpoint_average,
        paths.tokenized,
        params.data.validation_split,
        params.train.validation_batch_tokens(),
    )
    return averaging.as_dict() if averaging else None


def export_config(arch: str, params: Params, tokenizers: Tokenizers) -> dict[str, Any]:
    """The exported model's config.json: architecture, model config, vocabularies, languages."""
    return {
        "arch": arch,
        "model": params.arch(arch).model,
        "src_vocab_size": tokenizers.src_vocab_size,
        "tgt_vocab_size": tokenizers.tgt_vocab_size,
        "src_lang": params.data.src_lang,
        "tgt_lang": params.data.tgt_lang,
        "unicode_form": params.prepare.unicode_form,  # the translator normalises input the same way
    }


def training_summary(
    run: ModelRun,
    params: Params,
    module: TranslationModule,
    monitor: TrainingMonitor,
    trainer: pl.Trainer,
    budget: TrainingBudget,
    averaging: dict[str, Any] | None,
) -> dict[str, Any]:
    """artifacts/<arch>-<seed>/training.json: size, best epoch, the exported model's validation
    BLEU (what every model choice reads), the budget used, time and throughput of the run."""
    best_row = max(monitor.rows, key=lambda r: r.get("val_bleu", float("-inf")), default={})
    rates, steady = monitor.tokens_per_sec, monitor.steady_tokens_per_sec()
    averaged = averaging is not None and averaging["kept"] == "averaged"
    return {
        "arch": run.arch,
        "seed": run.seed,
        "experiment": params.experiment_name,
        "num_parameters": module.model.num_parameters(),
        "best_epoch": best_row.get("epoch"),
        "best_val_bleu": best_row.get("val_bleu"),
        "val_bleu": averaging["averaged_val_bleu"] if averaged else best_row.get("val_bleu"),
        "checkpoint_average": averaging,
        **budget.used(trainer),
        "epochs": len(monitor.rows),
        "train_seconds": round(monitor.train_seconds, 1),
        "tokens_per_sec": round(sum(rates) / max(len(rates), 1), 1),
        "tokens_per_sec_steady": None if steady is None else round(steady, 1),  # see steady_rate
        "global_batch_tokens": global_batch_tokens(params, trainer),
        "world_size": trainer.world_size,
        "device": runs.lineage_tags(params.data.dataset)["device"],
    }


def champion_to_fine_tune(params: Params, folder: Path) -> Path | None:
    """With ``retrain.start: warm``, the registry's champion downloaded into `folder` (rank 0)."""
    if params.retrain.start != "warm" or launch_rank() != 0:
        return None
    name = params.tracking.registered_model
    version = registry.champion_version(name, client=runs.connect())
    if version is None:
        log.info("cold: retrain.start is warm, but %s has no champion yet", name)
        return None
    fetched = registry.download_model_folder(f"models:/{name}/{version}", folder / "download")
    return fetched.rename(folder / f"champion-v{version}")


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.train",
        description="Train one architecture with one seed for params.yaml's budget (DVC stage "
        "train@<arch>-<seed>). Resumes from checkpoints/<arch>-<seed>/last.ckpt after a killed "
        "run of the same configuration; with retrain.start: warm, fine-tunes the registry's "
        "champion when it fits.",
    )
    parser.add_argument("--arch", required=True, help="an entry of `models` in params.yaml")
    parser.add_argument(
        "--seed", type=int, default=None, help="one of params.yaml's seeds (default: the first)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    run = params.model_run(args.arch, args.seed)
    bleu_metric(params.data.tgt_lang)  # validation BLEU's tokenizer: fail now, not after an epoch
    model_config = params.arch(run.arch).model
    check_precision_support(params.train.precision, params.train.accelerator, model_config)
    with tempfile.TemporaryDirectory(prefix="nmt-champion-") as tmp:
        init_from = champion_to_fine_tune(params, Path(tmp))
        summary = train(run, params, PATHS, args.params, init_from)
    if summary:
        log.info("trained %s: %s", run.name, json.dumps(summary))


if __name__ == "__main__":
    main()
