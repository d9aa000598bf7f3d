"""Step-wise decoding over any Seq2Seq: the hypothesis type, the per-step rules and greedy search.

Shared by validation during training (greedy BLEU) and by inference (beam search builds on the
same step rules), so that both decode alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from models.seq2seq import Seq2Seq
from models.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    """A translation: tokens without BOS/EOS, its score and its attention [len(tokens) + 1, S]."""

    tokens: list[int]
    score: float
    attention: Tensor | None = None


@contextmanager
def inference(model: Seq2Seq) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def max_lengths(src: Tensor, max_len_margin: int) -> Tensor:
    """Per sentence, the most output tokens (EOS included): source length + margin."""
    return (src != PAD_ID).sum(dim=1) + max_len_margin  # [B]


def next_log_probs(logits: Tensor, at_limit: Tensor) -> Tensor:
    """log p(next token) with PAD and BOS forbidden, and only EOS allowed where `at_limit`."""
    log_probs = logits.float().log_softmax(dim=-1)  # [N, V]
    log_probs[:, [PAD_ID, BOS_ID]] = float("-inf")
    not_eos = torch.ones_like(log_probs[0], dtype=torch.bool)
    not_eos[EOS_ID] = False
    return log_probs.masked_fill(at_limit[:, None] & not_eos, float("-inf"))


def greedy_search(
    model: Seq2Seq, src: Tensor, max_len_margin: int, return_attention: bool = False
) -> list[Hypothesis]:
    """The most probable token at every step; score is the sum of log-probabilities."""
    with inference(model):
        batch = src.size(0)
        limits = max_lengths(src, max_len_margin)
        state = model.init_decoder_state(model.encode(src))
        prev_tokens = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        scores = torch.zeros(batch, device=src.device)
        steps, attentions = [], []
        for step in range(int(limits.max())):
            logits, state, attention = model.decode_step(prev_tokens, state)
            log_probs = next_log_probs(logits, limits - 1 == step)
            best_log_probs, prev_tokens = log_probs.max(dim=-1)  # [B]
            scores += best_log_probs.masked_fill(finished, 0.0)
            steps.append(prev_tokens.masked_fill(finished, PAD_ID))
            attentions.append(attention)
            finished |= prev_tokens == EOS_ID
            if finished.all():
                break
        tokens = torch.stack(steps, dim=1).tolist()  # [B, steps]
        hypotheses = []
        for i in range(batch):
            length = tokens[i].index(EOS_ID)
            attention = None
            if return_attention and attentions[0] is not None:
                attention = torch.stack([a[i] for a in attentions[: length + 1]])  # [len + 1, S]
            hypotheses.append(Hypothesis(tokens[i][:length], float(scores[i]), attention))
        return hypotheses
