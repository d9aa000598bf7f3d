"""Tiny configurations of every model variant, shared by the tests in this directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from models import PAD_ID, Seq2Seq, build_model

# Tensors here are tiny: extra intra-op threads only add overhead (10x slower on a busy machine).
torch.set_num_threads(1)

VOCAB_SIZE = 20

TINY_TRANSFORMER = {
    "family": "transformer",
    "d_model": 32,
    "n_heads": 4,
    "d_ff": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.0,
    "max_len": 64,
}
TINY_RECURRENT = {
    "family": "recurrent",
    "embedding_dim": 16,
    "hidden_size": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.0,
}
TINY_CONVOLUTIONAL = {
    "family": "convolutional",
    "embedding_dim": 16,
    "hidden_size": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "kernel_size": 3,
    "dropout": 0.0,
    "max_len": 64,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "transformer": TINY_TRANSFORMER,
    "transformer-pre-learned": {**TINY_TRANSFORMER, "norm": "pre", "positional": "learned"},
    "lstm-none": {**TINY_RECURRENT, "attention": "none"},
    "lstm-none-context": {
        **TINY_RECURRENT,
        "attention": "none",
        "context_every_step": True,
        "input_feeding": False,
    },
    "lstm-additive": {**TINY_RECURRENT, "attention": "additive"},
    "lstm-multiplicative": {**TINY_RECURRENT, "attention": "multiplicative"},
    "gru-additive": {**TINY_RECURRENT, "cell": "gru", "attention": "additive"},
    "gru-dot-unidirectional": {
        **TINY_RECURRENT,
        "cell": "gru",
        "bidirectional": False,
        "attention": "multiplicative",
        "multiplicative_score": "dot",
        "input_feeding": False,
    },
    "convs2s": TINY_CONVOLUTIONAL,
}


def _make_model(
    variant: str, seed: int = 0, vocab_size: int = VOCAB_SIZE, **overrides: Any
) -> Seq2Seq:
    torch.manual_seed(seed)
    return build_model({**VARIANTS[variant], **overrides}, vocab_size).eval()


def _pad_batch(sentences: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in sentences)
    return torch.tensor([s + [PAD_ID] * (width - len(s)) for s in sentences])


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    """Each tiny variant in turn."""
    return request.param


@pytest.fixture
def make_model() -> Callable[..., Seq2Seq]:
    """make_model(variant, seed=0, vocab_size=20, **overrides): a fresh tiny model in eval mode."""
    return _make_model


@pytest.fixture
def pad_batch() -> Callable[[list[list[int]]], torch.Tensor]:
    """pad_batch(token_lists): right-padded with PAD_ID into [B, max_len]."""
    return _pad_batch
