"""One layer of each family, as the seed's table compares them (Vaswani et al. 2017, Table 1):
self-attention, a recurrent (LSTM) layer and a gated convolution, all of width d."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import MultiHeadAttention
from models.convolutional import GatedConvolution
from pipelines.study.graph_depth import unrolled_lstm


@dataclass(frozen=True)
class FamilyLayer:
    """A layer mapping [B, n, d] -> [B, n, d], with the seed's figures for its family."""

    family: str
    module: nn.Module
    forward: Callable[[Tensor], Tensor]
    stepwise: Callable[[Tensor], Tensor]  # the same function, one operation chain per step
    flops_per_token: Callable[[int], float]  # forward FLOPs per position at length n
    sequential_exponent: int  # the seed's sequential operations grow as n ** this


def _padded_convolution(convolution: GatedConvolution) -> Callable[[Tensor], Tensor]:
    side = (convolution.kernel_size - 1) // 2

    def forward(x: Tensor) -> Tensor:
        return convolution(F.pad(x, (0, 0, side, side)))  # [B, n + k - 1, d] -> [B, n, d]

    return forward


def family_layers(d_model: int, n_heads: int, kernel_size: int) -> list[FamilyLayer]:
    """Self-attention (Q, K, V and output projections), a one-direction LSTM, and a GLU
    convolution of width `kernel_size` (ConvS2S's), each d_model wide."""
    d, k = d_model, kernel_size
    attention = MultiHeadAttention(d, n_heads, self_attention=True)
    lstm = nn.LSTM(d, d, batch_first=True)
    convolution = GatedConvolution(d, k, dropout=0.0)
    conv_forward = _padded_convolution(convolution)
    return [
        FamilyLayer(
            "self-attention",
            attention,
            lambda x: attention(x)[0],
            lambda x: attention(x)[0],
            lambda n: 8.0 * d * d + 4.0 * n * d,  # projections 2·4d², scores and sum 2·2nd
            0,
        ),
        FamilyLayer(
            "recurrent",
            lstm,
            lambda x: lstm(x)[0],
            lambda x: unrolled_lstm(lstm, x),
            lambda n: 16.0 * d * d,  # four gates, each 2·(d·d + d·d)
            1,
        ),
        FamilyLayer(
            "convolutional",
            convolution,
            conv_forward,
            conv_forward,
            lambda n: 4.0 * k * d * d,  # k·d inputs to 2d outputs, 2 FLOPs each
            0,
        ),
    ]
