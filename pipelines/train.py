"""DVC stage `train@<arch>`: train one architecture with Lightning, tracked in MLflow.

Resumes from ``checkpoints/<arch>/last.ckpt`` when a previous run of the same configuration was
killed, continuing its MLflow run. Writes the exported model to ``artifacts/<arch>/`` and the
validation curve to ``logs/<arch>/history.csv``.
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
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader

from models import PAD_ID
from pipelines import tracking
from pipelines.atomic import atomic_path, atomic_write_json, atomic_write_text
from pipelines.batching import TokenBucketBatchSampler, TranslationDataset, collate
from pipelines.errors import PipelineError, run_main, setup_logging
from pipelines.lit_module import DivergenceError, TranslationModule
from pipelines.params import Params, load_params
from pipelines.tokenizer import load_split
from pipelines.vocab import Tokenizers

log = logging.getLogger("nmt.train")

MONITOR = "val/bleu"


@dataclass
class TrainPaths:
    """Where the stage reads and writes; defaults match dvc.yaml."""

    prepared: Path = Path("data/prepared")
    tokenized: Path = Path("data/tokenized")
    checkpoints: Path = Path("checkpoints")
    artifacts: Path = Path("artifacts")
    logs: Path = Path("logs")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file, fsync, then rename: a kill never leaves half a file."""

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
        self.train_seconds += time.perf_counter() - self._epoch_start

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_seconds": round(self.train_seconds + time.perf_counter() - self._epoch_start, 2),
        }
        for key in ("val/loss", "val/ppl", "val/bleu"):
            if key in metrics:
                row[key.replace("/", "_")] = round(float(metrics[key]), 4)
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**30
            module.log("train/peak_gpu_memory_gib", peak)
            row["peak_gpu_memory_gib"] = round(peak, 3)
        self.rows.append(row)
        if trainer.is_global_zero:
            write_history(self.history_file, self.rows)

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


def fingerprint(params: Params, arch: str, tokenized: Path) -> str:
    """Identifies a training configuration: a checkpoint is resumed only under the same one."""
    state = {
        "seed": params.seed,
        "arch": asdict(params.arch(arch)),
        "train": asdict(params.train),
        "tokenized": sorted(
            (p.name, p.stat().st_size) for p in tokenized.iterdir() if p.is_file()
        ),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def resolve_world_size(params: Params) -> int:
    devices = params.train.devices
    if devices == "auto":
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return int(devices) * params.train.num_nodes


def build_loaders(
    params: Params, paths: TrainPaths, world_size: int
) -> tuple[DataLoader, DataLoader, int]:
    """Token-bucket loaders, sharded per rank by the sampler itself (not by Lightning)."""
    data = params.data
    batch_tokens = params.train.batch_tokens
    if params.train.keep_global_batch:
        batch_tokens = max(1, batch_tokens // world_size)
    loaders = []
    for split, shuffle in ((data.train_split, True), (data.validation_split, False)):
        corpus = load_split(paths.tokenized, split)
        sampler = TokenBucketBatchSampler(
            corpus.src_lengths,
            corpus.tgt_lengths,
            max_tokens=batch_tokens,
            shuffle=shuffle,
            seed=params.seed,
            num_replicas=None,
            rank=None,
        )
        loaders.append(
            DataLoader(
                TranslationDataset(corpus),
                batch_sampler=sampler,
                collate_fn=collate,
                num_workers=params.train.num_workers,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=params.train.num_workers > 0,
            )
        )
    return loaders[0], loaders[1], batch_tokens


def read_references(prepared: Path, split: str) -> list[str]:
    with open(prepared / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["tgt"] for line in handle]


def prepare_checkpoint_dir(ckpt_dir: Path, key: str, client) -> Path | None:
    """Return last.ckpt to resume from, or wipe a stale folder left by another configuration."""
    marker = ckpt_dir / "fingerprint.json"
    last = ckpt_dir / "last.ckpt"
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("fingerprint") == key and last.exists():
            return last
        if saved.get("run_id"):
            tracking.finish_stale_run(client, saved["run_id"], "superseded by a new configuration")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return None


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


def train(arch: str, params: Params, paths: TrainPaths, params_file: Path) -> dict[str, Any]:
    """Train `arch`, export the best checkpoint and return the training summary."""
    pl.seed_everything(params.seed, workers=True)
    arch_params = params.arch(arch)
    tokenizers = Tokenizers.load(paths.tokenized)
    world_size = resolve_world_size(params)
    is_zero = rank_zero_only.rank == 0
    ckpt_dir = paths.checkpoints / arch
    key = fingerprint(params, arch, paths.tokenized)

    client = tracking.connect()  # fails fast if a tracking server does not answer
    resume_from, run_id, parent_id = None, None, None
    if is_zero:
        resume_from = prepare_checkpoint_dir(ckpt_dir, key, client)
        exp_id = tracking.experiment_id(client, params.experiment_name)
        pipeline_key = tracking.pipeline_key(params_file, params.data.dataset)
        parent_id = tracking.parent_run_id(client, exp_id, pipeline_key, f"pipeline-{pipeline_key[:8]}")
        if resume_from is not None:
            run_id = json.loads((ckpt_dir / "fingerprint.json").read_text())["run_id"]
            log.info("resuming %s from %s (MLflow run %s)", arch, resume_from, run_id)
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                exp_id,
                run_name=arch,
                tags={
                    "mlflow.parentRunId": parent_id,
                    tracking.ARCH_TAG: arch,
                    tracking.PARENT_KEY_TAG + ".parent": pipeline_key,
                    **tracking.lineage_tags(params.data.dataset),
                },
            )
            run_id = run.info.run_id
            atomic_write_json(ckpt_dir / "fingerprint.json", {"fingerprint": key, "run_id": run_id})
            tracking.log_params(client, run_id, params.flat() | {"arch": arch})
            manifest = json.loads((paths.prepared / "manifest.json").read_text())
            tracking.log_dataset_inputs(client, run_id, manifest)
            for model_file in tokenizers.model_files:
                client.log_artifact(run_id, str(model_file), artifact_path="tokenizer")

    module = TranslationModule(
        model_config=arch_params.model,
        optim=asdict(arch_params.optim),
        src_vocab_size=tokenizers.src_vocab_size,
        tgt_vocab_size=tokenizers.tgt_vocab_size,
        val_max_len_margin=params.train.val_max_len_margin,
        check_finite_every=1 if not torch.cuda.is_available() else params.train.log_every_n_steps,
    )
    module.detokenize = tokenizers.decode_tgt
    module.val_references = read_references(paths.prepared, params.data.validation_split)
    module.extra_checkpoint_state = {"run_id": run_id}
    if params.train.compile:
        module.model = torch.compile(module.model)

    train_loader, val_loader, batch_tokens = build_loaders(params, paths, world_size)
    monitor = TrainingMonitor(paths.logs / arch / "history.csv", params.train.log_every_n_steps)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    callbacks = [monitor, checkpoint]
    if arch_params.optim.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(
                MONITOR,
                mode="max",
                patience=arch_params.optim.early_stopping_patience,
                check_on_train_epoch_end=False,
            )
        )
    logger = MLFlowLogger(
        experiment_name=params.experiment_name,
        tracking_uri=tracking.tracking_uri(),
        run_id=run_id,
    )
    trainer = pl.Trainer(
        accelerator=params.train.accelerator,
        devices=params.train.devices,
        num_nodes=params.train.num_nodes,
        strategy=params.train.strategy,
        precision=params.train.precision,
        max_epochs=arch_params.optim.max_epochs,
        max_steps=arch_params.optim.max_steps,
        gradient_clip_val=params.train.gradient_clip_val or None,
        accumulate_grad_batches=params.train.accumulate_grad_batches,
        deterministic=params.train.deterministic,
        log_every_n_steps=params.train.log_every_n_steps,
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_model_summary=is_zero,
    )
    global_batch = batch_tokens * trainer.world_size * params.train.accumulate_grad_batches
    if is_zero and resume_from is None:
        client.log_param(run_id, "train.global_batch_tokens", global_batch)
        client.log_param(run_id, "model.num_parameters", module.model.num_parameters())
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from, weights_only=True)
    except DivergenceError as err:
        raise PipelineError(f"{arch}: {err}; the last good checkpoint is kept in {ckpt_dir}") from err
    if not trainer.is_global_zero:
        return {}

    best = checkpoint.best_model_path or str(ckpt_dir / "last.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    export_model(module, arch, params, tokenizers, paths.artifacts / arch)
    best_row = max(monitor.rows, key=lambda r: r.get("val_bleu", float("-inf")), default={})
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
        "tokens_per_sec": round(
            sum(monitor.tokens_per_sec) / max(len(monitor.tokens_per_sec), 1), 1
        ),
        "global_batch_tokens": global_batch,
        "device": tracking.lineage_tags(params.data.dataset)["device"],
    }
    atomic_write_json(paths.artifacts / arch / "training.json", summary)
    client.log_metric(run_id, "train/total_seconds", summary["train_seconds"])
    client.log_artifact(run_id, str(paths.logs / arch / "history.csv"), artifact_path="curves")
    return summary


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train",
        description="Train one architecture from params.yaml (DVC stage train@<arch>). "
        "Resumes from checkpoints/<arch>/last.ckpt after a killed run of the same configuration.",
    )
    parser.add_argument("--arch", required=True, help="an entry of `models` in params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    if args.arch not in params.models:
        raise PipelineError(f"--arch {args.arch}: not in params models ({', '.join(params.models)})")
    summary = train(args.arch, params, TrainPaths(), args.params)
    if summary:
        log.info("trained %s: %s", args.arch, json.dumps(summary))


if __name__ == "__main__":
    main()
