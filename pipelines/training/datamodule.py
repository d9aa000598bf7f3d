"""The LightningDataModule: token-bucket loaders built once the process group exists.

Loaders are created in the ``*_dataloader`` hooks, which Lightning calls after distributed
initialisation, so the sampler shards by the real world size and rank (on one machine or many).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from pipelines.data.tokenized import TokenizedSplit, load_split
from pipelines.training.batching import TokenBucketBatchSampler, TranslationDataset, collate


class ResumableDataLoader(DataLoader):
    """The training loader, with a position Lightning keeps in checkpoints.

    Lightning saves ``state_dict()`` of a loader that has one and hands it back to
    ``load_state_dict()`` before iterating again, so a run resumed from a checkpoint saved inside
    an epoch continues that epoch's plan at the next optimizer step instead of starting it over.
    Batches are counted as this (main-process) iterator hands them out, which is as the training
    loop consumes them: Lightning does not prefetch from a loader of known length.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handed_out = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: TokenBucketBatchSampler = self.batch_sampler  # type: ignore[assignment]
        self._handed_out = sampler.start_step * sampler.accumulate
        return self._counted(super().__iter__())  # created now, as DataLoader does

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._handed_out += 1
            yield batch

    def __len__(self) -> int:
        # The whole epoch, also when resuming inside it: Lightning counts the batches already
        # done towards it (as for torchdata's StatefulDataLoader).
        sampler: TokenBucketBatchSampler = self.batch_sampler  # type: ignore[assignment]
        return sampler.steps_per_epoch * sampler.accumulate

    def state_dict(self) -> dict[str, Any]:
        sampler: TokenBucketBatchSampler = self.batch_sampler  # type: ignore[assignment]
        return {
            "epoch": sampler.epoch,
            "seed": sampler.seed,
            "start_step": self._handed_out // sampler.accumulate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)  # type: ignore[union-attr]


def token_bucket_loader(
    corpus: TokenizedSplit,
    batch_tokens: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    accumulate: int = 1,
    num_workers: int = 0,
    resumable: bool = False,
    length_multiple: int = 1,
) -> DataLoader:
    """Padded batches of `corpus` (a split of the tokenizer stage, ``load_split``), by the
    token-bucket sampler.

    With `resumable`, the loader keeps its position in Lightning checkpoints (the training loader).
    `length_multiple`: lengths padded up to a multiple of it (see TokenBucketBatchSampler).
    """
    sampler = TokenBucketBatchSampler(
        corpus.src_lengths,
        corpus.tgt_lengths,
        max_tokens=batch_tokens,
        shuffle=shuffle,
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
        accumulate=accumulate,
        length_multiple=length_multiple,
    )
    return (ResumableDataLoader if resumable else DataLoader)(
        TranslationDataset(corpus),
        batch_sampler=sampler,
        collate_fn=functools.partial(collate, length_multiple=length_multiple),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


class TranslationDataModule(pl.LightningDataModule):
    """Training (shuffled by seed and epoch; lengths padded to `length_multiple`) and validation
    (fixed order, exact lengths; `val_batch_tokens` per batch, or `batch_tokens`) loaders."""

    def __init__(
        self,
        tokenized: Path,
        train_split: str,
        validation_split: str,
        batch_tokens: int,
        seed: int,
        accumulate: int = 1,
        num_workers: int = 0,
        length_multiple: int = 1,
        val_batch_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.tokenized = Path(tokenized)
        self.splits = {"train": train_split, "validation": validation_split}
        self.batch_tokens = {"train": batch_tokens, "validation": val_batch_tokens or batch_tokens}
        self.seed = seed
        self.accumulate = accumulate
        self.num_workers = num_workers
        self.length_multiple = length_multiple
        self._corpora: dict[str, TokenizedSplit] = {}  # each split read once per data module

    def _corpus(self, role: str) -> TokenizedSplit:
        if role not in self._corpora:
            self._corpora[role] = load_split(self.tokenized, self.splits[role])
        return self._corpora[role]

    def _loader(self, role: str) -> DataLoader:
        training = role == "train"
        return token_bucket_loader(
            self._corpus(role),
            self.batch_tokens[role],
            shuffle=training,
            seed=self.seed,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            accumulate=self.accumulate if training else 1,
            num_workers=self.num_workers,
            resumable=training,
            length_multiple=self.length_multiple if training else 1,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch of this rank's training plan, from a loader of its own:
        asking the Trainer (``estimated_stepping_batches``) would build Lightning's loader before
        a resumed run restores its position, and the run would restart its epoch."""
        sampler: TokenBucketBatchSampler = self._loader("train").batch_sampler  # type: ignore[assignment]
        return sampler.steps_per_epoch

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")
