"""The synthetic path-length task: deterministic for a seed, with the distances it states."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.vocab import BOS_ID, EOS_ID, PAD_ID
from pipelines.study.path import distance_bins
from pipelines.study.synthetic import FIRST_SYMBOL, generate, to_batch, training_batches


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_the_same_seed_gives_the_same_examples_and_another_seed_others(task):
    first = generate(50, 64, 10, task, [1234, 0])
    assert first == generate(50, 64, 10, task, [1234, 0])
    assert first != generate(50, 64, 10, task, [1234, 1])
    assert first != generate(50, 64, 10, task, [1235, 0])


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_every_target_token_is_the_source_token_its_distance_names(task):
    """Target position t copies source position (n + t) - distance, in the stream src + tgt."""
    examples = generate(200, 64, 5, task, [7, 0])
    for example in examples:
        n = len(example.src)
        assert len(example.tgt) == len(example.distances) == n
        for t, distance in enumerate(example.distances):
            assert 1 <= distance <= 2 * n - 1
            assert example.tgt[t] == example.src[n + t - distance]


def test_reverse_distances_grow_as_2t_plus_1_and_copy_distances_are_the_length():
    (reverse,) = generate(1, 30, 8, "reverse", [3, 0])
    (copy,) = generate(1, 30, 8, "copy", [3, 0])
    assert reverse.src == copy.src  # the same draws, only the target differs
    n = len(reverse.src)
    assert reverse.distances == [2 * t + 1 for t in range(n)]
    assert reverse.tgt == reverse.src[::-1]
    assert copy.distances == [n] * n
    assert copy.tgt == copy.src


def test_lengths_and_symbols_stay_within_their_ranges():
    examples = generate(500, 20, 6, "reverse", [11, 0])
    lengths = {len(example.src) for example in examples}
    assert min(lengths) == 1 and max(lengths) == 20
    tokens = {token for example in examples for token in example.src}
    assert tokens == set(range(FIRST_SYMBOL, FIRST_SYMBOL + 6))


def test_batches_have_the_training_layout():
    examples = generate(3, 8, 4, "reverse", [5, 0])
    batch = to_batch(examples)
    for row, example in enumerate(examples):
        n = len(example.src)
        assert batch["src"][row, : n + 1].tolist() == [*example.src, EOS_ID]
        assert batch["tgt_in"][row, : n + 1].tolist() == [BOS_ID, *example.tgt]
        assert batch["tgt_out"][row, : n + 1].tolist() == [*example.tgt, EOS_ID]
        assert (batch["src"][row, n + 1 :] == PAD_ID).all()
    stream = training_batches(3, 8, 4, "reverse", 5)
    assert torch.equal(
        next(stream)["src"], to_batch(generate(3, 8, 4, "reverse", [5, 0, 0]))["src"]
    )
    assert not torch.equal(next(stream)["src"], batch["src"])


def test_distance_bins_cover_every_distance_once():
    bins = distance_bins(199, 6)
    assert bins[0][0] == 1 and bins[-1][1] == 199
    assert all(low <= high for low, high in bins)
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(bins))
    assert distance_bins(3, 6) == [(1, 1), (2, 2), (3, 3)]
