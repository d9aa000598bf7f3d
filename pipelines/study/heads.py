"""Part 4, heads (Vaswani et al. 2017, §3.2.2): Transformers with 1, 4 and 8 heads at the same
d_model; BLEU, the entropy of each head's attention, and which heads mostly attend to the
previous or next source token (encoder) or follow the diagonal alignment (cross-attention)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.factory import build_model
from models.transformer import TransformerSeq2Seq
from models.vocab import PAD_ID
from pipelines.core.decoding import inference
from pipelines.core.params import Params
from pipelines.core.study_params import StudyParams
from pipelines.inference.translator import AttentionExample
from pipelines.reports.plots import attention_heatmap
from pipelines.study.attention_capture import captured_attention
from pipelines.study.brief_training import train_briefly
from pipelines.study.claims import Claim, not_measured, verdict_of_checks
from pipelines.study.corpus import Corpus, bleu, training_batches
from pipelines.study.part import PartResult, markdown_table
from pipelines.study.variants import transformer_config
from pipelines.training.batching import Example, collate

log = logging.getLogger("nmt.study")

# A head has a role when more than this share of its queries put their largest weight there.
ROLE_SHARE = 0.5
PROBE_SENTENCES = 64
ROLES = ("previous", "next", "diagonal")
SEED_CLAIMS = {
    "Heads": "several heads attend to different relations (neighbouring words, the source word "
    "being translated), which one head cannot",
}


@dataclass(frozen=True)
class HeadStats:
    """One head of one layer."""

    kind: str  # "encoder" (self-attention) or "cross" (decoder over the source)
    layer: int
    head: int
    entropy: float  # mean over queries, nats
    shares: dict[str, float]  # share of queries whose largest weight is at each role's key

    @property
    def role(self) -> str:
        best = max(self.shares, key=self.shares.get)
        return best if self.shares[best] > ROLE_SHARE else "other"


def attention_entropy(weights: Tensor, valid: Tensor) -> Tensor:
    """Mean entropy per head of weights [B, H, T, S] over the valid queries valid [B, T]: [H]."""
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(dim=-1)  # [B, H, T]
    mask = valid[:, None, :].float()  # [B, 1, T]
    return (entropy * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2))


def role_shares(
    argmax: Tensor, targets: dict[str, tuple[Tensor, int]], valid: Tensor
) -> list[dict[str, float]]:
    """Per head, the share of valid queries whose largest weight lies at each role's key.

    argmax [B, H, T]: each query's most attended key; targets: role -> (its key for every query
    [B, T], -1 where the role does not apply, and a tolerance in positions); valid [B, T].
    """
    shares: list[dict[str, float]] = [{} for _ in range(argmax.size(1))]
    for role, (key, tolerance) in targets.items():
        usable = (valid & (key >= 0))[:, None, :]  # [B, 1, T]
        hits = ((argmax - key[:, None, :]).abs() <= tolerance) & usable  # [B, H, T]
        per_head = hits.sum(dim=(0, 2)).float() / usable.sum().clamp_min(1)  # [H]
        for head, share in enumerate(per_head.tolist()):
            shares[head][role] = share
    return shares


def head_statistics(model: TransformerSeq2Seq, batch: dict[str, Tensor]) -> list[HeadStats]:
    """Entropy and roles of every head, teacher-forced on `batch` (src, tgt_in): encoder heads
    against the previous and next source token, cross-attention heads against the diagonal
    (target step t of T ↔ source token t·(S−1)/(T−1), ±1)."""
    device = next(model.parameters()).device
    src, tgt_in = batch["src"].to(device), batch["tgt_in"].to(device)
    encoder = [layer.self_attention for layer in model.encoder_layers]
    cross = [layer.cross_attention for layer in model.decoder_layers]
    with inference(model), captured_attention(encoder + cross) as captured:
        model(src, tgt_in)
    src_valid, tgt_valid = src != PAD_ID, tgt_in != PAD_ID  # [B, S], [B, T]
    src_len = src_valid.sum(dim=1, keepdim=True)  # [B, 1]
    tgt_len = tgt_valid.sum(dim=1, keepdim=True)  # [B, 1]
    query = torch.arange(src.size(1), device=device).expand_as(src)  # [B, S]
    neighbours = {
        "previous": (query - 1, 0),
        "next": (torch.where(query + 1 < src_len, query + 1, -1), 0),
    }
    step = torch.arange(tgt_in.size(1), device=device).expand_as(tgt_in)  # [B, T]
    diagonal = {"diagonal": ((step * (src_len - 1) / (tgt_len - 1).clamp_min(1)).round().long(), 1)}
    stats = []
    for kind, layers, targets, valid in (
        ("encoder", captured[: len(encoder)], neighbours, src_valid),
        ("cross", captured[len(encoder) :], diagonal, tgt_valid),
    ):
        for layer, (weights,) in enumerate(layers):  # weights [B, H, T, S], one call per layer
            entropies = attention_entropy(weights, valid).tolist()
            shares = role_shares(weights.argmax(dim=-1), targets, valid)
            stats += [
                HeadStats(kind, layer, head, entropies[head], shares[head])
                for head in range(weights.size(1))
            ]
    return stats


def probe_batch(corpus: Corpus, count: int) -> dict[str, Tensor]:
    """The first `count` test pairs as a teacher-forcing batch (src + EOS, BOS + tgt)."""
    sources = corpus.tokenizers.encode_src(corpus.test_sources[:count])
    targets = corpus.tokenizers.encode_tgt(corpus.test_references[:count])
    return collate(
        [
            Example(i, np.asarray(src, dtype=np.int32), np.asarray(tgt, dtype=np.int32))
            for i, (src, tgt) in enumerate(zip(sources, targets, strict=True))
        ]
    )


def _picture(model: TransformerSeq2Seq, corpus: Corpus, stats: list[HeadStats], path: Path) -> None:
    """The last encoder layer's heads on the first probe sentence, titled with their roles."""
    batch = probe_batch(corpus, 1)
    device = next(model.parameters()).device
    last = model.encoder_layers[-1].self_attention
    with inference(model), captured_attention([last]) as captured:
        model.encode(batch["src"].to(device))
    pieces = [corpus.tokenizers.src.id_to_piece(i) for i in batch["src"][0].tolist()]
    layer = len(model.encoder_layers) - 1
    roles = [s.role for s in stats if s.kind == "encoder" and s.layer == layer]
    attention_heatmap(
        AttentionExample(pieces, pieces, captured[0][0][0].float().cpu()),
        path,
        title=f"{len(roles)} head(s), last encoder layer; roles: {', '.join(roles)}",
    )


@dataclass(frozen=True)
class HeadsOutcome:
    """One head count's trained model, measured."""

    heads: int
    bleu: float | None
    stats: list[HeadStats]

    def share(self, role: str) -> float:
        """Share of all heads (encoder and cross) whose role is `role`."""
        return sum(s.role == role for s in self.stats) / len(self.stats)

    def mean_entropy(self, kind: str) -> float:
        values = [s.entropy for s in self.stats if s.kind == kind]
        return sum(values) / len(values)


def run_heads(
    study: StudyParams, params: Params, corpus: Corpus, device: torch.device, figures: Path
) -> PartResult:
    batch = probe_batch(corpus, PROBE_SENTENCES)
    outcomes, names = [], []
    for heads in study.head_counts:
        torch.manual_seed(study.seed)
        config = transformer_config(study, n_heads=heads)
        model = build_model(config, *corpus.vocab_sizes).to(device)
        seconds = train_briefly(
            model, training_batches(corpus.train, study.batch_tokens, study.seed), study
        )
        log.info("heads: %d heads trained %d steps in %.1f s", heads, study.steps, seconds)
        stats = head_statistics(model, batch)
        outcomes.append(HeadsOutcome(heads, bleu(model, corpus, params), stats))
        names.append(f"heads_{heads}.png")
        _picture(model, corpus, stats, figures / names[-1])
    rows = [
        [o.heads, o.bleu, o.mean_entropy("encoder"), o.mean_entropy("cross"),
         *[o.share(role) for role in ROLES]]
        for o in outcomes
    ]  # fmt: skip
    lines = [
        f"Transformers {study.d_model} wide, {study.layers}+{study.layers} layers, trained "
        f"{study.steps} steps on all training pairs; greedy BLEU on {corpus.split}. Roles and "
        f"entropies teacher-forced on its first {PROBE_SENTENCES} pairs: a head has a role when "
        f"more than {ROLE_SHARE:.0%} of its queries attend most to that key.",
        "",
        *markdown_table(
            [
                "heads",
                "BLEU",
                "entropy, encoder (nats)",
                "entropy, cross (nats)",
                "share previous",
                "share next",
                "share diagonal",
            ],
            rows,
        ),
        "",
        *[f"![{_heads(o.heads)}](study/{name})" for o, name in zip(outcomes, names, strict=True)],
    ]
    metrics = {}
    for o in outcomes:
        metrics[f"heads/{o.heads}/entropy_encoder"] = o.mean_entropy("encoder")
        metrics |= {f"heads/{o.heads}/share_{role}": o.share(role) for role in ROLES}
        if o.bleu is not None:
            metrics[f"heads/{o.heads}/bleu"] = o.bleu
    return PartResult("heads", "Heads", [_heads_claim(outcomes)], lines, names, metrics)


def _heads(count: int) -> str:
    return f"{count} head" if count == 1 else f"{count} heads"


def _heads_claim(outcomes: list[HeadsOutcome]) -> Claim:
    most = max(outcomes, key=lambda o: o.heads)
    if most.heads == 1:
        return not_measured("Heads", SEED_CLAIMS["Heads"], "no model with more than one head")
    roles = sorted({s.role for s in most.stats} - {"other"})
    fewest = min(outcomes, key=lambda o: o.heads)
    bleus = ", ".join(
        f"{_heads(o.heads)} {'–' if o.bleu is None else f'{o.bleu:.1f}'}" for o in outcomes
    )
    return Claim(
        "Heads",
        SEED_CLAIMS["Heads"],
        f"{_heads(most.heads)}: roles {', '.join(roles) or 'none'} "
        f"({sum(s.role != 'other' for s in most.stats)} of its {len(most.stats)} heads have one); "
        f"{_heads(fewest.heads)}: {sum(s.role != 'other' for s in fewest.stats)} of "
        f"{len(fewest.stats)}; BLEU {bleus}",
        verdict_of_checks(min(len(roles), 2), 2),
        "supported when the heads of the model with the most heads take two or more different "
        "roles (previous, next, diagonal); mixed with one; not supported with none",
    )
