"""The MLflow run of one training: opened (or continued after a kill) with its lineage, params,
datasets and tokenizer; closed with its total time and validation curve."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from pipelines.core.atomic import atomic_write_json
from pipelines.core.params import ModelRun, Params
from pipelines.data.vocab import Tokenizers
from pipelines.tracking import runs
from pipelines.training.checkpoints import checkpoint_position, prepare_checkpoint_dir, saved_run_id

log = logging.getLogger("nmt.train")


def open_training_run(
    client,
    params: Params,
    run: ModelRun,
    params_file: Path,
    ckpt_dir: Path,
    prepared: Path,
    tokenizers: Tokenizers,
    key: str,
) -> tuple[str, str, Path | None]:
    """Rank 0: continue the killed run of this configuration, or open a new run with lineage.

    Returns (run id, parent run id, checkpoint to resume from).
    """
    resume_from, stale_run = prepare_checkpoint_dir(ckpt_dir, key)
    if stale_run:
        runs.finish_stale_run(client, stale_run, "superseded by a new configuration or code")
    exp_id = runs.experiment_id(client, params.experiment_name)
    pipeline_key = runs.pipeline_key(params_file, params.data.dataset)
    parent_id = runs.parent_run_id(client, exp_id, pipeline_key, f"pipeline-{pipeline_key[:8]}")
    if resume_from is not None:
        run_id = saved_run_id(ckpt_dir)
        log.info(
            "resuming %s from %s, %s (MLflow run %s)",
            run.name, resume_from, checkpoint_position(resume_from), run_id,
        )  # fmt: skip
        client.update_run(run_id, status="RUNNING")
        return run_id, parent_id, resume_from
    tags = {
        "mlflow.parentRunId": parent_id,
        runs.ARCH_TAG: run.arch,
        runs.SEED_TAG: str(run.seed),
        **runs.lineage_tags(params.data.dataset),
        **runs.source_tags(f"python -m pipelines.stages.train --arch {run.arch} --seed {run.seed}"),
    }
    run_id = client.create_run(exp_id, run_name=run.name, tags=tags).info.run_id
    atomic_write_json(ckpt_dir / "fingerprint.json", {"fingerprint": key, "run_id": run_id})
    runs.log_params(client, run_id, params.flat(run.arch) | {"arch": run.arch, "seed": run.seed})
    from pipelines.tracking.dataset_inputs import log_dataset_inputs  # imports mlflow

    log_dataset_inputs(client, run_id, prepared)
    for model_file in tokenizers.model_files:
        client.log_artifact(run_id, str(model_file), artifact_path="tokenizer")
    return run_id, parent_id, None


def log_training_shape(
    client, run_id: str, global_batch_tokens: int, devices: int, model: nn.Module
) -> None:
    """The params only known once the Trainer exists: global batch, world size, model size."""
    client.log_param(run_id, "train.global_batch_tokens", global_batch_tokens)
    client.log_param(run_id, "train.world_size", devices)
    client.log_param(run_id, "model.num_parameters", model.num_parameters())


def finish_training_run(
    client, run_id: str, summary: dict[str, Any], history: Path, validation_split: str
) -> None:
    """The total training time, the budget used, the exported model's validation BLEU (the score
    model selection reads) and the validation curve; evaluate ends the run."""
    client.log_metric(run_id, "train/total_seconds", summary["train_seconds"])
    if summary["val_bleu"] is not None:
        client.log_metric(run_id, f"validation/{validation_split}/bleu", summary["val_bleu"])
    for unit in ("epochs", "steps", "tokens", "seconds"):
        client.log_metric(run_id, f"budget/used_{unit}", summary[f"used_{unit}"])
    client.log_artifact(run_id, str(history), artifact_path="curves")
