"""`train.length_multiple`: training batches padded to multiples of m come in a few shapes, cover
every example once within the token budget, and keep the values of the exact padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from models.config import ConfigError, from_dict
from models.vocab import PAD_ID
from pipelines.core.params import TrainParams
from pipelines.data.tokenized import TokenizedSplit
from pipelines.training.batching import TokenBucketBatchSampler, TranslationDataset, collate

MAX_TOKENS = 640


@pytest.fixture(scope="module")
def split() -> TokenizedSplit:
    """2,000 pairs of 1-40 tokens, target lengths loosely following the source's."""
    rng = np.random.default_rng(0)
    src_lengths = rng.integers(1, 41, size=2000)
    tgt_lengths = np.clip(src_lengths + rng.integers(-3, 4, size=2000), 1, 40)
    src = [rng.integers(4, 100, size=n).tolist() for n in src_lengths]
    tgt = [rng.integers(4, 100, size=n).tolist() for n in tgt_lengths]
    return TokenizedSplit.from_ids(src, tgt)


def loader(split: TokenizedSplit, multiple: int, epoch: int = 0) -> DataLoader:
    sampler = TokenBucketBatchSampler(
        split.src_lengths, split.tgt_lengths, MAX_TOKENS, seed=5, length_multiple=multiple
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        TranslationDataset(split),
        batch_sampler=sampler,
        collate_fn=lambda batch: collate(batch, length_multiple=multiple),
    )


def shapes(batches: list[dict[str, torch.Tensor]]) -> set[tuple[int, ...]]:
    return {(*b["src"].shape, b["tgt_in"].shape[1]) for b in batches}


def test_a_multiple_of_one_is_the_exact_plan(split: TokenizedSplit) -> None:
    exact = TokenBucketBatchSampler(split.src_lengths, split.tgt_lengths, MAX_TOKENS, seed=5)
    ones = TokenBucketBatchSampler(
        split.src_lengths, split.tgt_lengths, MAX_TOKENS, seed=5, length_multiple=1
    )
    for epoch in (0, 1):
        exact.set_epoch(epoch)
        ones.set_epoch(epoch)
        assert list(exact) == list(ones)


@pytest.mark.parametrize("multiple", [8, 16])
def test_widths_are_multiples_within_budget_and_every_example_is_seen_once(
    split: TokenizedSplit, multiple: int
) -> None:
    batches = list(loader(split, multiple, epoch=1))
    seen = sorted(i for batch in batches for i in batch["index"].tolist())
    assert seen == list(range(len(split)))
    for batch in batches:
        size, width = batch["src"].shape
        target_width = batch["tgt_in"].shape[1]
        assert width % multiple == 0 and target_width % multiple == 0
        assert size * max(width, target_width) <= MAX_TOKENS
        # No row is padded further than the multiple asks: the longest ends in the last block.
        assert int(batch["src_lengths"].max()) > width - multiple
        assert int(batch["ntokens"]) == int((batch["tgt_out"] != PAD_ID).sum())


def test_the_padding_keeps_the_exact_batch_values(split: TokenizedSplit) -> None:
    for batch in loader(split, 8):
        exact = collate([TranslationDataset(split)[i] for i in batch["index"].tolist()])
        for key in ("src", "tgt_in", "tgt_out"):
            width = exact[key].shape[1]
            assert torch.equal(batch[key][:, :width], exact[key])
            assert (batch[key][:, width:] == PAD_ID).all()
        for key in ("src_lengths", "tgt_lengths", "ntokens"):
            assert torch.equal(batch[key], exact[key])


def test_a_multiple_bounds_the_batch_shapes(split: TokenizedSplit) -> None:
    exact = list(loader(split, 1))
    bucketed = list(loader(split, 8))
    # Lengths up to 41 (with EOS) give 6 widths per side: far fewer shapes than batches.
    assert len(shapes(bucketed)) <= len(shapes(exact)) / 2


def test_bad_multiples_are_refused() -> None:
    with pytest.raises(ValueError, match="length_multiple must be >= 1, got 0"):
        TokenBucketBatchSampler([3, 4], [3, 4], 100, length_multiple=0)
    with pytest.raises(ConfigError, match="train.length_multiple: must be >= 1"):
        from_dict(TrainParams, {"length_multiple": 0}, prefix="train")
