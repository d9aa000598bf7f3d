"""Checkpoint averaging (Vaswani et al. 2017, §6.1: "averaging the last 5 checkpoints"), kept only
when it beats the best single checkpoint on validation BLEU, since averaging can also hurt
(tensor2tensor#317).

The average is deterministic: the state dicts are summed in epoch order in float64 and cast back
to each tensor's dtype, so the same checkpoints always give the same bytes. Checkpoints are read
with ``weights_only=True``: nothing is unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from pipelines.data.tokenized import load_split
from pipelines.training.datamodule import token_bucket_loader
from pipelines.training.validation import ValidationBleu

log = logging.getLogger("nmt.averaging")

EPOCH_PATTERN = re.compile(r"epoch(\d+)\.ckpt$")


def epoch_checkpoint_name(epoch: int) -> str:
    """The file name (without ``.ckpt``) the epoch checkpoints are saved under."""
    return f"epoch{epoch:04d}"


def epoch_checkpoints(folder: Path, count: int) -> list[Path]:
    """The `count` highest-numbered ``epochNNNN.ckpt`` files in `folder`, oldest first (the epoch
    callback keeps only the epochs it picked, last or best, so these are they)."""
    found = []
    for path in Path(folder).glob("epoch*.ckpt"):
        match = EPOCH_PATTERN.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    found.sort()
    return [path for _, path in found[-count:]] if count > 0 else []


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """The model weights of a Lightning checkpoint (its ``state_dict``) or of a bare state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("state_dict", checkpoint)


def average_state_dicts(state_dicts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The element-wise mean of `state_dicts`, which must have the same keys, shapes and dtypes.

    Floating-point tensors are summed in the given order in float64 and cast back; any other
    tensor (an integer counter, say) must be equal in every state dict and is copied.
    """
    if not state_dicts:
        raise ValueError("average_state_dicts: no state dicts to average")
    first = state_dicts[0]
    for index, other in enumerate(state_dicts[1:], start=1):
        if other.keys() != first.keys():
            differing = sorted(set(other) ^ set(first))
            raise ValueError(f"state dict {index} has different keys: {differing[:5]}")
    averaged: dict[str, Tensor] = {}
    for key, reference in first.items():
        tensors = [state[key] for state in state_dicts]
        for tensor in tensors[1:]:
            if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
                raise ValueError(
                    f"{key}: shape/dtype {tuple(tensor.shape)}/{tensor.dtype} differs from "
                    f"{tuple(reference.shape)}/{reference.dtype}"
                )
        if reference.is_floating_point():
            total = torch.zeros(reference.shape, dtype=torch.float64)
            for tensor in tensors:
                total += tensor.detach().to("cpu", torch.float64)
            averaged[key] = (total / len(tensors)).to(reference.dtype)
        else:
            if any(not torch.equal(tensor, reference) for tensor in tensors[1:]):
                raise ValueError(f"{key}: non-floating tensor differs between checkpoints")
            averaged[key] = reference.detach().clone().cpu()
    return averaged


def average_checkpoints(paths: Sequence[Path]) -> dict[str, Tensor]:
    """Load the checkpoints at `paths` (weights only) and average their weights."""
    return average_state_dicts([load_state_dict(path) for path in paths])


def keep_averaged(best_bleu: float, averaged_bleu: float) -> bool:
    """The selection rule: the averaged model replaces the best single one only if it is better.

    Both scores must come from the same procedure on the validation split; a tie keeps the
    single checkpoint (the averaged one is not better, and the single one was actually trained).
    """
    return averaged_bleu > best_bleu


@dataclass
class AveragingResult:
    """What averaging did, for the training summary."""

    checkpoints: list[str]
    best_val_bleu: float
    averaged_val_bleu: float
    kept: str  # "averaged" or "best"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_average(
    model: torch.nn.Module,
    best_state: dict[str, Tensor],
    checkpoint_paths: Sequence[Path],
    score: Callable[[torch.nn.Module], float],
    prefix: str = "model.",
) -> AveragingResult:
    """Score the best checkpoint and the average of `checkpoint_paths` with `score`; leave the
    winner's weights loaded in `model`.

    `best_state` and the checkpoints hold a LightningModule's state dict, whose keys start with
    `prefix`; `model` is the bare network they are loaded into.
    """

    def strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

    best_weights = strip(best_state)
    averaged_weights = strip(average_checkpoints(checkpoint_paths))
    model.load_state_dict(best_weights)
    best_bleu = score(model)
    model.load_state_dict(averaged_weights)
    averaged_bleu = score(model)
    kept = "averaged" if keep_averaged(best_bleu, averaged_bleu) else "best"
    if kept == "best":
        model.load_state_dict(best_weights)
    log.info(
        "checkpoint averaging of %d checkpoints: validation BLEU %.2f (best single %.2f): kept %s",
        len(checkpoint_paths),
        averaged_bleu,
        best_bleu,
        kept,
    )
    return AveragingResult(
        checkpoints=[Path(p).name for p in checkpoint_paths],
        best_val_bleu=round(best_bleu, 4),
        averaged_val_bleu=round(averaged_bleu, 4),
        kept=kept,
    )


class EpochWeightsCheckpoint(ModelCheckpoint):
    """The epoch checkpoints for averaging. A class of its own: Lightning keys a callback's saved
    state by class and monitor, and in `best` mode this one monitors what the best-checkpoint
    callback does (two ModelCheckpoints with one key are refused)."""


def epoch_checkpoint_callback(folder: Path, count: int, of: str = "last", monitor: str = ""):
    """A ModelCheckpoint keeping the weights of `count` epochs (after validation): the last ones
    (`of="last"`), or those with the highest `monitor` value (`of="best"`: with early stopping
    the last epochs lie past the peak, so joeynmt and fairseq users average the best ones)."""
    if of not in ("last", "best"):
        raise ValueError(f"epoch_checkpoint_callback: of must be 'last' or 'best', not {of!r}")
    if of == "best" and not monitor:
        raise ValueError("epoch_checkpoint_callback: of='best' needs the metric to monitor")
    return EpochWeightsCheckpoint(
        dirpath=folder,
        filename=epoch_checkpoint_name(0).replace("0000", "{epoch:04d}"),
        monitor="epoch" if of == "last" else monitor,
        mode="max",
        save_top_k=count,
        save_weights_only=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )


def apply_checkpoint_average(
    model: torch.nn.Module,
    validation_bleu: ValidationBleu,
    best_state: dict[str, Tensor],
    folder: Path,
    count: int,
    tokenized: Path,
    validation_split: str,
    batch_tokens: int,
) -> AveragingResult | None:
    """Average the `count` epoch checkpoints kept in `folder` into `model` if that beats
    `best_state` on validation BLEU (greedy, the whole split on this process, fp32).

    Returns None when fewer than two checkpoints exist.
    """
    paths = epoch_checkpoints(folder, count)
    if len(paths) < 2:
        log.info("checkpoint averaging skipped: %d epoch checkpoint(s) in %s", len(paths), folder)
        return None
    loader = token_bucket_loader(
        load_split(tokenized, validation_split), batch_tokens, shuffle=False
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)

    def score(candidate: torch.nn.Module) -> float:
        outputs = []
        for batch in loader:
            src, indices = batch["src"].to(device), batch["index"].tolist()
            outputs.extend(validation_bleu.decode(candidate, src, indices))
        return validation_bleu.score(outputs)

    try:
        return select_average(model, best_state, paths, score)
    finally:
        model.to("cpu")
