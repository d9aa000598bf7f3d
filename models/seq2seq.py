"""The encoder-decoder interface (Sutskever et al. 2014) that search and training share."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass
class EncoderOutput:
    """What the decoder needs from the encoder."""

    memory: Tensor  # [B, S, D] one vector per source token
    src_pad_mask: Tensor  # [B, S] True at padding
    final_state: Tensor | None = None  # [B, D_final] recurrent: the summary the decoder starts from


def select_batch(value: Any, index: Tensor) -> Any:
    """index_select along dim 0 of every tensor inside nested dataclasses, lists and tuples."""
    if isinstance(value, Tensor):
        return value.index_select(0, index)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: select_batch(getattr(value, f.name), index) for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, (list, tuple)):
        return type(value)(select_batch(item, index) for item in value)
    return value


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Parameters of `modules`, each shared (tied) one counted once."""
    unique = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in unique.values())


class Seq2Seq(nn.Module, ABC):
    """An encoder-decoder translating src [B, S] into target logits; decoder states are batch-first.

    Padding uses PAD_ID in both src and tgt; the masks are derived inside the model.
    """

    # True when teacher-forced training never waits on the host (no data-dependent shapes), so
    # its forward and backward pass can be captured as CUDA graphs (pipelines.training.cuda_graphs).
    graph_safe: bool = False
    # Every model ends in a linear map from the decoder's features to the target vocabulary.
    output_projection: nn.Module

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src [B, S], tgt_in [B, T] (BOS-prefixed) -> logits [B, T, V]."""
        return self.decode(tgt_in, self.encode(src))

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: the decoder's features [B, T, D] that ``output_projection`` maps to
        forward's logits (a fused loss takes them from here, without the logits)."""
        return self.decode_features(tgt_in, self.encode(src))

    @abstractmethod
    def encode(self, src: Tensor) -> EncoderOutput:
        """src [B, S] -> the encoder output."""

    def decode(self, tgt_in: Tensor, encoder_out: EncoderOutput) -> Tensor:
        """tgt_in [B, T] -> logits [B, T, V] for every position at once."""
        return self.output_projection(self.decode_features(tgt_in, encoder_out))

    @abstractmethod
    def decode_features(self, tgt_in: Tensor, encoder_out: EncoderOutput) -> Tensor:
        """tgt_in [B, T] -> the features [B, T, D] that ``output_projection`` maps to logits."""

    @abstractmethod
    def init_decoder_state(self, encoder_out: EncoderOutput) -> Any:
        """The state before the first decode_step; a dataclass of batch-first tensors."""

    @abstractmethod
    def decode_step(self, prev_tokens: Tensor, state: Any) -> tuple[Tensor, Any, Tensor | None]:
        """prev_tokens [B] -> (logits [B, V], next state, source attention [B, S] or None).

        The logits equal those of :meth:`decode` at the same position; `state` is not modified.
        """

    def reorder_state(self, state: Any, index: Tensor) -> Any:
        """Select (and repeat) batch rows of a decoder state; beam search uses this."""
        return select_batch(state, index)

    @abstractmethod
    def cross_attention(self, src: Tensor, tgt_in: Tensor) -> Tensor | None:
        """src [1, S], tgt_in [1, T] -> source attention [heads, T, S] for plots, or None."""

    def compile_for_training(self, **options: Any) -> None:
        """Compile the model for training with ``torch.compile`` (`options` are its keywords).

        Here the whole model, in place (``nn.Module.compile``): parameter names, and so
        checkpoints and exports, stay as they were. Models with repeated layers compile those
        regions instead.
        """
        self.compile(**options)

    def num_parameters(self) -> int:
        """Trainable and frozen parameters, each shared (tied) matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    @abstractmethod
    def sided_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The modules whose parameters multiply each source / target token's activations:
        (encoder side, decoder side).

        Embedding lookups are no matrix products and are left out; the output projection (tied
        to an embedding or not) is on the decoder side.
        """

    def sided_parameters(self) -> tuple[int, int]:
        """(encoder, decoder) parameters of :meth:`sided_modules`, each side counting a shared
        parameter once: the weights a source / target token's activations pass through."""
        encoder, decoder = self.sided_modules()
        return count_parameters(encoder), count_parameters(decoder)
