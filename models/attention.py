"""Attention: scaled dot-product and multi-head (Vaswani et al. 2017, §3.2), additive (Bahdanau
et al. 2015, §3.1) and multiplicative (Luong et al. 2015, §3.1), sharing one masked softmax."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.linear import Linear


def attention_mask(
    key_padding_mask: Tensor | None,
    causal: bool,
    query_len: int,
    key_len: int,
    device: torch.device,
) -> Tensor | None:
    """Boolean mask broadcastable to [B, H, T, S]; True where a query may attend to a key."""
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        # The queries are the last T of S positions (T < S when decoding with a key/value cache).
        allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
        allowed = allowed.tril(diagonal=key_len - query_len)  # [T, S]
        mask = allowed if mask is None else mask & allowed
    return mask


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dim in which entries where `mask` is False get exactly zero weight."""
    if mask is None:
        return scores.softmax(dim=-1)
    # finfo.min rather than -inf: exp underflows to exactly 0 and a fully masked row stays finite.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1).masked_fill(~mask, 0.0)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """softmax(QKᵀ/√d_k)V written out step by step; returns the output and the attention weights.

    q: [B, H, T, d], k and v: [B, H, S, d], key_padding_mask: [B, S] with True at padding.
    The weights are returned before dropout, so they always sum to one over unmasked keys.
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1)  # [B, H, T, S]
    scores = scores / math.sqrt(d_k)  # keeps the logit variance ≈ 1 whatever d_k is
    mask = attention_mask(key_padding_mask, causal, q.size(-2), k.size(-2), q.device)
    weights = masked_softmax(scores, mask)
    out = F.dropout(weights, p=dropout_p) @ v  # [B, H, T, d]
    return out, weights


# Under torch.compile, attention whose queries and keys are at most this long is written out for
# Inductor to fuse instead of calling a fused attention kernel. The flash and memory-efficient
# kernels tile 64-128 positions per (sentence, head), so on Multi30k's sentences (10-30 subwords)
# most of each tile is padding: on one H200 (2026-12-01, bf16, 8 heads of 64, 2,500-5,500
# sentences) the written-out forward and backward took 0.4-0.7x their time up to 26 positions
# and as long or longer at 33, and compiled transformer_base training ran 1.10x faster at 64k
# tokens a batch (benchmarks/README.md, "Short attention written out for the compiler").
COMPOSED_ATTENTION_MAX_LEN = 28


def fast_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """The same computation as :func:`scaled_dot_product_attention` via PyTorch's fused kernel,
    or, while torch.compile traces short sequences, written out (see COMPOSED_ATTENTION_MAX_LEN)."""
    query_len, key_len = q.size(-2), k.size(-2)
    if torch.compiler.is_compiling() and max(query_len, key_len) <= COMPOSED_ATTENTION_MAX_LEN:
        return scaled_dot_product_attention(q, k, v, key_padding_mask, causal, dropout_p)[0]
    if causal and key_padding_mask is None and query_len == key_len:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    mask = attention_mask(key_padding_mask, causal, query_len, key_len, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def use_cudnn_attention(enabled: bool) -> None:
    """Let SDPA pick cuDNN's attention kernel on CUDA, or not (process-wide; CPU ignores it).

    cuDNN's kernel builds an execution plan for every new tensor shape, and token-bucket batches
    and beam search (whose key length grows each step) meet new shapes all the time: on an H100
    the first pass over 40 training batches took 14.0 s with it and 3.0 s without, for the same
    steady state (benchmarks/README.md). Without it SDPA uses the flash or memory-efficient kernel.
    """
    torch.backends.cuda.enable_cudnn_sdp(enabled)


@dataclass
class KeyValueCache:
    """Projected keys and values of one attention layer kept between decoding steps.

    A static cache holds the encoder memory, projected once; a growing cache (self-attention)
    gets the new step's keys and values appended on every call.
    """

    key: Tensor | None = None  # [B, H, S, d_head]
    value: Tensor | None = None  # [B, H, S, d_head]
    static: bool = False


class MultiHeadAttention(nn.Module):
    """Multi-head attention: h parallel scaled dot-product attentions on learned projections.

    Keys and values always come from the same sequence here, so their projections are stacked
    into one matrix product; self-attention stacks the query projection too (one product for
    Q, K and V). The same function as separate projections, in fewer and larger kernels.
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, self_attention: bool = False
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.self_attention = self_attention
        if self_attention:
            self.qkv_proj = Linear(d_model, 3 * d_model)  # rows: W_Q, W_K, W_V
        else:
            self.query_proj = Linear(d_model, d_model)
            self.key_value_proj = Linear(d_model, 2 * d_model)  # rows: W_K, W_V
        self.out_proj = Linear(d_model, d_model)
        self.register_load_state_dict_pre_hook(_stack_separate_projections)

    def _split_heads(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """[B, T, parts * D] -> `parts` tensors [B, H, T, d_head]."""
        batch, length, _ = x.shape
        return tuple(
            part.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)
            for part in x.chunk(parts, dim=-1)
        )

    def project_key_value(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of attention over `memory`: [B, S, D] -> two [B, H, S, d_head]."""
        if self.self_attention:
            raise ValueError("project_key_value is for attention over another sequence")
        key, value = self._split_heads(self.key_value_proj(memory), 2)
        return key, value

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        cache: KeyValueCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """query: [B, T, D] -> [B, T, D]. Self-attention attends over `query` itself (`memory`
        must be None); otherwise over `memory` [B, S, D], which a static `cache` replaces.

        Returns the per-head weights [B, H, T, S] when `need_weights`, else None (fused path).
        A growing `cache` is extended in place with this call's keys and values.
        """
        if self.self_attention:
            if memory is not None:
                raise ValueError("self-attention takes no memory: it attends over its query")
            q, k, v = self._split_heads(self.qkv_proj(query), 3)  # each [B, H, T, d_head]
        else:
            (q,) = self._split_heads(self.query_proj(query), 1)
            if cache is not None and cache.static:
                k, v = cache.key, cache.value
            else:
                k, v = self.project_key_value(memory)
        if cache is not None and not cache.static:
            if cache.key is not None:
                k = torch.cat([cache.key, k], dim=2)  # [B, H, S_past + T, d_head]
                v = torch.cat([cache.value, v], dim=2)  # [B, H, S_past + T, d_head]
            cache.key, cache.value = k, v
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(
                q, k, v, key_padding_mask, causal, dropout_p
            )
        else:
            out, weights = fast_attention(q, k, v, key_padding_mask, causal, dropout_p), None
        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head)  # [B, T, D]
        return self.out_proj(out), weights


def _stack_separate_projections(
    module: MultiHeadAttention, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Load weights saved with separate query/key/value projections (before they were stacked)."""
    names = ("query", "key", "value") if module.self_attention else ("key", "value")
    target = "qkv_proj" if module.self_attention else "key_value_proj"
    for kind in ("weight", "bias"):
        old = [f"{prefix}{name}_proj.{kind}" for name in names]
        if all(key in state_dict for key in old):
            state_dict[f"{prefix}{target}.{kind}"] = torch.cat([state_dict.pop(k) for k in old])


class _ScoredAttention(nn.Module):
    """Single-query attention over a sequence of keys; subclasses define the score function."""

    def project_keys(self, keys: Tensor) -> Tensor:
        """The part of the score that depends on the keys only; computed once per sentence."""
        return keys

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """query: [B, Dq], projected_keys: [B, S, *] -> scores [B, S]."""
        raise NotImplementedError

    def score_all(self, queries: Tensor, projected_keys: Tensor) -> Tensor:
        """Every target position at once: queries [B, T, Dq] -> scores [B, T, S]."""
        raise NotImplementedError

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        key_padding_mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """query: [B, Dq], keys: [B, S, Dk], mask: [B, S] True at padding -> ([B, Dk], [B, S])."""
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        mask = None if key_padding_mask is None else ~key_padding_mask
        weights = masked_softmax(self.score(query, projected_keys), mask)  # [B, S]
        context = (weights.unsqueeze(1) @ keys).squeeze(1)  # [B, 1, S] @ [B, S, Dk] -> [B, Dk]
        return context, weights

    def attend_all(
        self,
        queries: Tensor,
        keys: Tensor,
        key_padding_mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for T queries at once: [B, T, Dq] -> ([B, T, Dk], [B, T, S]).

        The fast path of a decoder whose queries do not depend on earlier attention outputs.
        """
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, :]  # [B, 1, S]
        weights = masked_softmax(self.score_all(queries, projected_keys), mask)  # [B, T, S]
        return weights @ keys, weights  # [B, T, S] @ [B, S, Dk] -> [B, T, Dk]


class AdditiveAttention(_ScoredAttention):
    """Bahdanau et al. (2015) additive score: vᵀ tanh(W q + U k)."""

    def __init__(self, query_dim: int, key_dim: int, hidden: int) -> None:
        super().__init__()
        self.query_layer = Linear(query_dim, hidden, bias=False)
        self.key_layer = Linear(key_dim, hidden, bias=False)
        self.energy_layer = Linear(hidden, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.key_layer(keys)  # [B, S, hidden]

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        energy = torch.tanh(self.query_layer(query).unsqueeze(1) + projected_keys)  # [B, S, hidden]
        return self.energy_layer(energy).squeeze(-1)  # [B, S]

    def score_all(self, queries: Tensor, projected_keys: Tensor) -> Tensor:
        # [B, T, 1, hidden] + [B, 1, S, hidden] -> [B, T, S, hidden]
        energy = torch.tanh(self.query_layer(queries).unsqueeze(2) + projected_keys.unsqueeze(1))
        return self.energy_layer(energy).squeeze(-1)  # [B, T, S]


class MultiplicativeAttention(_ScoredAttention):
    """Luong et al. (2015) multiplicative score: hᵀ W k ("general") or hᵀ k ("dot")."""

    def __init__(
        self, query_dim: int, key_dim: int, score: Literal["general", "dot"] = "general"
    ) -> None:
        super().__init__()
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"dot score needs query_dim == key_dim, got {query_dim} != {key_dim}")
        # hᵀ W k computed as (Wᵀ h)ᵀ k, so nothing depends on the keys alone.
        self.query_layer = Linear(query_dim, key_dim, bias=False) if score == "general" else None

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        if self.query_layer is not None:
            query = self.query_layer(query)  # [B, Dk]
        return (projected_keys @ query.unsqueeze(-1)).squeeze(
            -1
        )  # [B, S, Dk] @ [B, Dk, 1] -> [B, S]

    def score_all(self, queries: Tensor, projected_keys: Tensor) -> Tensor:
        if self.query_layer is not None:
            queries = self.query_layer(queries)  # [B, T, Dk]
        return queries @ projected_keys.transpose(1, 2)  # [B, T, Dk] @ [B, Dk, S] -> [B, T, S]
