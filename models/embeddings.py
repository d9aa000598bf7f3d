"""Token embeddings and positional encodings (Vaswani et al. 2017, §3.4 and §3.5)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from models.config import require
from models.linear import Linear
from models.vocab import PAD_ID


class TokenEmbedding(nn.Module):
    """Token lookup, optionally multiplied by √dim as in Vaswani et al. (2017, §3.4)."""

    def __init__(self, vocab_size: int, dim: int, scale: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        # std dim^-0.5 makes the scaled embedding unit-variance, and keeps tied output logits O(1).
        nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()
        self.multiplier = math.sqrt(dim) if scale else 1.0

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: [B, T] or [B] -> [B, T, dim] or [B, dim]."""
        return self.embedding(tokens) * self.multiplier


def build_token_embeddings(
    src_vocab_size: int, tgt_vocab_size: int, dim: int, output_dim: int, tie: bool, scale: bool
) -> tuple[TokenEmbedding, TokenEmbedding, Linear]:
    """Source and target embeddings of size `dim`, and the projection from the decoder's
    `output_dim` features to the target vocabulary.

    With `tie`, all three share one matrix (Press & Wolf 2017): this needs a joint vocabulary
    and output_dim == dim.
    """
    require(
        not tie or src_vocab_size == tgt_vocab_size,
        "tie_embeddings",
        f"requires a joint vocabulary (src_vocab_size {src_vocab_size} != "
        f"tgt_vocab_size {tgt_vocab_size})",
    )
    require(
        not tie or output_dim == dim,
        "tie_embeddings",
        f"needs the decoder output size ({output_dim}) to equal the embedding size ({dim})",
    )
    src_embedding = TokenEmbedding(src_vocab_size, dim, scale)
    tgt_embedding = src_embedding if tie else TokenEmbedding(tgt_vocab_size, dim, scale)
    output_projection = Linear(output_dim, tgt_vocab_size)
    if tie:
        output_projection.weight = tgt_embedding.embedding.weight
    return src_embedding, tgt_embedding, output_projection


def _check_length(end: int, max_len: int) -> None:
    if end > max_len:
        raise ValueError(f"position {end - 1} exceeds the positional encoding's max_len {max_len}")


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)  # [max_len, 1]
        inverse_frequency = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float) * (-math.log(10000.0) / d_model)
        )  # [ceil(d/2)], 1 / 10000^(2i/d)
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * inverse_frequency)
        pe[:, 1::2] = torch.cos(position * inverse_frequency[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)  # a function of the config, not a weight

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: [B, T, d_model]; positions start at `offset` (incremental decoding)."""
        _check_length(offset + x.size(1), self.pe.size(0))
        return x + self.pe[offset : offset + x.size(1)]


class LearnedPositionalEncoding(nn.Module):
    """One trained vector per position (Gehring et al. 2017; Vaswani et al. 2017, §6.2)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: [B, T, d_model]; positions start at `offset` (incremental decoding)."""
        _check_length(offset + x.size(1), self.embedding.num_embeddings)
        return x + self.embedding.weight[offset : offset + x.size(1)]


class NoPositionalEncoding(nn.Module):
    """No order information: attention alone is permutation-equivariant (the ablation)."""

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return x


PositionalKind = Literal["sinusoidal", "learned", "none"]


def build_positional_encoding(kind: PositionalKind, d_model: int, max_len: int) -> nn.Module:
    """The positional encoding named by `kind`; every kind takes forward(x, offset=0)."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned":
        return LearnedPositionalEncoding(d_model, max_len)
    if kind == "none":
        return NoPositionalEncoding()
    raise ValueError(f"unknown positional encoding {kind!r}")
