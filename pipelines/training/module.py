"""The LightningModule: label-smoothed loss, AdamW with warmup, validation loss/perplexity/BLEU.

The architecture itself is a plain ``models`` module; this class owns only the training concerns
(loss, optimiser, schedule, metrics, checkpoint extras), as in lightning-hydra-template.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from models import PAD_ID, build_model
from pipelines.training.cuda_graphs import StepGraphs
from pipelines.training.fused_loss import fused_token_mean_loss
from pipelines.training.loss import label_smoothed_nll, token_mean_loss
from pipelines.training.optim import build_optimizer, build_scheduler
from pipelines.training.validation import IndexedTokens, ValidationBleu


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


class TranslationModule(pl.LightningModule):
    """Trains any ``models`` architecture; validation BLEU is greedy-decoded on the whole split."""

    def __init__(
        self,
        model_config: dict[str, Any],
        optim: dict[str, Any],
        src_vocab_size: int,
        tgt_vocab_size: int,
        check_finite_every: int = 1,
        seed: int = 0,
        validation_bleu: ValidationBleu | None = None,
        checkpoint_extras: dict[str, Any] | None = None,
        fused_loss: bool = False,
        budget_steps: int | None = None,
    ) -> None:
        """`validation_bleu` scores every validation epoch (without it, only loss and perplexity);
        `checkpoint_extras` are stored in every checkpoint under ``nmt`` (the MLflow run id);
        `fused_loss` computes the training loss with the output projection, without the logits
        (`pipelines.training.fused_loss`); `budget_steps`, the budget when it counts optimizer
        steps, ends the ``linear`` schedule (otherwise the Trainer's epochs of the data module's
        plan do)."""
        super().__init__()
        self.save_hyperparameters(ignore=["validation_bleu", "checkpoint_extras"])
        self.model = build_model(model_config, src_vocab_size, tgt_vocab_size)
        self.fused_loss = fused_loss
        self.optim = optim
        self.validation_bleu = validation_bleu
        self.checkpoint_extras = dict(checkpoint_extras or {})
        self._resume_rng: list[dict[str, Tensor]] | None = None
        self._val_outputs: list[IndexedTokens] = []
        self._val_sums: Tensor | None = None
        # Set by CudaGraphsCallback during fit on CUDA devices (under DDP too).
        self.step_graphs: StepGraphs | None = None

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.model(src, tgt_in)

    def training_loss(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        """Label-smoothed loss per target token, and the plain NLL per token (detached)."""
        smoothing = self.optim["label_smoothing"]
        if self.fused_loss:
            return fused_token_mean_loss(self.model, src, tgt_in, tgt_out, smoothing)
        return token_mean_loss(self.model(src, tgt_in), tgt_out, smoothing)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss_function = self.step_graphs or self.training_loss
        loss, nll = loss_function(batch["src"], batch["tgt_in"], batch["tgt_out"])
        if self.global_step % self.hparams.check_finite_every == 0 and not torch.isfinite(loss):
            raise DivergenceError(
                f"training loss is {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); lower the learning rate or clip gradients "
                "(train.gradient_clip_val)"
            )
        batch_size = batch["src"].size(0)
        # Not prog_bar: Lightning would turn it into a number (a sync) every step; the train
        # stage's bar reads it every log_every_n_steps (pipelines.training.progress).
        self.log("train/loss", loss, on_step=True, batch_size=batch_size)
        self.log("train/nll", nll, on_step=True, batch_size=batch_size)
        return loss

    def optimizer_zero_grad(
        self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer
    ) -> None:
        # CUDA graphs add into the gradient tensors they were captured with.
        optimizer.zero_grad(set_to_none=self.step_graphs is None)

    def on_validation_model_zero_grad(self) -> None:
        # Lightning frees the gradients before validating; CUDA graphs keep theirs, zeroed.
        self.zero_grad(set_to_none=self.step_graphs is None)

    def on_train_epoch_start(self) -> None:
        # The RNG state (dropout) is a function of (seed, epoch): a run resumed at an epoch
        # boundary replays exactly what the uninterrupted run did, on any number of devices.
        torch.manual_seed(
            self.hparams.seed * 100_003 + self.current_epoch * 1_009 + self.global_rank
        )
        # Field note: set_epoch is not reliably called on batch samplers; do it explicitly.
        sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []
        self._val_sums = torch.zeros(2, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self.model(batch["src"], batch["tgt_in"])
        _, nll = label_smoothed_nll(logits, batch["tgt_out"], 0.0)
        ntokens = (batch["tgt_out"] != PAD_ID).sum()
        self._val_sums += torch.stack([nll.double(), ntokens.double()])
        if self.validation_bleu is not None:
            indices = batch["index"].tolist()
            self._val_outputs.extend(self.validation_bleu.decode(self.model, batch["src"], indices))

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        val_loss = (sums[0] / sums[1].clamp(min=1)).float()
        self.log("val/loss", val_loss, sync_dist=False)
        self.log("val/ppl", torch.exp(val_loss.clamp(max=50)), sync_dist=False)
        if self.validation_bleu is None:
            return
        # Every example exactly once: the sampler never duplicates, so no padding to strip.
        bleu = self.validation_bleu.score(self._gather_validation_outputs())
        self.log("val/bleu", torch.tensor(bleu, device=self.device), prog_bar=True)

    def _gather_validation_outputs(self) -> list[IndexedTokens]:
        if self.trainer.world_size == 1:
            return self._val_outputs
        gathered: list[list[IndexedTokens]] = [None] * self.trainer.world_size  # type: ignore[list-item]
        torch.distributed.all_gather_object(gathered, self._val_outputs)
        return [item for shard in gathered for item in shard]

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning refuses to clip for an optimizer that unscales internally (fused AdamW) even
        # under bf16, where nothing is scaled. Without a grad scaler, clip the norm here (the
        # same torch call Lightning makes; foreach kernels, no host sync).
        norm = gradient_clip_algorithm in (None, "norm")
        if (
            gradient_clip_val
            and norm
            and getattr(self.trainer.precision_plugin, "scaler", None) is None
        ):
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val, foreach=True)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(
            self.model,
            lr=self.optim["lr"],
            betas=self.optim["betas"],
            weight_decay=self.optim["weight_decay"],
            fused=self.device.type == "cuda",
        )
        scheduler = build_scheduler(
            optimizer,
            self.optim["schedule"],
            self.optim["warmup_steps"],
            total_steps=self.planned_steps() if self.optim["schedule"] == "linear" else None,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def planned_steps(self) -> int:
        """The optimizer steps the budget allows: its steps, or its epochs times the steps of an
        epoch of the data module's plan."""
        if self.hparams.budget_steps:
            return self.hparams.budget_steps
        return self.trainer.max_epochs * self.trainer.datamodule.steps_per_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nmt"] = dict(self.checkpoint_extras)
        if self.trainer.training:  # inside an epoch: a resume continues every random stream
            checkpoint["nmt"]["rng"] = self._rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        nmt = dict(checkpoint.get("nmt", {}))
        self._resume_rng = nmt.pop("rng", None)
        self.checkpoint_extras = nmt

    def on_train_start(self) -> None:
        # Resumed from a checkpoint saved inside an epoch: Lightning skips on_train_epoch_start
        # and the loader resumes at the saved step, so continue each rank's RNG where it was.
        rng, self._resume_rng = self._resume_rng, None
        if rng is not None:
            state = rng[self.global_rank]
            torch.set_rng_state(state["cpu"])
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], self.device)

    def _rng_states(self) -> list[dict[str, Tensor]]:
        """Every rank's RNG states, by rank (Lightning builds the checkpoint on every rank)."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.trainer.world_size == 1:
            return [state]
        states: list[dict[str, Tensor]] = [None] * self.trainer.world_size  # type: ignore[list-item]
        torch.distributed.all_gather_object(states, state)
        return states
