"""The LightningModule: label-smoothed loss, AdamW with warmup, validation loss/perplexity/BLEU.

The architecture itself is a plain ``models`` module; this class owns only the training concerns
(loss, optimiser, schedule, metrics, checkpoint extras), as in lightning-hydra-template.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import sacrebleu
import torch
from torch import Tensor

from models import PAD_ID, build_model
from pipelines.core.decoding import greedy_search
from pipelines.training.cuda_graphs import StepGraphs
from pipelines.training.loss import label_smoothed_nll, token_mean_loss
from pipelines.training.optim import build_optimizer, build_scheduler


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
        val_max_len_margin: int = 20,
        check_finite_every: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_config, src_vocab_size, tgt_vocab_size)
        self.optim = optim
        # Set by the train stage: detokenizer and references for validation BLEU (not hparams).
        self.detokenize: Callable[[list[list[int]]], list[str]] | None = None
        self.val_references: list[str] = []
        self.extra_checkpoint_state: dict[str, Any] = {}
        self._resume_rng: list[dict[str, Tensor]] | None = None
        self._val_outputs: list[tuple[int, list[int]]] = []
        self._val_sums: Tensor | None = None
        # Set by CudaGraphsCallback during fit on one CUDA device.
        self.step_graphs: StepGraphs | None = None

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.model(src, tgt_in)

    def training_loss(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        """Label-smoothed loss per target token, and the plain NLL per token (detached)."""
        logits = self.model(src, tgt_in)
        return token_mean_loss(logits, tgt_out, self.optim["label_smoothing"])

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
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch_size)
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
        if self.detokenize is not None:
            hypotheses = greedy_search(
                self.model, batch["src"], max_len_margin=self.hparams.val_max_len_margin
            )
            indices = batch["index"].tolist()
            self._val_outputs.extend(zip(indices, (h.tokens for h in hypotheses), strict=True))

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        val_loss = (sums[0] / sums[1].clamp(min=1)).float()
        self.log("val/loss", val_loss, sync_dist=False)
        self.log("val/ppl", torch.exp(val_loss.clamp(max=50)), sync_dist=False)
        if self.detokenize is None:
            return
        outputs = self._gather_validation_outputs()
        # Every example exactly once: the sampler never duplicates, so no padding to strip.
        hypotheses = self.detokenize([tokens for _, tokens in sorted(outputs)])
        references = [self.val_references[i] for i, _ in sorted(outputs)]
        bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score if hypotheses else 0.0
        self.log("val/bleu", torch.tensor(bleu, device=self.device), prog_bar=True)

    def _gather_validation_outputs(self) -> list[tuple[int, list[int]]]:
        if self.trainer.world_size == 1:
            return self._val_outputs
        gathered: list[list[tuple[int, list[int]]]] = [None] * self.trainer.world_size  # type: ignore[list-item]
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
        scheduler = build_scheduler(optimizer, self.optim["schedule"], self.optim["warmup_steps"])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nmt"] = dict(self.extra_checkpoint_state)
        if self.trainer.training:  # inside an epoch: a resume continues every random stream
            checkpoint["nmt"]["rng"] = self._rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        nmt = dict(checkpoint.get("nmt", {}))
        self._resume_rng = nmt.pop("rng", None)
        self.extra_checkpoint_state = nmt

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
