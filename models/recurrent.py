"""Recurrent encoder-decoder: Sutskever et al. (2014) without attention, Bahdanau et al. (2015) or
Luong et al. (2015, §3.1-3.3, attentional hidden state with input feeding) with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.attention import AdditiveAttention, MultiplicativeAttention
from models.config import require, require_positive, require_probability
from models.embeddings import build_token_embeddings
from models.linear import Linear
from models.seq2seq import EncoderOutput, Seq2Seq
from models.vocab import PAD_ID


@dataclass
class RecurrentConfig:
    """Hyperparameters of :class:`RecurrentSeq2Seq`.

    `hidden_size` is per direction in the encoder, so the encoder outputs have
    hidden_size * 2 features when bidirectional. `attention` picks the score function; with
    either score the decoder attends after its RNN step and outputs Luong's h̃ = tanh(W_c[c; h])
    (as joeynmt does), so the two differ only in how they score.
    """

    family: Literal["recurrent"] = "recurrent"
    cell: Literal["lstm", "gru"] = "lstm"
    embedding_dim: int = 256
    hidden_size: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.2
    attention: Literal["none", "additive", "multiplicative"] = "additive"
    multiplicative_score: Literal["general", "dot"] = "general"
    input_feeding: bool = True
    context_every_step: bool = False  # attention none: Cho et al. (2014) feed c to every step
    tie_embeddings: bool = False

    @property
    def memory_dim(self) -> int:
        """Features per encoder output vector."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    def validate(self, prefix: str = "") -> None:
        sizes = ("embedding_dim", "hidden_size", "encoder_layers", "decoder_layers")
        require_positive(self, sizes, prefix)
        require_probability(self, ("dropout",), prefix)
        require(
            self.attention != "multiplicative"
            or self.multiplicative_score != "dot"
            or not self.bidirectional,
            f"{prefix}multiplicative_score",
            "'dot' needs the decoder hidden_size to equal the encoder output size, which is "
            "2 * hidden_size with a bidirectional encoder; use 'general' or bidirectional: false",
        )
        require(
            not self.context_every_step or self.attention == "none",
            f"{prefix}context_every_step",
            "only for attention: none (attention already gives every step a context)",
        )
        require(
            not self.tie_embeddings or self.embedding_dim == self.hidden_size,
            f"{prefix}tie_embeddings",
            f"the output projection maps hidden_size ({self.hidden_size}) to the vocabulary, so "
            f"tying needs embedding_dim == hidden_size (got {self.embedding_dim})",
        )


@dataclass
class RecurrentDecoderState:
    """Everything one decoder step needs; tensors are batch-first so beams reorder on dim 0."""

    hidden: Tensor  # [B, L, H]
    cell: Tensor | None  # [B, L, H] for LSTM, None for GRU
    attentional: Tensor  # [B, H] the previous step's output vector h̃, fed back as input
    memory: Tensor | None  # [B, S, D_mem]; None without attention, so the decoder cannot see it
    summary: Tensor | None  # [B, D_mem] the fixed-length context fed to every step, or None
    projected_keys: Tensor | None  # [B, S, *] the key-only part of the attention score
    src_pad_mask: Tensor | None  # [B, S]


class RecurrentSeq2Seq(Seq2Seq):
    """(Bi)directional RNN encoder, a bridge to the initial decoder state, a stepwise decoder."""

    graph_safe = False  # packing the source reads its lengths on the host

    def __init__(self, config: RecurrentConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.config = config
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        hidden = config.hidden_size
        self.src_embedding, self.tgt_embedding, self.output_projection = build_token_embeddings(
            src_vocab_size,
            tgt_vocab_size,
            config.embedding_dim,
            hidden,
            config.tie_embeddings,
            scale=False,
        )
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.encoder = rnn_class(
            config.embedding_dim,
            hidden,
            num_layers=config.encoder_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
        )
        # The bridge maps the encoder summary to the initial hidden (and cell) of every layer.
        self.state_parts = 2 if config.cell == "lstm" else 1
        self.bridge = Linear(config.memory_dim, self.state_parts * config.decoder_layers * hidden)
        decoder_input = config.embedding_dim + (hidden if config.input_feeding else 0)
        decoder_input += config.memory_dim if config.context_every_step else 0
        self.decoder = rnn_class(
            decoder_input,
            hidden,
            num_layers=config.decoder_layers,
            batch_first=True,
            dropout=config.dropout if config.decoder_layers > 1 else 0.0,
        )
        if config.attention == "additive":
            self.attention = AdditiveAttention(hidden, config.memory_dim, hidden)
        elif config.attention == "multiplicative":
            self.attention = MultiplicativeAttention(
                hidden, config.memory_dim, config.multiplicative_score
            )
        else:
            self.attention = None
        # Luong's attentional hidden state h̃ = tanh(W_c [c; h]); without attention, c is the
        # fixed-length summary when it is fed to every step.
        self.combine = (
            Linear(config.memory_dim + hidden, hidden, bias=False)
            if self.attention is not None or config.context_every_step
            else None
        )
        self.output_dropout = nn.Dropout(config.dropout)

    def encode(self, src: Tensor) -> EncoderOutput:
        src_pad_mask = src == PAD_ID  # [B, S]
        lengths = (~src_pad_mask).sum(dim=1).cpu()
        embedded = self.embedding_dropout(self.src_embedding(src))  # [B, S, E]
        # Packing makes the RNN stop at each sentence's end, so padding never reaches any state.
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        packed_outputs, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=src.size(1))
        final_hidden = final[0] if isinstance(final, tuple) else final  # [layers * dirs, B, H]
        directions = 2 if self.config.bidirectional else 1
        top = final_hidden[-directions:]  # [dirs, B, H] the top layer's last forward/backward state
        final_state = top.transpose(0, 1).reshape(src.size(0), -1)  # [B, dirs * H]
        return EncoderOutput(memory=memory, src_pad_mask=src_pad_mask, final_state=final_state)

    def init_decoder_state(self, encoder_out: EncoderOutput) -> RecurrentDecoderState:
        batch = encoder_out.final_state.size(0)
        layers, hidden = self.config.decoder_layers, self.config.hidden_size
        initial = torch.tanh(self.bridge(encoder_out.final_state))
        initial = initial.view(batch, self.state_parts, layers, hidden)  # [B, parts, L, H]
        attentional = initial.new_zeros(batch, hidden)  # h̃₀ = 0
        summary = encoder_out.final_state if self.config.context_every_step else None
        if self.attention is None:
            # The fixed-length bottleneck: the decoder gets the final state and nothing else.
            memory = projected_keys = src_pad_mask = None
        else:
            memory, src_pad_mask = encoder_out.memory, encoder_out.src_pad_mask
            projected_keys = self.attention.project_keys(memory)
        cell = initial[:, 1] if self.state_parts == 2 else None
        return RecurrentDecoderState(
            initial[:, 0], cell, attentional, memory, summary, projected_keys, src_pad_mask
        )

    def decode_step(
        self, prev_tokens: Tensor, state: RecurrentDecoderState
    ) -> tuple[Tensor, RecurrentDecoderState, Tensor | None]:
        attentional, new_state, weights = self._step(prev_tokens, state)
        return self.output_projection(self._features(attentional)), new_state, weights

    def _features(self, attentional: Tensor) -> Tensor:
        """h̃ [..., H] -> the output projection's input [..., H]."""
        return self.output_dropout(attentional)

    def _step(
        self, prev_tokens: Tensor, state: RecurrentDecoderState
    ) -> tuple[Tensor, RecurrentDecoderState, Tensor | None]:
        """One decoder step up to h̃ [B, H] (the output projection is left to the caller)."""
        embedded = self.embedding_dropout(self.tgt_embedding(prev_tokens))  # [B, E]
        if self.config.input_feeding:
            embedded = torch.cat([embedded, state.attentional], dim=-1)  # [B, E + H]
        if state.summary is not None:
            embedded = torch.cat([embedded, state.summary], dim=-1)  # [B, E (+ H) + D_mem]
        hidden = state.hidden.transpose(0, 1).contiguous()  # [L, B, H] as nn.LSTM/GRU want it
        if state.cell is not None:
            hidden = (hidden, state.cell.transpose(0, 1).contiguous())
        output, hidden = self.decoder(embedded.unsqueeze(1), hidden)  # output: [B, 1, H]
        output = output.squeeze(1)  # [B, H]
        if self.attention is None:
            context, weights = state.summary, None
        else:
            context, weights = self.attention(
                output, state.memory, state.src_pad_mask, state.projected_keys
            )
        attentional = self._combine(context, output)  # [B, H]
        hidden, cell = hidden if isinstance(hidden, tuple) else (hidden, None)
        new_state = RecurrentDecoderState(
            hidden.transpose(0, 1),  # [B, L, H]
            None if cell is None else cell.transpose(0, 1),
            attentional,
            state.memory,
            state.summary,
            state.projected_keys,
            state.src_pad_mask,
        )
        return attentional, new_state, weights

    def _decode(self, tgt_in: Tensor, encoder_out: EncoderOutput) -> tuple[Tensor, Tensor | None]:
        """-> features [B, T, H] and attention [B, T, S] (None without attention)."""
        state = self.init_decoder_state(encoder_out)
        if not self.config.input_feeding:
            return self._decode_parallel(tgt_in, state)
        step_outputs, step_weights = [], []
        # Input feeding makes every step depend on the previous output, so decode step by step;
        # the output projection, which nothing feeds back, runs once over all steps.
        for position in range(tgt_in.size(1)):
            attentional, state, weights = self._step(tgt_in[:, position], state)
            step_outputs.append(attentional)
            step_weights.append(weights)
        attention = None if self.attention is None else torch.stack(step_weights, dim=1)
        return self._features(torch.stack(step_outputs, dim=1)), attention  # [B, T, H]

    def _decode_parallel(
        self, tgt_in: Tensor, state: RecurrentDecoderState
    ) -> tuple[Tensor, Tensor | None]:
        """Without input feeding no step reads an earlier output, so the whole target goes through
        the RNN in one (cuDNN) call and attention scores every position at once.

        Target padding sits at the end, so it never reaches an earlier position's state.
        """
        embedded = self.embedding_dropout(self.tgt_embedding(tgt_in))  # [B, T, E]
        summary = None
        if state.summary is not None:  # the same fixed-length context at every position
            summary = state.summary.unsqueeze(1).expand(-1, tgt_in.size(1), -1)  # [B, T, D_mem]
            embedded = torch.cat([embedded, summary], dim=-1)
        hidden = state.hidden.transpose(0, 1).contiguous()  # [L, B, H]
        if state.cell is not None:
            hidden = (hidden, state.cell.transpose(0, 1).contiguous())
        output, _ = self.decoder(embedded, hidden)  # [B, T, H]
        if self.attention is None:
            return self._features(self._combine(summary, output)), None
        context, weights = self.attention.attend_all(
            output, state.memory, state.src_pad_mask, state.projected_keys
        )  # [B, T, D_mem], [B, T, S]
        return self._features(self._combine(context, output)), weights

    def _combine(self, context: Tensor | None, output: Tensor) -> Tensor:
        """h̃ = tanh(W_c [c; h]), or the RNN output itself when there is no context."""
        if context is None:
            return output
        return torch.tanh(self.combine(torch.cat([context, output], dim=-1)))

    def decode_features(self, tgt_in: Tensor, encoder_out: EncoderOutput) -> Tensor:
        return self._decode(tgt_in, encoder_out)[0]

    def cross_attention(self, src: Tensor, tgt_in: Tensor) -> Tensor | None:
        """The attention over the source, [1, T, S] (a single "head"), or None without attention."""
        return self._decode(tgt_in, self.encode(src))[1]

    def sided_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        # The bridge runs once per sentence, not per token; it counts on the side it starts.
        decoder = [self.bridge, self.decoder, self.attention, self.combine, self.output_projection]
        return [self.encoder], [module for module in decoder if module is not None]
