"""Token-bucket batching: sharding invariants, determinism, budget, padding, and the collate."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from models.vocab import BOS_ID, EOS_ID, PAD_ID
from pipelines.core.errors import PipelineError
from pipelines.data.tokenized import TokenizedSplit, load_split
from pipelines.training.batching import (
    TokenBucketBatchSampler,
    TranslationDataset,
    batch_stats,
    collate,
)

BUDGETS = [64, 150, 256, 333, 1000]


@pytest.fixture(scope="module")
def train_split(tokenized_tiny: Path) -> TokenizedSplit:
    return load_split(tokenized_tiny, "train")


def samplers(split: TokenizedSplit, replicas: int, max_tokens: int, **kwargs):
    return [
        TokenBucketBatchSampler(
            split.src_lengths,
            split.tgt_lengths,
            max_tokens,
            num_replicas=replicas,
            rank=r,
            **kwargs,
        )
        for r in range(replicas)
    ]


def cost(split: TokenizedSplit, batch: list[int]) -> int:
    ids = np.asarray(batch)
    longest = max(split.src_lengths[ids].max(), split.tgt_lengths[ids].max()) + 1  # + EOS/BOS
    return len(ids) * int(longest)


@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("max_tokens", BUDGETS)
def test_shards_cover_every_example_once(
    train_split: TokenizedSplit, replicas: int, max_tokens: int
) -> None:
    shards = samplers(train_split, replicas, max_tokens, seed=7)
    for epoch in (0, 1):
        seen: list[int] = []
        counts = []
        for sampler in shards:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            counts.append(len(batches))
            assert len(batches) == len(sampler)
            for batch in batches:
                assert batch, "empty batch"
                assert all(isinstance(i, int) for i in batch)
                assert len(batch) == 1 or cost(train_split, batch) <= max_tokens
            seen.extend(i for batch in batches for i in batch)
        assert len(set(counts)) == 1, f"unequal batch counts {counts}"
        assert sorted(seen) == list(range(len(train_split))), "not exactly once"


def test_batch_count_not_divisible_is_evened_by_splitting(train_split: TokenizedSplit) -> None:
    single = samplers(train_split, 1, 150)[0]
    total = len(single)
    replicas = next(r for r in (2, 3, 4, 5, 7) if total % r)
    shards = samplers(train_split, replicas, 150)
    assert len(shards[0]) * replicas == total + (replicas - total % replicas)
    assert all(len(s) == len(shards[0]) for s in shards)


def test_same_epoch_same_order_different_epoch_different(train_split: TokenizedSplit) -> None:
    first, second = (
        samplers(train_split, 1, 256, seed=3)[0],
        samplers(train_split, 1, 256, seed=3)[0],
    )
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second)
    assert list(first) == list(first)  # iterating twice replays the epoch
    epoch4 = list(first)
    first.set_epoch(5)
    assert list(first) != epoch4
    other_seed = samplers(train_split, 1, 256, seed=4)[0]
    other_seed.set_epoch(4)
    assert list(other_seed) != epoch4
    assert len(first) == len(other_seed) == len(second)  # the count never depends on the epoch


def test_no_shuffle_is_sorted_and_epoch_independent(train_split: TokenizedSplit) -> None:
    sampler = samplers(train_split, 1, 256, shuffle=False)[0]
    epoch0 = list(sampler)
    sampler.set_epoch(9)
    assert list(sampler) == epoch0
    longest = np.maximum(train_split.src_lengths, train_split.tgt_lengths)
    widths = [int(longest[b].max()) for b in epoch0]
    assert widths == sorted(widths)


def test_over_budget_example_is_its_own_batch() -> None:
    src = np.array([3, 4, 500, 5, 2, 6])
    tgt = np.array([3, 5, 10, 4, 2, 6])
    sampler = TokenBucketBatchSampler(src, tgt, max_tokens=40, seed=0)
    batches = list(sampler)
    assert [2] in batches
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        if batch != [2]:
            longest = max(max(src[batch]), max(tgt[batch])) + 1
            assert len(batch) * longest <= 40


def test_padding_lower_than_random_batching(train_split: TokenizedSplit) -> None:
    sampler = samplers(train_split, 1, 512, seed=1)[0]
    stats = sampler.stats()
    assert stats["examples"] == len(train_split)
    assert stats["batches"] == len(sampler)
    assert stats["max_batch_tokens"] <= 512
    assert 0.0 <= sampler.padding_fraction() == stats["padding_fraction"]
    # random batches of the same sizes
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_split))
    sizes = np.cumsum([len(b) for b in sampler])[:-1]
    random_batches = [b.tolist() for b in np.split(order, sizes)]
    random_pad = batch_stats(random_batches, train_split.src_lengths, train_split.tgt_lengths)
    assert stats["padding_fraction"] < 0.15
    assert stats["padding_fraction"] < random_pad["padding_fraction"] / 2


def test_resume_mid_epoch(train_split: TokenizedSplit) -> None:
    sampler = samplers(train_split, 2, 256, seed=5)[1]
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = samplers(train_split, 2, 256, seed=0)[1]
    resumed.load_state_dict({"epoch": 2, "seed": 5, "start_step": 3})
    assert sampler.state_dict() == {"epoch": 2, "seed": 5, "start_step": 0}
    assert len(resumed) == len(full) - 3
    assert list(resumed) == full[3:]
    assert len(resumed) == len(full)  # the skip applies once


@pytest.mark.parametrize("accumulate", [1, 2])
def test_training_loader_state_is_the_position_the_loop_reached(
    train_split: TokenizedSplit, accumulate: int
) -> None:
    from pipelines.training.datamodule import ResumableDataLoader

    def loader(seed: int) -> ResumableDataLoader:
        sampler = samplers(train_split, 2, 256, seed=seed, accumulate=accumulate)[1]
        sampler.set_epoch(2)
        return ResumableDataLoader(
            TranslationDataset(train_split), batch_sampler=sampler, collate_fn=collate
        )

    first = loader(5)
    whole = [batch["index"].tolist() for batch in first]
    batches = iter(first)
    for _ in range(3 * accumulate):  # three optimizer steps consumed by the training loop
        next(batches)
    state = first.state_dict()
    assert state == {"epoch": 2, "seed": 5, "start_step": 3}
    resumed = loader(0)
    resumed.load_state_dict(state)
    assert len(resumed) == len(whole)  # Lightning counts the steps already done
    assert [batch["index"].tolist() for batch in resumed] == whole[3 * accumulate :]
    assert resumed.state_dict()["start_step"] == len(whole) // accumulate


def test_fewer_examples_than_replicas() -> None:
    with pytest.raises(PipelineError, match="2 examples cannot be shared by 3 ranks"):
        TokenBucketBatchSampler([3, 4], [3, 4], 100, num_replicas=3, rank=0)


def test_indivisible_singletons_are_an_error() -> None:
    with pytest.raises(PipelineError, match="equal numbers of batches"):
        TokenBucketBatchSampler([50, 60, 70], [5, 5, 5], 10, num_replicas=2, rank=0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank 2 out of range"):
        TokenBucketBatchSampler([3, 4], [3, 4], 100, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBucketBatchSampler([3, 4], [3, 4], 0)


def test_replicas_from_torch_distributed(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        sampler = TokenBucketBatchSampler([3, 4, 5], [3, 4, 5], 100, num_replicas=None, rank=None)
        assert (sampler.num_replicas, sampler.rank) == (1, 0)
    finally:
        dist.destroy_process_group()
    sampler = TokenBucketBatchSampler([3, 4, 5], [3, 4, 5], 100, num_replicas=None, rank=None)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


# ----------------------------------------------------------------------------- collate


@pytest.mark.parametrize("fetch", ["getitems", "examples"])
def test_collate_shapes_and_values(fetch: str) -> None:
    split = TokenizedSplit.from_ids([[10, 11, 12], [13]], [[20], [21, 22, 23, 24]])
    dataset = TranslationDataset(split)
    batch = collate(
        dataset.__getitems__([1, 0]) if fetch == "getitems" else [dataset[1], dataset[0]]
    )
    assert batch["src"].tolist() == [[13, EOS_ID, PAD_ID, PAD_ID], [10, 11, 12, EOS_ID]]
    assert batch["tgt_in"].tolist() == [[BOS_ID, 21, 22, 23, 24], [BOS_ID, 20, 0, 0, 0]]
    assert batch["tgt_out"].tolist() == [[21, 22, 23, 24, EOS_ID], [20, EOS_ID, 0, 0, 0]]
    assert batch["src_lengths"].tolist() == [2, 4]
    assert batch["tgt_lengths"].tolist() == [5, 2]
    assert batch["index"].tolist() == [1, 0]
    assert int(batch["ntokens"]) == 7
    for key in ("src", "tgt_in", "tgt_out", "index"):
        assert batch[key].dtype == torch.long, key


def test_dataloader_over_real_split(train_split: TokenizedSplit) -> None:
    sampler = samplers(train_split, 2, 333, seed=2)[0]
    sampler.set_epoch(1)
    loader = DataLoader(TranslationDataset(train_split), batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch, ids in zip(batches, sampler, strict=True):
        size, src_len = batch["src"].shape  # [B, S]
        assert batch["tgt_in"].shape == batch["tgt_out"].shape  # [B, T]
        assert batch["index"].tolist() == ids
        assert int(batch["ntokens"]) == int((batch["tgt_out"] != PAD_ID).sum())
        # teacher forcing: tgt_in shifted left is tgt_out, wherever tgt_out is not EOS/PAD
        inner = (batch["tgt_out"][:, :-1] != EOS_ID) & (batch["tgt_out"][:, :-1] != PAD_ID)
        assert torch.equal(batch["tgt_in"][:, 1:][inner], batch["tgt_out"][:, :-1][inner])
        assert (batch["tgt_in"][:, 0] == BOS_ID).all()
        rows = torch.arange(size)
        assert (batch["src"][rows, batch["src_lengths"] - 1] == EOS_ID).all()
        assert (batch["tgt_out"][rows, batch["tgt_lengths"] - 1] == EOS_ID).all()
        assert src_len == int(batch["src_lengths"].max())


def reference(split: TokenizedSplit, ids: list[int], multiple: int = 1) -> dict[str, torch.Tensor]:
    """The collate written row by row, with lists: what the vectorised one must equal."""

    def pad(rows: list[list[int]], prefix: list[int], suffix: list[int]) -> torch.Tensor:
        rows = [prefix + row + suffix for row in rows]
        width = -(-max(len(row) for row in rows) // multiple) * multiple
        return torch.tensor([row + [PAD_ID] * (width - len(row)) for row in rows], dtype=torch.long)

    src = [split.src(i).tolist() for i in ids]
    tgt = [split.tgt(i).tolist() for i in ids]
    return {
        "src": pad(src, [], [EOS_ID]),
        "tgt_in": pad(tgt, [BOS_ID], []),
        "tgt_out": pad(tgt, [], [EOS_ID]),
        "src_lengths": torch.tensor([len(row) + 1 for row in src], dtype=torch.long),
        "tgt_lengths": torch.tensor([len(row) + 1 for row in tgt], dtype=torch.long),
        "ntokens": torch.tensor(sum(len(row) + 1 for row in tgt), dtype=torch.long),
        "index": torch.tensor(ids, dtype=torch.long),
    }


def assert_same(batch: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype == torch.long, key
        assert batch[key].shape == value.shape, key
        assert torch.equal(batch[key], value), key


@pytest.mark.parametrize("multiple", [1, 8])
def test_collate_equals_the_per_row_reference_over_an_epoch(
    train_split: TokenizedSplit, multiple: int
) -> None:
    sampler = samplers(train_split, 1, 333, seed=4, length_multiple=multiple)[0]
    dataset = TranslationDataset(train_split)
    for ids in sampler:
        expected = reference(train_split, ids, multiple)
        assert_same(collate(dataset.__getitems__(ids), multiple), expected)
        assert_same(collate([dataset[i] for i in ids], multiple), expected)


@pytest.mark.parametrize("multiple", [1, 4])
@pytest.mark.parametrize("ids", [[0], [2], [3], [0, 2], [1, 0, 3, 2], [3, 1]])
def test_collate_of_empty_sentences_and_single_examples(ids: list[int], multiple: int) -> None:
    split = TokenizedSplit.from_ids([[], [5, 6], [], [7]], [[8], [], [], [9, 10, 11]])
    dataset = TranslationDataset(split)
    expected = reference(split, ids, multiple)
    assert_same(collate(dataset.__getitems__(ids), multiple), expected)
    assert_same(collate([dataset[i] for i in ids], multiple), expected)


def test_empty_batches_are_refused() -> None:
    dataset = TranslationDataset(TokenizedSplit.from_ids([[5]], [[6]]))
    for batch in (dataset.__getitems__([]), []):
        with pytest.raises(ValueError, match="empty batch"):
            collate(batch)


def test_getitems_copies_the_indices(train_split: TokenizedSplit) -> None:
    ids = np.array([3, 1, 2])
    batch = collate(TranslationDataset(train_split).__getitems__(ids))
    ids[:] = 0
    assert batch["index"].tolist() == [3, 1, 2]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_batches_equal_the_reference(train_split: TokenizedSplit, num_workers: int) -> None:
    sampler = samplers(train_split, 1, 256, seed=6, length_multiple=8)[0]
    dataset = pickle.loads(pickle.dumps(TranslationDataset(train_split)))  # as sent to workers
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate, length_multiple=8),
        num_workers=num_workers,
    )
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch, ids in zip(batches, sampler, strict=True):
        assert_same(batch, reference(train_split, ids, 8))
