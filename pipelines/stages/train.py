"""DVC stage `train@<arch>`: train one architecture with Lightning, tracked in MLflow.

Resumes from ``checkpoints/<arch>/last.ckpt`` when a previous run of the same configuration and
code was killed, continuing its MLflow run. Writes the exported model to ``artifacts/<arch>/``
and the validation curve to ``logs/<arch>/history.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.loggers import MLFlowLogger

from models import PAD_ID
from models.attention import use_cudnn_attention
from pipelines.core.atomic import atomic_path, atomic_write_json, atomic_write_text
from pipelines.core.errors import PipelineError, run_main, setup_logging
from pipelines.core.params import Params, load_params
from pipelines.data.vocab import Tokenizers
from pipelines.tracking import runs
from pipelines.training.averaging import apply_checkpoint_average, epoch_checkpoint_callback
from pipelines.training.cuda_graphs import CudaGraphsCallback
from pipelines.training.datamodule import TranslationDataModule
from pipelines.training.low_precision import LowPrecisionWeightsCallback
from pipelines.training.module import DivergenceError, TranslationModule

log = logging.getLogger("nmt.train")

MONITOR = "val/bleu"
# An exported model folder to fine-tune from (set by `nmt retrain` when retrain.start is warm).
INIT_FROM_ENV = "NMT_INIT_FROM"


@dataclass
class TrainPaths:
    """Where the stage reads and writes; defaults match dvc.yaml."""

    prepared: Path = Path("data/prepared")
    tokenized: Path = Path("data/tokenized")
    checkpoints: Path = Path("checkpoints")
    artifacts: Path = Path("artifacts")
    logs: Path = Path("logs")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, fsync, then rename: a kill never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class InEpochCheckpoint(ModelCheckpoint):
    """Rewrites last.ckpt every N optimizer steps, but not at an epoch's last batch.

    The epoch's end is the validation checkpoint's; a step checkpoint taken just before
    validation would, on resume, end the epoch without validating it.
    """

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)


class TrainingMonitor(pl.Callback):
    """Tokens per second (global, non-pad source+target), peak GPU memory and the epoch history."""

    def __init__(self, history_file: Path, log_every_n_steps: int) -> None:
        self.history_file = history_file
        self.log_every_n_steps = log_every_n_steps
        self.rows: list[dict[str, float]] = []
        self.tokens_per_sec: list[float] = []
        self._tokens: torch.Tensor | None = None
        self._window_start = 0.0
        self.train_seconds = 0.0
        self._epoch_start = 0.0

    def on_train_start(self, trainer, module) -> None:
        # A run resumed inside an epoch gets no on_train_epoch_start for that epoch.
        self.on_train_epoch_start(trainer, module)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch_start = self._window_start = time.perf_counter()
        self._tokens = torch.zeros((), device=module.device, dtype=torch.int64)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # Accumulated on device: no host sync except at the logging interval.
        self._tokens += (batch["src"] != PAD_ID).sum() + (batch["tgt_out"] != PAD_ID).sum()
        if (batch_idx + 1) % self.log_every_n_steps == 0:
            tokens = trainer.strategy.reduce(self._tokens, reduce_op="sum")
            elapsed = time.perf_counter() - self._window_start
            rate = float(tokens) / max(elapsed, 1e-9)
            self.tokens_per_sec.append(rate)
            module.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False)
            self._tokens.zero_()
            self._window_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._epoch_start:  # not when a resumed run closes the epoch it was saved in
            self.train_seconds += time.perf_counter() - self._epoch_start
        self._epoch_start = 0.0

    def on_validation_end(self, trainer, module) -> None:
        # After the module's on_validation_epoch_end, so val/bleu is in callback_metrics.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_seconds": round(self.train_seconds + self._elapsed_in_epoch(), 2),
        }
        for key in ("val/loss", "val/ppl", "val/bleu"):
            if key in metrics:
                row[key.replace("/", "_")] = round(float(metrics[key]), 4)
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**30
            trainer.logger.log_metrics({"train/peak_gpu_memory_gib": peak}, trainer.global_step)
            row["peak_gpu_memory_gib"] = round(peak, 3)
        self.rows.append(row)
        if trainer.is_global_zero:
            write_history(self.history_file, self.rows)

    def _elapsed_in_epoch(self) -> float:
        return time.perf_counter() - self._epoch_start if self._epoch_start else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state.get("rows", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The epoch-level curve as CSV for `dvc plots` and the comparison report."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)]
    lines += [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def code_digest(root: Path = PROJECT_ROOT) -> str:
    """Digest of the code that trains: every .py file of models/ and pipelines/ under `root`."""
    return runs.code_digest([root / "models", root / "pipelines"])


def fingerprint(params: Params, arch: str, tokenized: Path) -> str:
    """Identifies a training configuration and the code that runs it: a checkpoint is resumed
    only under the same ones (a killed run), never by code that changed since (a DVC rerun
    after a code change trains afresh)."""
    state = {
        "code": code_digest(),
        "seed": params.seed,
        "arch": asdict(params.arch(arch)),
        "train": asdict(params.train),
        "tokenized": sorted((p.name, p.stat().st_size) for p in tokenized.iterdir() if p.is_file()),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


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


def read_references(prepared: Path, split: str) -> list[str]:
    with open(prepared / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["tgt"] for line in handle]


def resumable_checkpoint(ckpt_dir: Path, key: str) -> Path | None:
    """last.ckpt if it was written under the same configuration, else None (read-only)."""
    marker, last = ckpt_dir / "fingerprint.json", ckpt_dir / "last.ckpt"
    if (
        marker.exists()
        and last.exists()
        and json.loads(marker.read_text()).get("fingerprint") == key
    ):
        return last
    return None


def checkpoint_position(path: Path) -> str:
    """Where a checkpoint stands: its epoch and optimizer step, and whether inside the epoch."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    inside = "rng" in state.get("nmt", {})
    where = "inside" if inside else "at the end of"
    return f"{where} epoch {state['epoch']}, optimizer step {state['global_step']}"


def prepare_checkpoint_dir(ckpt_dir: Path, key: str, client) -> Path | None:
    """Return last.ckpt to resume from, or wipe a stale folder left by another configuration."""
    marker = ckpt_dir / "fingerprint.json"
    last = ckpt_dir / "last.ckpt"
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("fingerprint") == key and last.exists():
            return last
        if saved.get("run_id"):
            runs.finish_stale_run(
                client, saved["run_id"], "superseded by a new configuration or code"
            )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return None


def vocabulary(tokenizers: Tokenizers) -> tuple[list[str], list[str]]:
    """The source and target subword pieces, by id."""
    return tuple(
        [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        for processor in (tokenizers.src, tokenizers.tgt)
    )


def warm_start(model: torch.nn.Module, folder: Path, tokenizers: Tokenizers, model_config) -> str:
    """Load the weights of exported `folder` into `model` if they fit; returns how training starts.

    They fit when the model configuration and the vocabulary (every piece, by id) are unchanged;
    otherwise training starts cold and the returned text says why.
    """
    from safetensors.torch import load_model

    config = json.loads((folder / "config.json").read_text())
    if config.get("model") != model_config:
        return f"cold: {folder.name} has another model configuration"
    if vocabulary(Tokenizers.load(folder / "tokenizer")) != vocabulary(tokenizers):
        return f"cold: the vocabulary changed since {folder.name} was trained"
    load_model(model, str(folder / "model.safetensors"), device="cpu")
    return f"warm: fine-tuning {folder.name}"


def export_model(
    module: TranslationModule, arch: str, params: Params, tokenizers: Tokenizers, out_dir: Path
) -> None:
    """The exported translator: safetensors weights, config and the SentencePiece model(s)."""
    from safetensors.torch import save_model

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_model(module.model, str(tmp / "model.safetensors"))
        config = {
            "arch": arch,
            "model": params.arch(arch).model,
            "src_vocab_size": tokenizers.src_vocab_size,
            "tgt_vocab_size": tokenizers.tgt_vocab_size,
            "src_lang": params.data.src_lang,
            "tgt_lang": params.data.tgt_lang,
        }
        atomic_write_json(tmp / "config.json", config)
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        for source in tokenizers.model_files:
            shutil.copy2(source, tok_dir / Path(source).name)
        meta = Path(tokenizers.model_files[0]).parent / "tokenizer.json"
        if meta.exists():
            shutil.copy2(meta, tok_dir / "tokenizer.json")


def open_run(
    client, params: Params, arch: str, params_file: Path, paths: TrainPaths, tokenizers, key: str
) -> tuple[str, str, Path | None]:
    """Rank 0: continue the killed run of this configuration, or open a new run with lineage.

    Returns (run id, parent run id, checkpoint to resume from).
    """
    ckpt_dir = paths.checkpoints / arch
    resume_from = prepare_checkpoint_dir(ckpt_dir, key, client)
    exp_id = runs.experiment_id(client, params.experiment_name)
    pipeline_key = runs.pipeline_key(params_file, params.data.dataset)
    parent_id = runs.parent_run_id(client, exp_id, pipeline_key, f"pipeline-{pipeline_key[:8]}")
    if resume_from is not None:
        run_id = json.loads((ckpt_dir / "fingerprint.json").read_text())["run_id"]
        log.info(
            "resuming %s from %s, %s (MLflow run %s)",
            arch, resume_from, checkpoint_position(resume_from), run_id,
        )  # fmt: skip
        client.update_run(run_id, status="RUNNING")
        return run_id, parent_id, resume_from
    tags = {
        "mlflow.parentRunId": parent_id,
        runs.ARCH_TAG: arch,
        **runs.lineage_tags(params.data.dataset),
    }
    run_id = client.create_run(exp_id, run_name=arch, tags=tags).info.run_id
    atomic_write_json(ckpt_dir / "fingerprint.json", {"fingerprint": key, "run_id": run_id})
    runs.log_params(client, run_id, params.flat() | {"arch": arch})
    manifest = json.loads((paths.prepared / "manifest.json").read_text())
    runs.log_dataset_inputs(client, run_id, manifest)
    for model_file in tokenizers.model_files:
        client.log_artifact(run_id, str(model_file), artifact_path="tokenizer")
    return run_id, parent_id, None


def build_trainer(
    params: Params, arch: str, paths: TrainPaths, run_id: str | None, accumulate: int
) -> tuple[pl.Trainer, TrainingMonitor, ModelCheckpoint]:
    optim = params.arch(arch).optim
    monitor = TrainingMonitor(paths.logs / arch / "history.csv", params.train.log_every_n_steps)
    # Best by validation BLEU; a separate callback rewrites last.ckpt after every validation
    # (Lightning's save_last only refreshes "last" when the best checkpoint changed).
    checkpoint = ModelCheckpoint(
        dirpath=paths.checkpoints / arch,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    last = ModelCheckpoint(
        dirpath=paths.checkpoints / arch,
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )
    callbacks: list[pl.Callback] = [monitor, checkpoint, last]
    if params.train.checkpoint_every_n_steps:  # also refresh last.ckpt inside long epochs
        callbacks.append(
            InEpochCheckpoint(
                dirpath=paths.checkpoints / arch,
                filename="last",
                every_n_train_steps=params.train.checkpoint_every_n_steps,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    if params.train.checkpoint_average > 1:  # the last N epochs' weights, for averaging
        folder = paths.checkpoints / arch / "epochs"
        callbacks.append(epoch_checkpoint_callback(folder, params.train.checkpoint_average))
    if params.train.cuda_graphs and not params.train.compile:
        callbacks.append(CudaGraphsCallback())  # acts on one CUDA device only
    if params.train.low_precision_weights and not params.train.compile:
        callbacks.append(LowPrecisionWeightsCallback())  # bf16-mixed, one device, no CUDA graphs
    if params.train.max_time_s:  # a wall-clock budget, checked at the end of every epoch
        callbacks.append(
            Timer(duration=timedelta(seconds=params.train.max_time_s), interval="epoch")
        )
    if optim.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(
                MONITOR,
                mode="max",
                patience=optim.early_stopping_patience,
                check_on_train_epoch_end=False,
            )
        )
    logger = MLFlowLogger(
        experiment_name=params.experiment_name,
        tracking_uri=runs.tracking_uri(),
        run_id=run_id,
    )
    trainer = pl.Trainer(
        accelerator=params.train.accelerator,
        devices=params.train.devices,
        num_nodes=params.train.num_nodes,
        strategy=params.train.strategy,
        precision=params.train.precision,
        max_epochs=optim.max_epochs,
        max_steps=optim.max_steps,
        gradient_clip_val=params.train.gradient_clip_val or None,
        accumulate_grad_batches=accumulate,
        deterministic=params.train.deterministic,
        log_every_n_steps=params.train.log_every_n_steps,
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    return trainer, monitor, checkpoint


def train(arch: str, params: Params, paths: TrainPaths, params_file: Path) -> dict[str, Any]:
    """Train `arch`, export the best checkpoint and return the training summary (rank 0)."""
    pl.seed_everything(params.seed, workers=True)
    use_cudnn_attention(params.train.cudnn_attention)
    arch_params = params.arch(arch)
    tokenizers = Tokenizers.load(paths.tokenized)
    ckpt_dir = paths.checkpoints / arch
    key = fingerprint(params, arch, paths.tokenized)
    client = runs.connect()  # fails fast, before any training, if the server does not answer

    is_zero = launch_rank() == 0
    run_id = parent_id = None
    if is_zero:
        run_id, parent_id, resume_from = open_run(
            client, params, arch, params_file, paths, tokenizers, key
        )
    else:  # rank 0 has settled the folder before launching the other ranks
        resume_from = resumable_checkpoint(ckpt_dir, key)

    module = TranslationModule(
        model_config=arch_params.model,
        optim=asdict(arch_params.optim),
        src_vocab_size=tokenizers.src_vocab_size,
        tgt_vocab_size=tokenizers.tgt_vocab_size,
        val_max_len_margin=params.train.val_max_len_margin,
        check_finite_every=params.train.log_every_n_steps if torch.cuda.is_available() else 1,
        seed=params.seed,
    )
    module.detokenize = tokenizers.decode_tgt
    module.val_references = read_references(paths.prepared, params.data.validation_split)
    module.extra_checkpoint_state = {"run_id": run_id}
    init_from = os.environ.get(INIT_FROM_ENV)
    if init_from and resume_from is None:  # a resumed run has its weights in the checkpoint
        start = warm_start(module.model, Path(init_from), tokenizers, arch_params.model)
        log.info("%s: %s", arch, start)
        if is_zero:
            client.set_tag(run_id, "train.start", start)
    if params.train.compile:
        # In place (nn.Module.compile): state-dict keys stay unprefixed, so export, resume and
        # checkpoint averaging see the same names as without compile.
        module.model.compile()

    accumulate = accumulation(params.train, world_size(params))
    trainer, monitor, checkpoint = build_trainer(params, arch, paths, run_id, accumulate)
    global_batch = params.train.batch_tokens * trainer.world_size * accumulate
    if is_zero and resume_from is None:
        client.log_param(run_id, "train.global_batch_tokens", global_batch)
        client.log_param(run_id, "train.world_size", trainer.world_size)
        client.log_param(run_id, "model.num_parameters", module.model.num_parameters())
    data = TranslationDataModule(
        paths.tokenized,
        params.data.train_split,
        params.data.validation_split,
        batch_tokens=params.train.batch_tokens,
        seed=params.seed,
        accumulate=accumulate,
        num_workers=params.train.num_workers,
    )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except DivergenceError as err:
        raise PipelineError(
            f"{arch}: {err}; the last good checkpoint is kept in {ckpt_dir}"
        ) from err
    if not trainer.is_global_zero:
        return {}
    if monitor.rows:  # a run resumed at its very end validates no more: DVC removed the curve
        write_history(paths.logs / arch / "history.csv", monitor.rows)

    best = checkpoint.best_model_path or str(ckpt_dir / "last.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    averaging = None
    if params.train.checkpoint_average > 1:
        averaging = apply_checkpoint_average(
            module,
            state["state_dict"],
            ckpt_dir / "epochs",
            params.train.checkpoint_average,
            paths.tokenized,
            params.data.validation_split,
            params.train.batch_tokens,
        )
    export_model(module, arch, params, tokenizers, paths.artifacts / arch)
    best_row = max(monitor.rows, key=lambda r: r.get("val_bleu", float("-inf")), default={})
    rates = monitor.tokens_per_sec
    summary = {
        "arch": arch,
        "run_id": run_id,
        "parent_run_id": parent_id,
        "experiment": params.experiment_name,
        "num_parameters": module.model.num_parameters(),
        "best_epoch": best_row.get("epoch"),
        "best_val_bleu": best_row.get("val_bleu"),
        "epochs": len(monitor.rows),
        "train_seconds": round(monitor.train_seconds, 1),
        "tokens_per_sec": round(sum(rates) / max(len(rates), 1), 1),
        "global_batch_tokens": global_batch,
        "world_size": trainer.world_size,
        "device": runs.lineage_tags(params.data.dataset)["device"],
        "checkpoint_average": averaging.as_dict() if averaging else None,
    }
    atomic_write_json(paths.artifacts / arch / "training.json", summary)
    client.log_metric(run_id, "train/total_seconds", summary["train_seconds"])
    client.log_artifact(run_id, str(paths.logs / arch / "history.csv"), artifact_path="curves")
    return summary


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.train",
        description="Train one architecture from params.yaml (DVC stage train@<arch>). "
        "Resumes from checkpoints/<arch>/last.ckpt after a killed run of the same configuration.",
    )
    parser.add_argument("--arch", required=True, help="an entry of `models` in params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    if args.arch not in params.models:
        raise PipelineError(
            f"--arch {args.arch}: not in params models ({', '.join(params.models)})"
        )
    summary = train(args.arch, params, TrainPaths(), args.params)
    if summary:
        log.info("trained %s: %s", args.arch, json.dumps(summary))


if __name__ == "__main__":
    main()
