"""The word-order probe: held-out sentences and their twins with two nouns swapped ("the cat
sat on the mat" / "the mat sat on the cat"), and how differently an encoder sees the two."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.seq2seq import Seq2Seq
from models.vocab import EOS_ID
from pipelines.core.decoding import inference
from pipelines.data.vocab import Tokenizers

# Frequent Multi30k nouns (lower case); a pair is kept only when both are single subwords.
_NOUN_LIST = """
man woman boy girl dog child person people men women children player players crowd group ball
street water car bike bicycle horse table shirt hat building camera guitar grass snow beach field
road wall baby lady guy worker workers cat mat rock tree river city park bench sidewalk air stage
microphone dirt sand ocean pool window door food book
"""
NOUNS = frozenset(_NOUN_LIST.split())


@dataclass(frozen=True)
class SwappedPair:
    """A sentence, its twin with two nouns swapped, and where the two subwords sit."""

    sentence: str
    swapped: str
    ids: list[int]  # the sentence's subword ids + EOS
    first: int  # positions in `ids` of the swapped subwords
    second: int

    def permutation(self) -> Tensor:
        """The positions of `ids` in the twin: the identity with `first` and `second` swapped."""
        order = torch.arange(len(self.ids))
        order[[self.first, self.second]] = order[[self.second, self.first]]
        return order


def swap_nouns(sentence: str) -> str | None:
    """The sentence with its first two different nouns of :data:`NOUNS` swapped, or None."""
    words = sentence.split()
    found = [i for i, word in enumerate(words) if word.lower() in NOUNS]
    for j in found[1:]:
        if words[j].lower() != words[found[0]].lower():
            words[found[0]], words[j] = words[j], words[found[0]]
            return " ".join(words)
    return None


def swapped_pairs(sentences: list[str], tokenizers: Tokenizers, limit: int) -> list[SwappedPair]:
    """Up to `limit` pairs whose subword sequences differ only by the swap of two subwords."""
    pairs = []
    for sentence in sentences:
        swapped = swap_nouns(sentence)
        if swapped is None:
            continue
        ids, twin = tokenizers.encode_src([sentence, swapped])
        differ = [i for i, (a, b) in enumerate(zip(ids, twin, strict=False)) if a != b]
        if len(ids) != len(twin) or len(differ) != 2:
            continue
        first, second = differ
        if ids[first] != twin[second] or ids[second] != twin[first]:
            continue
        pairs.append(SwappedPair(sentence, swapped, [*ids, EOS_ID], first, second))
        if len(pairs) == limit:
            break
    return pairs


def order_distance(model: Seq2Seq, src: Tensor, permutation: Tensor) -> float:
    """‖enc(src[π]) − enc(src)[π]‖ / ‖enc(src)‖ for one sentence src [1, S] and a permutation π
    of its positions: 0 for an encoder that is permutation-equivariant, as self-attention
    without positional encoding is; how much the order changes the encoding otherwise."""
    with inference(model):
        original = model.encode(src).memory[0]  # [S, D]
        permuted = model.encode(src[:, permutation]).memory[0]  # [S, D]
    return float((permuted - original[permutation]).norm() / original.norm())
