"""The Transformer encoder-decoder of Vaswani et al. (2017), §3, with post- or pre-LayerNorm."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import KeyValueCache, MultiHeadAttention
from models.config import require, require_positive, require_probability
from models.embeddings import PositionalKind, build_positional_encoding, build_token_embeddings
from models.linear import Linear
from models.seq2seq import EncoderOutput, Seq2Seq
from models.vocab import PAD_ID


@dataclass
class TransformerConfig:
    """Hyperparameters of :class:`TransformerSeq2Seq`; defaults are the paper's base model."""

    family: Literal["transformer"] = "transformer"
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.0
    norm: Literal["post", "pre"] = "post"
    activation: Literal["relu", "gelu"] = "relu"
    positional: PositionalKind = "sinusoidal"
    tie_embeddings: bool = True
    max_len: int = 1024

    def validate(self, prefix: str = "") -> None:
        sizes = ("d_model", "n_heads", "d_ff", "encoder_layers", "decoder_layers", "max_len")
        require_positive(self, sizes, prefix)
        require(
            self.d_model % self.n_heads == 0,
            f"{prefix}n_heads",
            f"must divide d_model ({self.n_heads} does not divide {self.d_model})",
        )
        require_probability(self, ("dropout", "attention_dropout"), prefix)


class FeedForward(nn.Module):
    """Position-wise feed-forward network, FFN(x) = W₂ act(W₁ x + b₁) + b₂ (§3.3)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.linear_in = Linear(config.d_model, config.d_ff)
        self.linear_out = Linear(config.d_ff, config.d_model)
        self.activation = F.relu if config.activation == "relu" else F.gelu
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_out(self.dropout(self.activation(self.linear_in(x))))


class Residual(nn.Module):
    """x + Dropout(sublayer(·)) with LayerNorm after the sum (post, §5.4) or on the input (pre)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def sublayer_input(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def add(self, x: Tensor, sublayer_output: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_output)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each wrapped in a residual connection (§3.1)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(
            config.d_model, config.n_heads, config.attention_dropout, self_attention=True
        )
        self.feed_forward = FeedForward(config)
        self.attention_residual = Residual(config)
        self.feed_forward_residual = Residual(config)

    def forward(self, x: Tensor, src_pad_mask: Tensor) -> Tensor:
        """x: [B, S, D], src_pad_mask: [B, S] -> [B, S, D]."""
        h = self.attention_residual.sublayer_input(x)
        x = self.attention_residual.add(x, self.self_attention(h, key_padding_mask=src_pad_mask)[0])
        h = self.feed_forward_residual.sublayer_input(x)
        return self.feed_forward_residual.add(x, self.feed_forward(h))


class DecoderLayer(nn.Module):
    """Causal self-attention, attention over the encoder memory, then feed-forward (§3.1)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(
            config.d_model, config.n_heads, config.attention_dropout, self_attention=True
        )
        self.cross_attention = MultiHeadAttention(
            config.d_model, config.n_heads, config.attention_dropout
        )
        self.feed_forward = FeedForward(config)
        self.self_attention_residual = Residual(config)
        self.cross_attention_residual = Residual(config)
        self.feed_forward_residual = Residual(config)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        src_pad_mask: Tensor,
        self_cache: KeyValueCache | None = None,
        cross_cache: KeyValueCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: [B, T, D], memory: [B, S, D] (None with a static cross_cache) -> ([B, T, D], weights).

        Target padding sits at the end, so the causal mask already hides it from real tokens.
        """
        h = self.self_attention_residual.sublayer_input(x)
        attended, _ = self.self_attention(h, causal=True, cache=self_cache)
        x = self.self_attention_residual.add(x, attended)
        h = self.cross_attention_residual.sublayer_input(x)
        attended, weights = self.cross_attention(
            h, memory, src_pad_mask, need_weights=need_weights, cache=cross_cache
        )
        x = self.cross_attention_residual.add(x, attended)
        h = self.feed_forward_residual.sublayer_input(x)
        return self.feed_forward_residual.add(x, self.feed_forward(h)), weights


@dataclass
class TransformerDecoderState:
    """Per-layer key/value caches for incremental decoding."""

    src_pad_mask: Tensor  # [B, S]
    self_caches: list[KeyValueCache]  # grows by one position per step
    cross_caches: list[KeyValueCache]  # the projected encoder memory, static
    position: int = 0  # index of the next target position


class TransformerSeq2Seq(Seq2Seq):
    """Embeddings + positional encoding, N encoder layers, N decoder layers, output projection."""

    graph_safe = True

    def __init__(self, config: TransformerConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.src_embedding, self.tgt_embedding, self.output_projection = build_token_embeddings(
            src_vocab_size,
            tgt_vocab_size,
            config.d_model,
            config.d_model,
            config.tie_embeddings,
            scale=True,
        )
        self.positional = build_positional_encoding(
            config.positional, config.d_model, config.max_len
        )
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(config) for _ in range(config.encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.decoder_layers)
        )
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a LayerNorm.
        pre_norm = config.norm == "pre"
        self.encoder_norm = nn.LayerNorm(config.d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(config.d_model) if pre_norm else nn.Identity()
        # Compiled wrappers of the layers for teacher-forced training (compile_for_training);
        # a plain tuple, so they are no submodules and the state dict keeps its names.
        self._compiled_layers: tuple[list[nn.Module], list[nn.Module]] | None = None

    def compile_for_training(self, **options: Any) -> None:
        """Compile each encoder and decoder layer (regional compilation: the layers of a stack
        share one compiled graph), used only in training mode with gradients on, dynamic in the
        batch shapes by default. Inductor fuses a layer's element-wise work (residual, dropout,
        LayerNorm, casts) around the matrix products and attention; evaluation, validation and
        decoding with key/value caches keep the eager layers.
        """
        options.setdefault("dynamic", True)
        self._compiled_layers = (
            [torch.compile(layer, **options) for layer in self.encoder_layers],
            [torch.compile(layer, **options) for layer in self.decoder_layers],
        )

    def _layers(self, side: int) -> Sequence[nn.Module]:
        """The encoder (0) or decoder (1) layers to run: compiled ones when training with them."""
        if self._compiled_layers is not None and self.training and torch.is_grad_enabled():
            return self._compiled_layers[side]
        return (self.encoder_layers, self.decoder_layers)[side]

    def _embed(self, embedding: nn.Module, tokens: Tensor, offset: int = 0) -> Tensor:
        return self.embedding_dropout(self.positional(embedding(tokens), offset=offset))

    def encode(self, src: Tensor) -> EncoderOutput:
        src_pad_mask = src == PAD_ID  # [B, S]
        x = self._embed(self.src_embedding, src)  # [B, S, D]
        for layer in self._layers(0):
            x = layer(x, src_pad_mask)
        return EncoderOutput(memory=self.encoder_norm(x), src_pad_mask=src_pad_mask)

    def _decode(
        self, tgt_in: Tensor, encoder_out: EncoderOutput, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """-> the decoder's output features [B, T, D] (what `output_projection` maps to the
        logits) and the last layer's cross-attention [B, H, T, S] if asked for."""
        x = self._embed(self.tgt_embedding, tgt_in)  # [B, T, D]
        last = len(self.decoder_layers) - 1
        for i, layer in enumerate(self._layers(1)):
            x, weights = layer(
                x,
                encoder_out.memory,
                encoder_out.src_pad_mask,
                need_weights=need_weights and i == last,
            )
        return self.decoder_norm(x), weights

    def decode_features(self, tgt_in: Tensor, encoder_out: EncoderOutput) -> Tensor:
        return self._decode(tgt_in, encoder_out)[0]

    def init_decoder_state(self, encoder_out: EncoderOutput) -> TransformerDecoderState:
        memory = encoder_out.memory
        cross_caches = [
            KeyValueCache(*layer.cross_attention.project_key_value(memory), static=True)
            for layer in self.decoder_layers
        ]
        self_caches = [KeyValueCache() for _ in self.decoder_layers]
        return TransformerDecoderState(encoder_out.src_pad_mask, self_caches, cross_caches)

    def decode_step(
        self, prev_tokens: Tensor, state: TransformerDecoderState
    ) -> tuple[Tensor, TransformerDecoderState, Tensor]:
        """Returns the last layer's cross-attention averaged over heads as the attention [B, S]."""
        # Fresh cache objects, so the caller's state is left as it was (beam search reuses it).
        self_caches = [dataclasses.replace(cache) for cache in state.self_caches]
        x = self._embed(self.tgt_embedding, prev_tokens.unsqueeze(1), offset=state.position)
        last = len(self.decoder_layers) - 1
        for i, (layer, self_cache, cross_cache) in enumerate(
            zip(self.decoder_layers, self_caches, state.cross_caches, strict=True)
        ):
            x, weights = layer(
                x, None, state.src_pad_mask, self_cache, cross_cache, need_weights=i == last
            )
        logits = self.output_projection(self.decoder_norm(x)).squeeze(1)  # [B, 1, V] -> [B, V]
        new_state = dataclasses.replace(state, self_caches=self_caches, position=state.position + 1)
        return logits, new_state, weights.mean(dim=1).squeeze(1)  # [B, H, 1, S] -> [B, S]

    def cross_attention(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """The last decoder layer's attention over the source, per head: [heads, T, S]."""
        _, weights = self._decode(tgt_in, self.encode(src), need_weights=True)
        return weights[0]

    def sided_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        encoder = [*self.encoder_layers, self.encoder_norm]
        decoder = [*self.decoder_layers, self.decoder_norm, self.output_projection]
        return encoder, decoder
