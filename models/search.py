"""Greedy and beam search over any Seq2Seq, with the GNMT length penalty (Wu et al. 2016, §7)."""

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
def _inference(model: Seq2Seq) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """lp(Y) = ((5 + |Y|) / 6)^α; α = 0 scores by the plain sum of log-probabilities."""
    return ((5.0 + length) / 6.0) ** alpha


def _max_lengths(src: Tensor, max_len_margin: int) -> Tensor:
    """Per sentence, the most output tokens (EOS included): source length + margin."""
    return (src != PAD_ID).sum(dim=1) + max_len_margin  # [B]


def _next_log_probs(logits: Tensor, at_limit: Tensor) -> Tensor:
    """log p(next token) with PAD and BOS forbidden, and only EOS allowed where `at_limit`."""
    log_probs = logits.float().log_softmax(dim=-1)  # [N, V]
    log_probs[:, [PAD_ID, BOS_ID]] = float("-inf")
    not_eos = torch.ones_like(log_probs[0], dtype=torch.bool)
    not_eos[EOS_ID] = False
    return log_probs.masked_fill(at_limit[:, None] & not_eos, float("-inf"))


def greedy_search(
    model: Seq2Seq, src: Tensor, max_len_margin: int = 50, return_attention: bool = False
) -> list[Hypothesis]:
    """The most probable token at every step; score is the sum of log-probabilities."""
    with _inference(model):
        batch = src.size(0)
        max_lengths = _max_lengths(src, max_len_margin)
        state = model.init_decoder_state(model.encode(src))
        prev_tokens = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        scores = torch.zeros(batch, device=src.device)
        steps, attentions = [], []
        for step in range(int(max_lengths.max())):
            logits, state, attention = model.decode_step(prev_tokens, state)
            log_probs = _next_log_probs(logits, max_lengths - 1 == step)
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


def beam_search(
    model: Seq2Seq,
    src: Tensor,
    beam_size: int = 5,
    length_penalty: float = 0.6,
    max_len_margin: int = 50,
    return_attention: bool = False,
) -> list[Hypothesis]:
    """The best of `beam_size` hypotheses per sentence, all sentences' beams decoded as one batch.

    A hypothesis that emits EOS leaves the beam and is kept; a sentence is done once `beam_size`
    hypotheses have finished (or at its length limit). Score: sum of log-probabilities / lp(|Y|).
    """
    with _inference(model):
        batch, beam = src.size(0), beam_size
        device = src.device
        max_lengths = _max_lengths(src, max_len_margin)
        state = model.init_decoder_state(model.encode(src))
        state = model.reorder_state(
            state, torch.arange(batch, device=device).repeat_interleave(beam)
        )
        # Only the first copy of each sentence is live at the start, so beams do not duplicate.
        scores = torch.full((batch, beam), float("-inf"), device=device)
        scores[:, 0] = 0.0
        prev_tokens = torch.full((batch * beam,), BOS_ID, dtype=torch.long, device=device)
        history = torch.empty(batch * beam, 0, dtype=torch.long, device=device)  # [B*K, t]
        attention_history: Tensor | None = None  # [B*K, t, S]
        finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
        done = [False] * batch
        last_steps = (max_lengths - 1).tolist()  # the step at which EOS is forced
        for step in range(int(max_lengths.max())):
            logits, state, attention = model.decode_step(prev_tokens, state)
            at_limit = (max_lengths - 1 == step).repeat_interleave(beam)  # [B*K]
            log_probs = _next_log_probs(logits, at_limit)  # [B*K, V]
            vocab = log_probs.size(-1)
            candidates = (scores.view(-1, 1) + log_probs).view(batch, beam * vocab)  # [B, K*V]
            # 2K candidates: each beam has one EOS, so at least K of them continue.
            top_scores, top_index = candidates.topk(2 * beam, dim=1)  # [B, 2K]
            top_beam = top_index // vocab  # [B, 2K]
            top_token = top_index % vocab  # [B, 2K]
            top_row = top_beam + torch.arange(batch, device=device).unsqueeze(1) * beam  # [B, 2K]
            if return_attention and attention is not None:
                step_attention = attention.unsqueeze(1)  # [B*K, 1, S]
                attention_history = (
                    step_attention
                    if attention_history is None
                    else torch.cat([attention_history, step_attention], dim=1)
                )
            is_eos = top_token == EOS_ID
            # An EOS among the best K candidates finishes a hypothesis (Wu et al. 2016, §7).
            finishing = is_eos & top_scores.isfinite()
            finishing[:, beam:] = False
            # One transfer per step, not one per hypothesis (each would sync a GPU).
            pairs = [(i, j) for i, j in finishing.nonzero().tolist() if not done[i]]
            if pairs:
                score_list, row_list = top_scores.tolist(), top_row.tolist()
                finished_rows = [row_list[i][j] for i, j in pairs]
                prefixes = history[finished_rows].tolist()
                for (i, j), row, prefix in zip(pairs, finished_rows, prefixes, strict=True):
                    finished[i].append(
                        Hypothesis(
                            prefix,
                            score_list[i][j] / gnmt_length_penalty(step + 1, length_penalty),
                            None if attention_history is None else attention_history[row].clone(),
                        )
                    )
            for i in range(batch):
                done[i] = done[i] or len(finished[i]) >= beam or step >= last_steps[i]
            if all(done):
                break
            # The best K candidates that did not end continue as the new beams, in score order.
            keep = (~is_eos).float().argsort(dim=1, descending=True, stable=True)[:, :beam]
            scores = top_scores.gather(1, keep)  # [B, K]
            rows = top_row.gather(1, keep).view(-1)  # [B*K]
            prev_tokens = top_token.gather(1, keep).view(-1)  # [B*K]
            history = torch.cat([history[rows], prev_tokens.unsqueeze(1)], dim=1)  # [B*K, t+1]
            if attention_history is not None:
                attention_history = attention_history[rows]
            state = model.reorder_state(state, rows)
        return [max(hypotheses, key=lambda h: h.score) for hypotheses in finished]
