"""Token-budget batching of a tokenized split: a map-style dataset, the padding collate, and a
rank-aware length-bucketed batch sampler (the token-based batching of Vaswani et al., 2017, §5.1).

A custom batch sampler is not sharded by Lightning (Lightning#5145), so the sampler shards itself:
it plans the batches of the whole epoch once, then hands each rank the same number of them
(uneven counts hang DDP, Lightning#9851), without duplicating any example. Pass
``use_distributed_sampler=False`` to the Trainer and call :meth:`set_epoch` every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from models.vocab import BOS_ID, EOS_ID, PAD_ID
from pipelines.core.errors import PipelineError
from pipelines.data.tokenized import TokenizedSplit


class Example(NamedTuple):
    """One sentence pair: its index in the split and its subword ids (no BOS/EOS)."""

    index: int
    src: np.ndarray
    tgt: np.ndarray


class Rows(NamedTuple):
    """A batch as rows of a split, what :meth:`TranslationDataset.__getitems__` hands the collate:
    no per-example slicing, the collate gathers the tokens with array indexing."""

    split: TokenizedSplit
    index: np.ndarray  # int64 [B], row ids in `split`


class TranslationDataset(Dataset):
    """Map-style dataset over a :class:`TokenizedSplit`; item ``i`` is sentence pair ``i``.

    The DataLoader fetches a batch with :meth:`__getitems__` (one call, no per-example work).
    """

    def __init__(self, split: TokenizedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Example:
        index = int(index)
        return Example(index, self.split.src(index), self.split.tgt(index))

    def __getitems__(self, indices: Sequence[int]) -> Rows:
        """Pairs `indices`, as one batch (what the DataLoader fetches instead of item by item)."""
        return Rows(self.split, np.array(indices, dtype=np.int64))


def round_up(lengths: int | np.ndarray, multiple: int) -> int | np.ndarray:
    """`lengths` (an int or an integer array) rounded up to a multiple of `multiple` (1: as is)."""
    return -(-lengths // multiple) * multiple


def _gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows ``tokens[starts[i] : starts[i] + lengths[i]]``, concatenated."""
    ends = np.cumsum(lengths)  # of each row in the output
    return tokens[np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1])]


def _pad(
    values: np.ndarray,
    lengths: np.ndarray,
    prefix: int | None,
    suffix: int | None,
    multiple: int = 1,
) -> torch.Tensor:
    """Rows of `lengths` tokens, concatenated in `values`, as a [B, W] LongTensor: each row
    between `prefix` and `suffix` (if not None), then PAD_ID; W the longest, rounded up."""
    first = int(prefix is not None)
    width = round_up(int(lengths.max()) + first + (suffix is not None), multiple)
    out = np.full((len(lengths), width), PAD_ID, dtype=np.int64)
    # A boolean mask is filled in row-major order: row after row, as `values` is laid out.
    out[:, first:][np.arange(width - first) < lengths[:, None]] = values
    if prefix is not None:
        out[:, 0] = prefix
    if suffix is not None:
        out[np.arange(len(lengths)), first + lengths] = suffix
    return torch.from_numpy(out)


def _split_of(examples: Sequence[Example]) -> TokenizedSplit:
    """The examples' tokens as a split of their own (row ``i`` is ``examples[i]``)."""
    sides = []
    for rows in ([ex.src for ex in examples], [ex.tgt for ex in examples]):
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        sides += [np.concatenate(rows), np.concatenate([[0], np.cumsum(lengths)])]
    return TokenizedSplit(*sides)


def collate(batch: Rows | Sequence[Example], length_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad a batch (:class:`Rows`, or a list of examples) into LongTensors (batch first, PAD_ID).

    ``src`` [B, S] is tokens + EOS, ``tgt_in`` [B, T] is BOS + tokens, ``tgt_out`` [B, T] is
    tokens + EOS; ``src_lengths``/``tgt_lengths`` [B] count EOS; ``ntokens`` is the number of
    non-pad target tokens (a 0-dim tensor) and ``index`` [B] the examples' ids in the split.
    S and T are padded up to a multiple of `length_multiple`.
    """
    if not len(batch.index if isinstance(batch, Rows) else batch):
        raise ValueError("collate: empty batch")
    if isinstance(batch, Rows):
        split, rows, index = batch.split, batch.index, batch.index
    else:
        split, rows, index = _split_of(batch), np.arange(len(batch)), [ex.index for ex in batch]
    src_lengths, tgt_lengths = split.src_lengths[rows], split.tgt_lengths[rows]  # without EOS
    src = _gather(split.src_tokens, split.src_offsets[rows], src_lengths)
    tgt = _gather(split.tgt_tokens, split.tgt_offsets[rows], tgt_lengths)
    tgt_counts = torch.from_numpy(tgt_lengths + 1)  # with EOS
    return {
        "src": _pad(src, src_lengths, None, EOS_ID, length_multiple),  # [B, S]
        "tgt_in": _pad(tgt, tgt_lengths, BOS_ID, None, length_multiple),  # [B, T]
        "tgt_out": _pad(tgt, tgt_lengths, None, EOS_ID, length_multiple),  # [B, T]
        "src_lengths": torch.from_numpy(src_lengths + 1),
        "tgt_lengths": tgt_counts,
        "ntokens": tgt_counts.sum(),
        "index": torch.tensor(index, dtype=torch.long),
    }


@dataclass(frozen=True)
class _Plan:
    """One epoch's global batches, grouped so that group ``k`` holds step ``k`` of every rank."""

    groups: list[list[np.ndarray]]  # [steps][num_replicas] -> example ids


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    available = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if available else 1
    if rank is None:
        rank = torch.distributed.get_rank() if available else 0
    return num_replicas, rank


class TokenBucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches of at most `max_tokens` (padded) tokens, sharded across ranks.

    Per epoch: examples are sorted by length (source/target incl. EOS; a seeded shuffle breaks
    ties), packed greedily while ``batch size x longest side <= max_tokens`` (an example over the
    budget alone is a batch of its own), the largest batches are halved until the count divides
    by `num_replicas`, consecutive batches are grouped by `num_replicas` (so the ranks of one step
    get batches of similar length), and the order of the groups is shuffled with ``(seed,
    epoch)``. Rank ``r`` takes batch ``r`` of every group. Every example appears exactly once per
    epoch across ranks and every rank gets ``len(self)`` batches. Deterministic given (seed,
    epoch); call :meth:`set_epoch` before each epoch.

    With ``length_multiple`` m > 1, lengths are rounded up to a multiple of m before sorting and
    packing (the collate pads to the same widths): batches of one length bucket get the same
    size, so an epoch has a few batch shapes instead of one per batch (CUDA graphs and compiled
    kernels are made once per shape), at the cost of more padding.
    """

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = 1,
        rank: int | None = 0,
        accumulate: int = 1,
        length_multiple: int = 1,
    ) -> None:
        num_replicas, rank = _distributed_defaults(num_replicas, rank)
        # +1: the collate appends EOS to the source and BOS/EOS to the target.
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64) + 1
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64) + 1
        if self.src_lengths.shape != self.tgt_lengths.shape or self.src_lengths.ndim != 1:
            raise ValueError("src_lengths and tgt_lengths must be 1-d and of the same length")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        if length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {length_multiple}")
        self.length_multiple = int(length_multiple)
        # The padded widths the collate makes: what sorting and packing count.
        self.src_widths = round_up(self.src_lengths, self.length_multiple)
        self.tgt_widths = round_up(self.tgt_lengths, self.length_multiple)
        self.longest_widths = np.maximum(self.src_widths, self.tgt_widths)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if len(self.src_lengths) < num_replicas:
            raise PipelineError(
                f"{len(self.src_lengths)} examples cannot be shared by {num_replicas} ranks "
                "without duplicating some: use fewer devices or more data"
            )
        self.max_tokens = int(max_tokens)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        # Batches of one optimizer step per rank: a step's group holds num_replicas x accumulate
        # batches, so the plan depends only on the global batch, not on how it is split.
        self.accumulate = int(accumulate)
        self.width = self.num_replicas * self.accumulate
        self.epoch = 0
        self.start_step = 0  # batches of the current epoch to skip (mid-epoch resume)
        self._cache: tuple[int, _Plan] | None = None
        self._num_steps = len(self._plan().groups)

    # -- planning

    def _sorted_order(self, rng: np.random.Generator | None) -> np.ndarray:
        n = len(self.longest_widths)
        tiebreak = rng.permutation(n) if rng is not None else np.arange(n)
        # np.lexsort sorts by the last key first: longest side, then source, then target width.
        return np.lexsort((tiebreak, self.tgt_widths, self.src_widths, self.longest_widths))

    def _pack(self, order: np.ndarray) -> list[np.ndarray]:
        longest = self.longest_widths[order]
        batches: list[np.ndarray] = []
        start, widest = 0, 0
        for position, length in enumerate(longest.tolist()):
            wider = max(widest, length)
            if position > start and (position - start + 1) * wider > self.max_tokens:
                batches.append(order[start:position])
                start, wider = position, length
            widest = wider
        batches.append(order[start:])
        return batches

    def _even_out(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Halve the largest batches until the count divides by ranks x accumulation steps."""
        while len(batches) % self.width:
            sizes = [len(b) for b in batches]
            largest = int(np.argmax(sizes))
            if sizes[largest] < 2:
                raise PipelineError(
                    f"cannot give {self.num_replicas} ranks equal numbers of batches: "
                    f"{len(batches)} batches of one example each; raise train.batch_tokens"
                )
            batch = batches[largest]
            half = (len(batch) + 1) // 2
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        return batches

    def _plan(self) -> _Plan:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        batches = self._even_out(self._pack(self._sorted_order(rng)))
        width = self.width
        groups = [batches[i : i + width] for i in range(0, len(batches), width)]
        if rng is not None:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        plan = _Plan(groups=groups)
        self._cache = (self.epoch, plan)
        return plan

    # -- Sampler API

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration follows (and resets any resume skip)."""
        if epoch != self.epoch:
            self.start_step = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        plan = self._plan()
        for group in plan.groups[self.start_step :]:
            for micro_step in range(self.accumulate):
                yield group[micro_step * self.num_replicas + self.rank].tolist()
        self.start_step = 0

    def __len__(self) -> int:
        return (self._num_steps - self.start_step) * self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps (groups of ``accumulate`` batches per rank) in a whole epoch."""
        return self._num_steps

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration replays epoch ``state['epoch']`` from ``start_step``."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.start_step = int(state.get("start_step", 0))
        self._cache = None

    # -- statistics

    def batches(self, rank: int | None = None) -> list[list[int]]:
        """This epoch's batches of `rank` (default: this sampler's rank), or of all ranks if -1."""
        plan = self._plan()
        if rank == -1:
            return [b.tolist() for group in plan.groups for b in group]
        rank = self.rank if rank is None else rank
        return [
            group[micro_step * self.num_replicas + rank].tolist()
            for group in plan.groups
            for micro_step in range(self.accumulate)
        ]

    def stats(self) -> dict[str, float]:
        """Padding and size statistics of this epoch's global plan (all ranks)."""
        return batch_stats(
            self.batches(rank=-1), self.src_lengths - 1, self.tgt_lengths - 1, self.length_multiple
        )

    def padding_fraction(self) -> float:
        """Share of padded positions in the source and target tensors of this epoch's plan."""
        return self.stats()["padding_fraction"]


def batch_stats(
    batches: Sequence[Sequence[int]],
    src_lengths: Sequence[int] | np.ndarray,
    tgt_lengths: Sequence[int] | np.ndarray,
    length_multiple: int = 1,
) -> dict[str, float]:
    """Padding statistics of any batching (lengths without EOS, as the collate pads them)."""
    src = np.asarray(src_lengths, dtype=np.int64) + 1
    tgt = np.asarray(tgt_lengths, dtype=np.int64) + 1
    src_widths, tgt_widths = round_up(src, length_multiple), round_up(tgt, length_multiple)
    real = padded_src = padded_tgt = 0
    largest = 0
    for batch in batches:
        ids = np.asarray(batch, dtype=np.int64)
        padded_src += len(ids) * int(src_widths[ids].max())
        padded_tgt += len(ids) * int(tgt_widths[ids].max())
        real += int(src[ids].sum() + tgt[ids].sum())
        largest = max(largest, len(ids) * int(max(src_widths[ids].max(), tgt_widths[ids].max())))
    padded = padded_src + padded_tgt
    examples = sum(len(b) for b in batches)
    return {
        "batches": float(len(batches)),
        "examples": float(examples),
        "mean_batch_size": examples / max(len(batches), 1),
        "max_batch_tokens": float(largest),
        "padding_fraction": 1.0 - real / padded if padded else 0.0,
    }
