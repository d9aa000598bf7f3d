"""The LightningDataModule: token-bucket loaders built once the process group exists.

Loaders are created in the ``*_dataloader`` hooks, which Lightning calls after distributed
initialisation, so the sampler shards by the real world size and rank (on one machine or many).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from pipelines.batching import TokenBucketBatchSampler, TranslationDataset, collate
from pipelines.tokenizer import load_split


class TranslationDataModule(pl.LightningDataModule):
    """Training (shuffled by seed and epoch) and validation (fixed order) loaders."""

    def __init__(
        self,
        tokenized: Path,
        train_split: str,
        validation_split: str,
        batch_tokens: int,
        seed: int,
        accumulate: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.tokenized = Path(tokenized)
        self.splits = {"train": train_split, "validation": validation_split}
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.accumulate = accumulate
        self.num_workers = num_workers

    def _loader(self, role: str) -> DataLoader:
        corpus = load_split(self.tokenized, self.splits[role])
        training = role == "train"
        sampler = TokenBucketBatchSampler(
            corpus.src_lengths,
            corpus.tgt_lengths,
            max_tokens=self.batch_tokens,
            shuffle=training,
            seed=self.seed,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            accumulate=self.accumulate if training else 1,
        )
        return DataLoader(
            TranslationDataset(corpus),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")
