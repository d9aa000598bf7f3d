"""Part 3, positional encoding (Vaswani et al. 2017, §3.5): the Transformer with sinusoidal,
learned and no positional encoding, trained on short Multi30k pairs; BLEU within and beyond the
training lengths, the word-order probe, and the permutation property without an encoding."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from models.factory import build_model
from models.vocab import EOS_ID
from pipelines.core.params import Params
from pipelines.core.study_params import StudyParams
from pipelines.data.tokenized import TokenizedSplit
from pipelines.reports.plots import bleu_bars
from pipelines.study.brief_training import train_briefly
from pipelines.study.claims import Claim, not_measured, verdict_of_checks, verdict_of_margin
from pipelines.study.corpus import Corpus, bleu, short_pairs, training_batches, translator
from pipelines.study.part import PartResult, markdown_table
from pipelines.study.variants import transformer_config
from pipelines.study.word_order import SwappedPair, order_distance, swapped_pairs

log = logging.getLogger("nmt.study")

ENCODINGS = ("sinusoidal", "learned", "none")
# BLEU a difference must reach to support a claim outright.
BLEU_MARGIN = 1.0
# Relative encoder distances at most this are "equal" in float32 (exactly 0 in exact arithmetic).
FLOAT32_EQUAL = 1e-4
# ... and in float64, for the exact check on a random model.
FLOAT64_EQUAL = 1e-12
EXACT_CHECK_LENGTH = 12
SEED_CLAIMS = {
    "Word order": "positional encoding is what tells a Transformer the word order "
    "('the cat sat on the mat' vs 'the mat sat on the cat')",
    "Permutation equivariance": "without positional encoding self-attention is "
    "permutation-equivariant: it sees a sentence as a bag of words",
    "Extrapolation": "sinusoidal encodings may extrapolate to sequences longer than any seen in "
    "training, learned ones cannot",
}


@dataclass(frozen=True)
class EncodingOutcome:
    """One positional encoding's trained model, measured."""

    encoding: str
    bleu_in_range: float | None  # test sources no longer than the longest training source
    bleu_longer: float | None  # test sources longer than any training source
    order_distance: float | None  # mean over the swapped pairs
    max_order_distance: float | None
    translations_differ: float | None  # share of swapped pairs translated differently
    seconds: float


def exact_equivariance(study: StudyParams, positional: str) -> float:
    """The encoder's order distance for a random permutation of a random source, on a randomly
    initialised float64 Transformer with `positional` encoding (CPU)."""
    generator = torch.Generator().manual_seed(study.seed)
    torch.manual_seed(study.seed)
    model = build_model(transformer_config(study, positional), EOS_ID + 20).double()
    src = torch.randint(EOS_ID + 1, EOS_ID + 20, (1, EXACT_CHECK_LENGTH), generator=generator)
    return order_distance(model, src, torch.randperm(EXACT_CHECK_LENGTH, generator=generator))


def measure_encoding(
    encoding: str,
    study: StudyParams,
    params: Params,
    corpus: Corpus,
    train: TokenizedSplit,
    groups: dict[str, list[int]],
    pairs: list[SwappedPair],
    device: torch.device,
) -> EncodingOutcome:
    """Train the Transformer with `encoding` on `train`; BLEU on the test `groups` of sentence
    numbers, and the word-order probe on `pairs`."""
    torch.manual_seed(study.seed)
    model = build_model(transformer_config(study, encoding), *corpus.vocab_sizes).to(device)
    seconds = train_briefly(model, training_batches(train, study.batch_tokens, study.seed), study)
    distances = [
        order_distance(
            model, torch.tensor([pair.ids], device=device), pair.permutation().to(device)
        )
        for pair in pairs
    ]
    differ = None
    if pairs:
        translations = translator(model, corpus, params).translate(
            [p.sentence for p in pairs] + [p.swapped for p in pairs]
        )
        differ = sum(
            a != b
            for a, b in zip(translations[: len(pairs)], translations[len(pairs) :], strict=True)
        ) / len(pairs)
    log.info("positional: %s trained %d steps in %.1f s", encoding, study.steps, seconds)
    return EncodingOutcome(
        encoding,
        bleu(model, corpus, params, groups["in range"]),
        bleu(model, corpus, params, groups["longer"]),
        sum(distances) / len(distances) if distances else None,
        max(distances, default=None),
        differ,
        seconds,
    )


def run_positional(
    study: StudyParams, params: Params, corpus: Corpus, device: torch.device, figures: Path
) -> PartResult:
    train = short_pairs(corpus.train, study.max_train_tokens, "study.max_train_tokens")
    longest = int(train.src_lengths.max())
    lengths = [len(ids) for ids in corpus.tokenizers.encode_src(corpus.test_sources)]
    groups = {
        "in range": [i for i, n in enumerate(lengths) if n <= longest],
        "longer": [i for i, n in enumerate(lengths) if n > longest],
    }
    pairs = swapped_pairs(corpus.test_sources, corpus.tokenizers, study.probe_pairs)
    outcomes = {
        encoding: measure_encoding(encoding, study, params, corpus, train, groups, pairs, device)
        for encoding in ENCODINGS
    }
    exact = {encoding: exact_equivariance(study, encoding) for encoding in ("none", "sinusoidal")}
    claims = [
        _word_order_claim(outcomes, len(pairs)),
        _equivariance_claim(outcomes["none"], exact, len(pairs)),
        _extrapolation_claim(outcomes, longest, len(groups["longer"])),
    ]
    labels = {"in range": f"in range ({len(groups['in range'])})"}
    labels["longer"] = f"longer ({len(groups['longer'])})"
    bleu_bars(
        {
            o.encoding: {
                labels["in range"]: _or_nan(o.bleu_in_range),
                labels["longer"]: _or_nan(o.bleu_longer),
            }
            for o in outcomes.values()
        },
        figures / "positional_bleu.png",
        title=f"{corpus.split}, greedy: sources within / beyond {longest} training subwords",
    )
    lines = [
        f"Transformers {study.d_model} wide, {study.layers}+{study.layers} layers, "
        f"{study.n_heads} heads, trained {study.steps} steps on the "
        f"{len(train)} training pairs with at most {study.max_train_tokens} subwords a side "
        f"(longest source: {longest}); greedy BLEU on {corpus.split}: "
        f"{len(groups['in range'])} sources within that length, {len(groups['longer'])} longer. "
        f"Word-order probe: {len(pairs)} {corpus.split} sentences and their twins with two nouns "
        "swapped; encoder distance ‖enc(twin) − enc(sentence) re-ordered by the swap‖ / "
        "‖enc(sentence)‖.",
        "",
        *markdown_table(
            ["encoding", "BLEU (in range)", "BLEU (longer)", "encoder distance (mean)",
             "encoder distance (max)", "translations differ", "train s"],
            [
                [o.encoding, o.bleu_in_range, o.bleu_longer, o.order_distance,
                 o.max_order_distance, o.translations_differ, o.seconds]
                for o in outcomes.values()
            ],
        ),
        "",
        f"Exact check on a random float64 model, a random permutation of {EXACT_CHECK_LENGTH} "
        f"tokens: encoder distance {exact['none']:.3g} without positional encoding, "
        f"{exact['sinusoidal']:.3g} with the sinusoidal one.",
        "",
        "![BLEU by positional encoding](study/positional_bleu.png)",
    ]  # fmt: skip
    metrics = {}
    for o in outcomes.values():
        for key in ("bleu_in_range", "bleu_longer", "order_distance", "translations_differ"):
            if getattr(o, key) is not None:
                metrics[f"positional/{o.encoding}/{key}"] = float(getattr(o, key))
    metrics |= {f"positional/exact_{e}": value for e, value in exact.items()}
    return PartResult(
        "positional", "Positional encoding", claims, lines, ["positional_bleu.png"], metrics
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def _bleu(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _word_order_claim(outcomes: dict[str, EncodingOutcome], pairs: int) -> Claim:
    none = outcomes["none"]
    encoded = [outcomes["sinusoidal"], outcomes["learned"]]
    checks = [
        o.bleu_in_range > none.bleu_in_range
        for o in encoded
        if o.bleu_in_range is not None and none.bleu_in_range is not None
    ]
    if pairs:
        checks += [o.translations_differ > none.translations_differ for o in encoded]
    return Claim(
        "Word order",
        SEED_CLAIMS["Word order"],
        f"noun-swapped twins translated differently ({pairs} pairs): "
        + ", ".join(f"{o.encoding} {_percent(o.translations_differ)}" for o in outcomes.values())
        + "; BLEU within the training lengths: "
        + ", ".join(f"{o.encoding} {_bleu(o.bleu_in_range)}" for o in outcomes.values()),
        verdict_of_checks(sum(checks), len(checks)),
        "supported when both encodings beat none on BLEU and on the share of swapped twins "
        "translated differently; not supported when neither does",
    )


def _equivariance_claim(none: EncodingOutcome, exact: dict[str, float], pairs: int) -> Claim:
    checks = [exact["none"] <= FLOAT64_EQUAL, exact["sinusoidal"] > FLOAT64_EQUAL]
    trained = ""
    if none.max_order_distance is not None:
        checks.append(none.max_order_distance <= FLOAT32_EQUAL)
        trained = f"; trained, on {pairs} swapped pairs: at most {none.max_order_distance:.2g}"
    return Claim(
        "Permutation equivariance",
        SEED_CLAIMS["Permutation equivariance"],
        f"encoder distance after a permutation, random float64 model: {exact['none']:.2g} "
        f"without encoding (sinusoidal: {exact['sinusoidal']:.2g}){trained}",
        verdict_of_checks(sum(checks), len(checks)),
        f"supported when the distance without encoding is at most {FLOAT64_EQUAL:g} in float64 "
        f"(and {FLOAT32_EQUAL:g} for the trained float32 model) while the sinusoidal one's is not",
    )


def _extrapolation_claim(outcomes: dict[str, EncodingOutcome], longest: int, count: int) -> Claim:
    sinusoidal, learned = outcomes["sinusoidal"].bleu_longer, outcomes["learned"].bleu_longer
    if sinusoidal is None or learned is None:
        return not_measured(
            "Extrapolation",
            SEED_CLAIMS["Extrapolation"],
            f"no test source is longer than the longest training source ({longest} subwords)",
        )
    return Claim(
        "Extrapolation",
        SEED_CLAIMS["Extrapolation"],
        f"BLEU on the {count} test sources longer than any training source (> {longest} "
        "subwords): "
        + ", ".join(f"{o.encoding} {_bleu(o.bleu_longer)}" for o in outcomes.values()),
        verdict_of_margin(sinusoidal - learned, BLEU_MARGIN),
        f"supported when sinusoidal beats learned there by at least {BLEU_MARGIN} BLEU; "
        "not supported when it does not beat it",
    )
