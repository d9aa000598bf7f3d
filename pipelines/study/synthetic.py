"""The synthetic path-length task: copy or reverse a random sequence, so that every target
token needs one known source token a known distance back (seeded, so runs repeat exactly).

The distance of target position t is counted in the stream a left-to-right reader sees, the
source of length n followed by the target: (n + t) - j, where j is the source position target
token t copies. Copying gives n at every position; reversing gives 2t + 1, from 1 to 2n - 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.vocab import EOS_ID
from pipelines.training.batching import Example, collate

FIRST_SYMBOL = EOS_ID + 1  # ids below are PAD, UNK, BOS and EOS
TRAIN_STREAM, EVAL_STREAM = 0, 1

Task = Literal["copy", "reverse"]


@dataclass(frozen=True)
class SyntheticExample:
    """A source, its target and, per target position, the distance to the token it copies."""

    src: list[int]
    tgt: list[int]
    distances: list[int]


def source_position(task: Task, length: int, position: int) -> int:
    """The source position that target `position` copies."""
    return position if task == "copy" else length - 1 - position


def generate(
    count: int, max_length: int, symbols: int, task: Task, seed: list[int]
) -> list[SyntheticExample]:
    """`count` examples of lengths drawn uniformly from 1..max_length, tokens uniformly from
    `symbols` ids; the same `seed` (a list of ints) gives the same examples."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        length = int(rng.integers(1, max_length + 1))
        src = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + symbols, size=length).tolist()
        positions = [source_position(task, length, t) for t in range(length)]
        tgt = [src[j] for j in positions]
        distances = [length + t - j for t, j in enumerate(positions)]
        examples.append(SyntheticExample(src, tgt, distances))
    return examples


def vocab_size(symbols: int) -> int:
    """The model vocabulary: the reserved ids and the task's symbols."""
    return FIRST_SYMBOL + symbols


def to_batch(examples: list[SyntheticExample]) -> dict[str, torch.Tensor]:
    """The training batch layout (src + EOS, BOS + tgt, tgt + EOS) of the pipeline's collate."""
    return collate(
        [
            Example(i, np.asarray(ex.src, dtype=np.int32), np.asarray(ex.tgt, dtype=np.int32))
            for i, ex in enumerate(examples)
        ]
    )


def training_batches(
    batch_size: int, max_length: int, symbols: int, task: Task, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Fresh examples for every step, forever: step k draws from the seed (seed, 0, k)."""
    step = 0
    while True:
        yield to_batch(generate(batch_size, max_length, symbols, task, [seed, TRAIN_STREAM, step]))
        step += 1
