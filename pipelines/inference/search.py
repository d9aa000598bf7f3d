"""Batched beam search over any Seq2Seq, with the GNMT length penalty (Wu et al. 2016, §7)."""

from __future__ import annotations

import torch
from torch import Tensor

from models.seq2seq import Seq2Seq
from models.vocab import BOS_ID, EOS_ID
from pipelines.core.decoding import Hypothesis, inference, max_lengths, next_log_probs
from pipelines.core.params import DecodingSettings


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """lp(Y) = ((5 + |Y|) / 6)^α; α = 0 scores by the plain sum of log-probabilities."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(
    model: Seq2Seq,
    src: Tensor,
    beam_size: int = DecodingSettings.beam_size,
    length_penalty: float = DecodingSettings.length_penalty,
    max_len_margin: int = DecodingSettings.max_len_margin,
    return_attention: bool = False,
) -> list[Hypothesis]:
    """The best of `beam_size` hypotheses per sentence, all sentences' beams decoded as one batch.

    A hypothesis that emits EOS leaves the beam and is kept; a sentence is done once `beam_size`
    hypotheses have finished (or at its length limit). Score: sum of log-probabilities / lp(|Y|).
    """
    n_best = beam_search_n_best(
        model, src, 1, beam_size, length_penalty, max_len_margin, return_attention
    )
    return [hypotheses[0] for hypotheses in n_best]


def beam_search_n_best(
    model: Seq2Seq,
    src: Tensor,
    n_best: int = 1,
    beam_size: int = DecodingSettings.beam_size,
    length_penalty: float = DecodingSettings.length_penalty,
    max_len_margin: int = DecodingSettings.max_len_margin,
    return_attention: bool = False,
) -> list[list[Hypothesis]]:
    """The best `n_best` (1 <= n_best <= beam_size) finished hypotheses per sentence, best first.

    The same search as :func:`beam_search`, whose hypothesis is the first of each list (ties keep
    the order in which they finished). A list is shorter than `n_best` only when fewer hypotheses
    could finish (a vocabulary smaller than the beam).
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    with inference(model):
        batch, beam = src.size(0), beam_size
        device = src.device
        limits = max_lengths(src, max_len_margin)
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
        last_steps = (limits - 1).tolist()  # the step at which EOS is forced
        for step in range(int(limits.max())):
            logits, state, attention = model.decode_step(prev_tokens, state)
            at_limit = (limits - 1 == step).repeat_interleave(beam)  # [B*K]
            log_probs = next_log_probs(logits, at_limit)  # [B*K, V]
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
        # sorted(reverse=True) is stable: among equal scores, the first finished comes first.
        return [
            sorted(hypotheses, key=lambda h: h.score, reverse=True)[:n_best]
            for hypotheses in finished
        ]
