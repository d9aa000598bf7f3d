"""Without positional encoding the Transformer encoder is permutation-equivariant: exactly, up
to float64 rounding, on a tiny model; the word-order probe's pairs and distances."""

from __future__ import annotations

import pytest
import torch

from models.factory import build_model
from pipelines.core.study_params import StudyParams
from pipelines.study.positional import exact_equivariance
from pipelines.study.variants import transformer_config
from pipelines.study.word_order import SwappedPair, order_distance, swap_nouns

TINY = StudyParams(d_model=16, n_heads=2, layers=2)


def tiny_encoder(positional: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(transformer_config(TINY, positional), 30).double()


@pytest.mark.parametrize("seed", range(5))
def test_the_encoder_without_positional_encoding_is_permutation_equivariant(seed):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 30, (1, 11), generator=generator)
    permutation = torch.randperm(11, generator=generator)
    model = tiny_encoder("none")
    assert order_distance(model, src, permutation) <= 1e-12
    with torch.no_grad():
        original = model.encode(src).memory[0]
        permuted = model.encode(src[:, permutation]).memory[0]
    torch.testing.assert_close(permuted, original[permutation], rtol=0, atol=1e-12)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_with_a_positional_encoding_the_order_changes_the_encoding(positional):
    src = torch.arange(4, 15).unsqueeze(0)
    reversed_order = torch.arange(10, -1, -1)
    assert order_distance(tiny_encoder(positional), src, reversed_order) > 1e-2
    assert order_distance(tiny_encoder(positional), src, torch.arange(11)) == 0.0


def test_the_study_s_exact_check_separates_the_encodings():
    assert exact_equivariance(TINY, "none") <= 1e-12
    assert exact_equivariance(TINY, "sinusoidal") > 1e-2


def test_swap_nouns_swaps_the_first_two_different_nouns():
    assert swap_nouns("the cat sat on the mat") == "the mat sat on the cat"
    assert swap_nouns("A man walks a dog near a man .") == "A dog walks a man near a man ."
    assert swap_nouns("a dog and a dog") is None
    assert swap_nouns("nothing to swap here") is None


def test_a_pair_s_permutation_exchanges_the_two_positions():
    pair = SwappedPair("a b c d", "a d c b", [10, 11, 12, 13, 3], first=1, second=3)
    assert pair.permutation().tolist() == [0, 3, 2, 1, 4]
    twin = torch.tensor(pair.ids)[pair.permutation()].tolist()
    assert twin == [10, 13, 12, 11, 3]
