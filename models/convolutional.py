"""The convolutional encoder-decoder of Gehring et al. (2017), "Convolutional Sequence to Sequence
Learning": gated convolutions (§3.2), multi-step attention (§3.3), scaled residuals (§3.4, §3.5).

Weight normalization (§3.5) is skipped: with the paper's fan-in initialisation and √0.5 sums the
activations keep their scale 20 layers deep (tests/models/test_convolutional.py), the pipeline
trains with Adam, and every layer stays a plain ``Linear`` / ``nn.Conv1d``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import masked_softmax
from models.config import require, require_positive, require_probability
from models.embeddings import LearnedPositionalEncoding, build_token_embeddings
from models.linear import Linear
from models.seq2seq import EncoderOutput, Seq2Seq
from models.vocab import PAD_ID

# Every sum of two branches is multiplied by √0.5, which keeps its variance that of one (§3.4).
SQRT_HALF = math.sqrt(0.5)


@dataclass
class ConvS2SConfig:
    """Hyperparameters of :class:`ConvS2SSeq2Seq`.

    Defaults are the paper's sizes (§4.2: 512 hidden units, 512-dimensional embeddings) with its
    WMT'16 English-Romanian depth (§5.1: 20 layers of kernel width 3 on each side).
    `hidden_size` is the number of channels of every convolution; `embedding_dim` is the size of
    the token and position embeddings, of the attention's dot products and of the decoder output
    before the vocabulary projection (so `tie_embeddings` only needs a joint vocabulary).
    The encoder's kernel must be odd, so that its output at position j sees as many tokens on the
    left as on the right; the decoder's may be any width (None: the encoder's).
    """

    family: Literal["convolutional"] = "convolutional"
    embedding_dim: int = 512
    hidden_size: int = 512
    encoder_layers: int = 20
    decoder_layers: int = 20
    kernel_size: int = 3
    decoder_kernel_size: int | None = None
    dropout: float = 0.2
    max_len: int = 1024
    tie_embeddings: bool = False

    @property
    def target_kernel_size(self) -> int:
        """The width of the decoder's convolutions."""
        return self.kernel_size if self.decoder_kernel_size is None else self.decoder_kernel_size

    def validate(self, prefix: str = "") -> None:
        sizes = (
            "embedding_dim",
            "hidden_size",
            "encoder_layers",
            "decoder_layers",
            "kernel_size",
            "max_len",
        )
        require_positive(self, sizes, prefix)
        require(self.kernel_size % 2 == 1, f"{prefix}kernel_size", "must be odd")
        require(
            self.decoder_kernel_size is None or self.decoder_kernel_size > 0,
            f"{prefix}decoder_kernel_size",
            "must be > 0 (or null: the encoder's kernel_size)",
        )
        require_probability(self, ("dropout",), prefix)


def build_linear(in_features: int, out_features: int, dropout: float = 0.0) -> Linear:
    """A linear layer initialised as §3.5: N(0, √(p / n_in)), p the retain probability of the
    dropout on its input (1 without one), and zero bias: the output variance is the input's."""
    layer = Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=math.sqrt((1.0 - dropout) / in_features))
    nn.init.zeros_(layer.bias)
    return layer


class GatedConvolution(nn.Module):
    """A 1-d convolution to 2·channels followed by a gated linear unit, A ⊗ σ(B) (§3.2).

    The convolution has no padding of its own: the caller pads (the encoder on both sides, the
    decoder on the left), so that the output has one vector per unpadded position.
    """

    def __init__(self, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size)
        # §3.5: a GLU keeps about a quarter of its input's variance and dropout on the input
        # scales it by the retain probability p, hence std √(4p / n_in).
        fan_in = kernel_size * channels
        nn.init.normal_(self.conv.weight, std=math.sqrt(4.0 * (1.0 - dropout) / fan_in))
        nn.init.zeros_(self.conv.bias)

    def forward(self, padded: Tensor) -> Tensor:
        """padded: [B, T + kernel_size - 1, H] -> [B, T, H]."""
        out = self.conv(padded.transpose(1, 2))  # [B, H, T + k - 1] -> [B, 2H, T]
        return F.glu(out, dim=1).transpose(1, 2)  # [B, H, T] -> [B, T, H]


class EncoderLayer(nn.Module):
    """Dropout, a gated convolution over the whole source and a scaled residual (§3.2, §3.4)."""

    def __init__(self, config: ConvS2SConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.convolution = GatedConvolution(config.hidden_size, config.kernel_size, config.dropout)

    def forward(self, x: Tensor, src_pad_mask: Tensor) -> Tensor:
        """x: [B, S, H], src_pad_mask: [B, S] -> [B, S, H]."""
        # Zero the padding, so that a position next to it sees what the sequence's end would show.
        h = self.dropout(x.masked_fill(src_pad_mask.unsqueeze(-1), 0.0))
        side = (self.convolution.kernel_size - 1) // 2
        h = F.pad(h, (0, 0, side, side))  # [B, S + k - 1, H]
        return (self.convolution(h) + x) * SQRT_HALF


class MultiStepAttention(nn.Module):
    """The attention of one decoder layer (§3.3), with the conditional input added to its output.

    d_i = (W_d h_i + b_d + g_i)·√0.5 combines the layer's state with the previous target token's
    embedding g_i; a_ij = softmax_j(d_i · z_j) scores the encoder outputs z_j, and the conditional
    input c_i = Σ_j a_ij (z_j + e_j) also reads the source embeddings e_j. c_i is multiplied by
    m·√(1/m), m the number of source tokens, as if its weights were uniform (§3.4).
    """

    def __init__(self, hidden_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.query_projection = build_linear(hidden_size, embedding_dim)  # W_d, b_d
        self.context_projection = build_linear(embedding_dim, hidden_size)

    def forward(
        self,
        h: Tensor,
        target_embedding: Tensor,
        memory: Tensor,
        values: Tensor,
        src_pad_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """h: [B, T, H], target_embedding: [B, T, E], memory and values: [B, S, E],
        src_pad_mask: [B, S] -> ((h + W c)·√0.5 [B, T, H], weights [B, T, S])."""
        query = (self.query_projection(h) + target_embedding) * SQRT_HALF  # [B, T, E]
        scores = query @ memory.transpose(1, 2)  # [B, T, E] @ [B, E, S] -> [B, T, S]
        weights = masked_softmax(scores, ~src_pad_mask.unsqueeze(1))  # [B, T, S]
        source_length = (~src_pad_mask).sum(dim=1).to(values.dtype)  # [B]
        context = (weights @ values) * source_length.sqrt()[:, None, None]  # [B, T, E]
        return (self.context_projection(context) + h) * SQRT_HALF, weights


class DecoderLayer(nn.Module):
    """Dropout, a causal gated convolution, multi-step attention and a scaled residual."""

    def __init__(self, config: ConvS2SConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.convolution = GatedConvolution(
            config.hidden_size, config.target_kernel_size, config.dropout
        )
        self.attention = MultiStepAttention(config.hidden_size, config.embedding_dim)

    def forward(
        self,
        x: Tensor,
        history: Tensor,
        target_embedding: Tensor,
        memory: Tensor,
        values: Tensor,
        src_pad_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, T, H], history: [B, k - 1, H] the convolution inputs before x (zeros at the
        start) -> (output [B, T, H], attention [B, T, S], the last k - 1 inputs [B, k - 1, H]).

        Position t sees inputs t - k + 1 .. t only, so no target token reaches an earlier output;
        decoding one token at a time passes the returned history on to the next step.
        """
        padded = torch.cat([history, self.dropout(x)], dim=1)  # [B, k - 1 + T, H]
        h = self.convolution(padded)  # [B, T, H]
        h, weights = self.attention(h, target_embedding, memory, values, src_pad_mask)
        new_history = padded[:, padded.size(1) - history.size(1) :]  # [B, k - 1, H]
        return (h + x) * SQRT_HALF, weights, new_history


class _ScaleGradient(torch.autograd.Function):
    """The identity whose backward pass multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


@dataclass
class ConvS2SEncoderOutput(EncoderOutput):
    """The encoder outputs z_j (`memory`) and what attention averages, (z_j + e_j)·√0.5."""

    values: Tensor | None = None  # [B, S, E]


@dataclass
class ConvS2SDecoderState:
    """Per decoder layer, the last kernel_size - 1 inputs of its convolution; batch-first."""

    memory: Tensor  # [B, S, E] the encoder outputs z
    values: Tensor  # [B, S, E] (z + e)·√0.5
    src_pad_mask: Tensor  # [B, S]
    histories: list[Tensor]  # per layer [B, k - 1, H]
    position: int = 0  # index of the next target position


class ConvS2SSeq2Seq(Seq2Seq):
    """Embeddings + learned positions, a convolutional encoder, a convolutional decoder with one
    attention per layer, and a projection to the target vocabulary (§3, Figure 1).

    The attention returned by :meth:`decode_step` is the average over the decoder layers;
    :meth:`cross_attention` returns every layer's ([decoder_layers, T, S], layers as "heads").
    """

    graph_safe = True  # no data-dependent shapes: padding is masked, never packed

    def __init__(self, config: ConvS2SConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.config = config
        embedding_dim, hidden, dropout = config.embedding_dim, config.hidden_size, config.dropout
        self.src_embedding, self.tgt_embedding, self.output_projection = build_token_embeddings(
            src_vocab_size,
            tgt_vocab_size,
            embedding_dim,
            embedding_dim,
            config.tie_embeddings,
            scale=False,
        )
        self.src_positions = LearnedPositionalEncoding(embedding_dim, config.max_len)
        self.tgt_positions = LearnedPositionalEncoding(embedding_dim, config.max_len)
        with torch.no_grad():  # §3.5: every embedding ~ N(0, 0.1)
            for embedding in (self.src_embedding.embedding, self.tgt_embedding.embedding):
                nn.init.normal_(embedding.weight, std=0.1)
                embedding.weight[PAD_ID].zero_()
            for positions in (self.src_positions, self.tgt_positions):
                nn.init.normal_(positions.embedding.weight, std=0.1)
        if not config.tie_embeddings:  # a tied projection keeps the embedding's initialisation
            nn.init.normal_(
                self.output_projection.weight, std=math.sqrt((1.0 - dropout) / embedding_dim)
            )
        nn.init.zeros_(self.output_projection.bias)
        self.dropout = nn.Dropout(dropout)

        self.encoder_input = build_linear(embedding_dim, hidden, dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(config) for _ in range(config.encoder_layers)
        )
        self.encoder_output = build_linear(hidden, embedding_dim)
        self.decoder_input = build_linear(embedding_dim, hidden, dropout)
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.decoder_layers)
        )
        self.decoder_output = build_linear(hidden, embedding_dim)

    def _embed(
        self, embedding: nn.Module, positions: nn.Module, tokens: Tensor, offset: int
    ) -> Tensor:
        """tokens [B, T] -> w + p [B, T, E] (§3.1), positions counted from `offset`."""
        return self.dropout(positions(embedding(tokens), offset=offset))

    def encode(self, src: Tensor) -> ConvS2SEncoderOutput:
        src_pad_mask = src == PAD_ID  # [B, S]
        embedded = self._embed(self.src_embedding, self.src_positions, src, 0)  # e: [B, S, E]
        x = self.encoder_input(embedded)  # [B, S, H]
        for layer in self.encoder_layers:
            x = layer(x, src_pad_mask)
        memory = self.encoder_output(x).masked_fill(src_pad_mask.unsqueeze(-1), 0.0)  # z: [B, S, E]
        # §3.4: every decoder layer's attention sends gradient into z, so scale it down (by
        # 1 / (2 · attentions), as fairseq's fconv does); the source embedding e is left out.
        memory = _ScaleGradient.apply(memory, 1.0 / (2.0 * self.config.decoder_layers))
        values = (memory + embedded) * SQRT_HALF  # [B, S, E]
        return ConvS2SEncoderOutput(memory=memory, src_pad_mask=src_pad_mask, values=values)

    def init_decoder_state(self, encoder_out: EncoderOutput) -> ConvS2SDecoderState:
        memory = encoder_out.memory
        # Zeros: the left padding the causal convolution sees before the first target token.
        history = memory.new_zeros(
            memory.size(0), self.config.target_kernel_size - 1, self.config.hidden_size
        )  # [B, k - 1, H]
        return ConvS2SDecoderState(
            memory=memory,
            values=_values(encoder_out),
            src_pad_mask=encoder_out.src_pad_mask,
            histories=[history for _ in self.decoder_layers],
        )

    def _decode_from(
        self, tgt_in: Tensor, state: ConvS2SDecoderState, need_weights: bool = True
    ) -> tuple[Tensor, Tensor | None, ConvS2SDecoderState]:
        """tgt_in [B, T] after the positions in `state` -> (the output projection's input
        [B, T, E], attention per layer [B, L, T, S] if `need_weights` else None, the state after
        tgt_in).

        decode and decode_step share this one path, so their logits agree by construction.
        """
        target_embedding = self._embed(
            self.tgt_embedding, self.tgt_positions, tgt_in, state.position
        )  # g: [B, T, E]
        x = self.decoder_input(target_embedding)  # [B, T, H]
        histories, layer_weights = [], []
        for layer, history in zip(self.decoder_layers, state.histories, strict=True):
            x, weights, history = layer(
                x, history, target_embedding, state.memory, state.values, state.src_pad_mask
            )
            histories.append(history)
            layer_weights.append(weights)
        out = self.dropout(self.decoder_output(x))  # [B, T, E]
        new_state = dataclasses.replace(
            state, histories=histories, position=state.position + tgt_in.size(1)
        )
        attention = torch.stack(layer_weights, dim=1) if need_weights else None
        return out, attention, new_state

    def decode_features(self, tgt_in: Tensor, encoder_out: EncoderOutput) -> Tensor:
        state = self.init_decoder_state(encoder_out)
        return self._decode_from(tgt_in, state, need_weights=False)[0]

    def decode_step(
        self, prev_tokens: Tensor, state: ConvS2SDecoderState
    ) -> tuple[Tensor, ConvS2SDecoderState, Tensor]:
        """Returns the attention averaged over the decoder layers [B, S]."""
        features, weights, new_state = self._decode_from(prev_tokens.unsqueeze(1), state)
        attention = weights.mean(dim=1).squeeze(1)  # [B, L, 1, S] -> [B, S]
        return self.output_projection(features.squeeze(1)), new_state, attention

    def cross_attention(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Every decoder layer's attention over the source: [decoder_layers, T, S]."""
        state = self.init_decoder_state(self.encode(src))
        return self._decode_from(tgt_in, state)[1][0]

    def sided_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        encoder = [self.encoder_input, *self.encoder_layers, self.encoder_output]
        decoder = [
            self.decoder_input,
            *self.decoder_layers,
            self.decoder_output,
            self.output_projection,
        ]
        return encoder, decoder


def _values(encoder_out: EncoderOutput) -> Tensor:
    """The attention values of a ConvS2S encoder output; other encoders have none."""
    values = getattr(encoder_out, "values", None)
    if values is None:
        raise TypeError("ConvS2S decodes from the output of its own encode(): it needs `values`")
    return values
