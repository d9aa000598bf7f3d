"""The Lightning Trainer of the train stage: callbacks, checkpoints, precision, devices."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from models.attention import use_cudnn_attention
from pipelines.core.errors import PipelineError
from pipelines.core.params import Params
from pipelines.training.averaging import epoch_checkpoint_callback
from pipelines.training.budget import TrainingBudget
from pipelines.training.callbacks import AtomicCheckpointIO, InEpochCheckpoint, TrainingMonitor
from pipelines.training.cuda_graphs import CudaGraphsCallback
from pipelines.training.low_precision import LowPrecisionWeightsCallback
from pipelines.training.profiling import PROFILE_FILE, StepProfiler
from pipelines.training.progress import training_progress_bar
from pipelines.training.sigterm import HostSigtermCheck

MONITOR = "val/bleu"


def world_size(params: Params) -> int:
    """Devices per node (``auto``: every visible GPU, else one CPU process) times nodes."""
    devices = params.train.devices
    if devices == "auto":
        devices = torch.cuda.device_count() or 1
    return int(devices) * params.train.num_nodes


def launch_rank() -> int:
    """This process's global rank before Lightning initialises the process group.

    torchrun sets RANK, SLURM sets SLURM_PROCID, and Lightning's own launcher sets NODE_RANK and
    LOCAL_RANK; only rank 0 creates MLflow runs and touches the checkpoint folder.
    """
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * max(1, torch.cuda.device_count()) + local


def accumulation(train_params, world_size: int) -> int:
    """Gradient accumulation; with keep_global_batch it shrinks as devices grow."""
    steps = train_params.accumulate_grad_batches
    if not train_params.keep_global_batch:
        return steps
    if steps % world_size:
        raise PipelineError(
            f"train.accumulate_grad_batches: {steps} is not divisible by the {world_size} devices; "
            "with train.keep_global_batch it must be, to keep the global batch fixed"
        )
    return steps // world_size


def global_batch_tokens(params: Params, trainer: pl.Trainer) -> int:
    """Tokens per optimizer step: per-device batch x devices x accumulation."""
    return params.train.batch_tokens * trainer.world_size * trainer.accumulate_grad_batches


def build_trainer(
    params: Params,
    arch: str,
    checkpoints: Path,
    history_file: Path,
    logger: Logger | None,
    accumulate: int,
) -> tuple[pl.Trainer, TrainingMonitor, ModelCheckpoint, TrainingBudget]:
    """The Trainer of `arch`: checkpoints in `checkpoints` (best by validation BLEU, last after
    every validation), the monitor writing `history_file`, early stopping, the comparison's
    budget, the GPU fast paths, and with ``train.profile_steps`` the step profiler (its summary
    beside `history_file`); returns it with its monitor, best-checkpoint callback and budget.

    It also sets, process-wide, whether SDPA may pick cuDNN's attention kernel
    (``train.cudnn_attention``: cuDNN plans every new shape), so that whatever builds a Trainer
    from the params trains with the same kernels."""
    use_cudnn_attention(params.train.cudnn_attention)
    optim = params.arch(arch).optim
    monitor = TrainingMonitor(history_file, params.train.log_every_n_steps)
    budget = TrainingBudget(params.budget)
    # Best by validation BLEU, its weights only (export and averaging read nothing else: a third
    # of last.ckpt's bytes with Adam's state); a separate callback rewrites last.ckpt, the whole
    # state for resuming, after every validation (Lightning's save_last only refreshes "last"
    # when the best checkpoint changed).
    checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    last = ModelCheckpoint(
        dirpath=checkpoints,
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )
    # With several processes: Lightning's per-step SIGTERM check on the host, not the GPU.
    callbacks: list[pl.Callback] = [monitor, budget, checkpoint, last, HostSigtermCheck()]
    # The bar reads the logged loss (a host-device sync) only when the logger does.
    callbacks.append(training_progress_bar(params.train.log_every_n_steps))
    if params.train.checkpoint_every_n_steps:  # also refresh last.ckpt inside long epochs
        callbacks.append(
            InEpochCheckpoint(
                dirpath=checkpoints,
                filename="last",
                every_n_train_steps=params.train.checkpoint_every_n_steps,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    if params.train.checkpoint_average > 1:  # N epochs' weights (last or best), for averaging
        folder = checkpoints / "epochs"
        count, of = params.train.checkpoint_average, params.train.checkpoint_average_of
        callbacks.append(epoch_checkpoint_callback(folder, count, of, MONITOR))
    if params.train.cuda_graphs:
        callbacks.append(CudaGraphsCallback())  # CUDA devices (compiled too); DDP: one all-reduce
    if params.train.low_precision_weights and not params.train.compile:
        callbacks.append(LowPrecisionWeightsCallback())  # bf16-mixed, one device, no CUDA graphs
    if logger is not None:  # the schedule's rate per step, as train/lr (a curve in MLflow)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if optim.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(
                MONITOR,
                mode="max",
                patience=optim.early_stopping_patience,
                check_on_train_epoch_end=False,
            )
        )
    profiler = None
    if params.train.profile_steps:
        profiler = StepProfiler(params.train.profile_steps, history_file.parent / PROFILE_FILE)
    trainer = pl.Trainer(
        accelerator=params.train.accelerator,
        devices=params.train.devices,
        num_nodes=params.train.num_nodes,
        strategy=params.train.strategy,
        precision=params.train.precision,
        max_epochs=int(params.budget.value) if params.budget.unit == "epochs" else -1,
        gradient_clip_val=params.train.gradient_clip_val or None,
        accumulate_grad_batches=accumulate,
        deterministic=params.train.deterministic,
        log_every_n_steps=params.train.log_every_n_steps,
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        profiler=profiler,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    return trainer, monitor, checkpoint, budget
