"""Label-smoothed cross-entropy per target token (Szegedy et al., 2016; Vaswani et al., 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from models import PAD_ID


def label_smoothed_nll(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed cross-entropy and summed plain NLL over non-pad targets."""
    logits = logits.float().flatten(0, 1)  # [B*T, V]
    target = target.flatten()  # [B*T]
    smoothed = F.cross_entropy(
        logits, target, ignore_index=PAD_ID, label_smoothing=smoothing, reduction="sum"
    )
    nll = F.cross_entropy(logits, target, ignore_index=PAD_ID, reduction="sum")
    return smoothed, nll


def token_mean_loss(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """The training loss (label-smoothed cross-entropy per non-pad target token) and, detached,
    the plain NLL per token."""
    smoothed, nll = label_smoothed_nll(logits, target, smoothing)
    ntokens = (target != PAD_ID).sum()
    return smoothed / ntokens, (nll / ntokens).detach()
