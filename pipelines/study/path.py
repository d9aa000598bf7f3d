"""Part 2, path length: accuracy against the distance to the needed source token on the
synthetic copy/reverse task, per family after brief training; and Multi30k BLEU per source-length
bucket for every architecture the pipeline evaluated."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch

from models.factory import build_model
from models.seq2seq import Seq2Seq
from pipelines.core.decoding import inference
from pipelines.core.study_params import StudyParams
from pipelines.study.brief_training import train_briefly
from pipelines.study.claims import Claim, verdict_of_margin
from pipelines.study.figures import Panel, line_panels
from pipelines.study.part import PartResult, markdown_table, two_decimals
from pipelines.study.synthetic import (
    EVAL_STREAM,
    SyntheticExample,
    generate,
    to_batch,
    training_batches,
    vocab_size,
)
from pipelines.study.variants import FAMILY_NAMES, family_configs

log = logging.getLogger("nmt.study")

DISTANCE_BINS = 6
# Accuracy (a share) a difference must reach to support a claim outright.
ACCURACY_MARGIN = 0.1
EVAL_BATCH = 64
SEED_PATH = "self-attention O(1) / recurrent O(n) / convolutional O(n/k) (contiguous kernels)"
SEED_BOTTLENECK = (
    "attention removes the bottleneck of a fixed-size context vector: an LSTM without it "
    "loses distant tokens"
)
SEED_CLAIMS = {"Maximum path length": SEED_PATH, "Fixed-size context": SEED_BOTTLENECK}


def distance_bins(max_distance: int, bins: int) -> list[tuple[int, int]]:
    """`bins` contiguous integer ranges (low, high) covering 1..max_distance."""
    edges = np.unique(np.linspace(1, max_distance + 1, bins + 1).round().astype(int))
    return [(int(low), int(high) - 1) for low, high in itertools.pairwise(edges)]


def accuracy_by_distance(
    model: Seq2Seq, examples: list[SyntheticExample], bins: list[tuple[int, int]]
) -> list[float | None]:
    """Teacher-forced argmax accuracy of the target tokens whose distance falls in each bin."""
    device = next(model.parameters()).device
    correct, total = np.zeros(len(bins)), np.zeros(len(bins))
    lows = np.array([low for low, _ in bins])
    with inference(model):
        for start in range(0, len(examples), EVAL_BATCH):
            chunk = examples[start : start + EVAL_BATCH]
            batch = to_batch(chunk)
            logits = model(batch["src"].to(device), batch["tgt_in"].to(device))  # [B, T, V]
            predicted = logits.argmax(dim=-1).cpu().numpy()
            for row, example in enumerate(chunk):
                hits = predicted[row, : len(example.tgt)] == np.asarray(example.tgt)
                which = np.searchsorted(lows, example.distances, side="right") - 1
                np.add.at(correct, which, hits)
                np.add.at(total, which, 1)
    return [c / t if t else None for c, t in zip(correct, total, strict=True)]


def _ends(accuracies: list[float | None]) -> tuple[float, float]:
    """Accuracy in the nearest and the farthest bins that have tokens."""
    present = [a for a in accuracies if a is not None]
    return present[0], present[-1]


def evaluated_runs(metrics: Path) -> dict[str, dict]:
    """The evaluate stage's scores by run name: ``metrics/<run>.json``, whatever the run's name
    (``transformer`` or ``transformer-1234``), less prepare's counts and the decoding settings."""
    files = sorted(metrics.glob("*.json")) if metrics.is_dir() else []
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in files
        if path.name != "prepare.json" and not path.name.endswith(".decoding.json")
    }


def synthetic_accuracies(
    study: StudyParams, device: torch.device, bins: list[tuple[int, int]]
) -> dict[str, list[float | None]]:
    """Each family trained briefly on the task, then scored on held-out examples."""
    examples = generate(
        study.eval_examples,
        study.synthetic_max_length,
        study.symbols,
        study.task,
        [study.seed, EVAL_STREAM],
    )
    batch_size = max(1, study.batch_tokens // (study.synthetic_max_length + 1))
    accuracies = {}
    for name, config in family_configs(study).items():
        torch.manual_seed(study.seed)
        model = build_model(config, vocab_size(study.symbols)).to(device)
        batches = training_batches(
            batch_size, study.synthetic_max_length, study.symbols, study.task, study.seed
        )
        seconds = train_briefly(model, batches, study)
        accuracies[name] = accuracy_by_distance(model, examples, bins)
        log.info("path: %s trained %d steps in %.1f s", name, study.steps, seconds)
    return accuracies


def run_path(
    study: StudyParams, device: torch.device, figures: Path, metrics: Path, split: str
) -> PartResult:
    bins = distance_bins(2 * study.synthetic_max_length - 1, DISTANCE_BINS)
    accuracies = synthetic_accuracies(study, device, bins)
    ends = {name: _ends(values) for name, values in accuracies.items()}
    labels = [f"{low}–{high}" for low, high in bins]
    centres = [(low + high) / 2 for low, high in bins]
    chance = 1.0 / study.symbols
    claims = [path_claim(ends, chance), bottleneck_claim(ends, labels[-1], chance)]
    line_panels(
        [
            Panel(
                f"Synthetic {study.task} task",
                "distance to the needed source token",
                "accuracy (teacher-forced)",
                {FAMILY_NAMES[n]: (centres, values) for n, values in accuracies.items()},
            )
        ],
        figures / "path_accuracy.png",
    )
    lines = [
        f"The {study.task} task: sequences of 1–{study.synthetic_max_length} tokens over "
        f"{study.symbols} symbols (seed {study.seed}); every model {study.d_model} wide with "
        f"{study.layers}+{study.layers} layers, trained {study.steps} steps, scored on "
        f"{study.eval_examples} held-out sequences. Distance of target position t = (n + t) − j "
        "for the source position j it copies.",
        "",
        *markdown_table(
            ["model", *labels],
            [[FAMILY_NAMES[n], *values] for n, values in accuracies.items()],
        ),
        "",
        "![accuracy against distance](study/path_accuracy.png)",
        "",
        *_length_buckets(metrics, split, figures),
    ]
    result_metrics = {f"path/{n}/accuracy_near": near for n, (near, _) in ends.items()}
    result_metrics |= {f"path/{n}/accuracy_far": far for n, (_, far) in ends.items()}
    figure_names = ["path_accuracy.png"]
    if (figures / "bleu_by_length.png").exists():
        figure_names.append("bleu_by_length.png")
    return PartResult("path", "Path length", claims, lines, figure_names, result_metrics)


def _untrained(ends: dict[str, tuple[float, float]], names: list[str], chance: float) -> str:
    """The models among `names` no better than chance even at the nearest distances, as text
    ('' when every one learned): a claim about distance cannot be judged from them."""
    lost = [n for n in names if ends[n][0] < chance + ACCURACY_MARGIN]
    if not lost:
        return ""
    return (
        f" — {', '.join(FAMILY_NAMES[n] for n in lost)} at chance ({two_decimals(chance)}) "
        "even at the nearest distances: too few study.steps to judge"
    )


def path_claim(ends: dict[str, tuple[float, float]], chance: float) -> Claim:
    untrained = _untrained(ends, ["lstm_none", "transformer"], chance)
    drop = (ends["lstm_none"][0] - ends["lstm_none"][1]) - (
        ends["transformer"][0] - ends["transformer"][1]
    )
    return Claim(
        "Maximum path length",
        SEED_PATH,
        "accuracy from the nearest to the farthest distances: "
        + ", ".join(
            f"{FAMILY_NAMES[n]} {two_decimals(near)} → {two_decimals(far)}"
            for n, (near, far) in ends.items()
        )
        + untrained,
        "not measured" if untrained else verdict_of_margin(drop, ACCURACY_MARGIN),
        "supported when the LSTM without attention (path O(n)) loses at least "
        f"{ACCURACY_MARGIN} more accuracy from near to far than the Transformer (path O(1)); "
        "not supported when it loses no more; not measured while either is within "
        f"{ACCURACY_MARGIN} of chance at the nearest distances",
    )


def bottleneck_claim(ends: dict[str, tuple[float, float]], farthest: str, chance: float) -> Claim:
    untrained = _untrained(ends, ["lstm_additive"], chance)
    gain = ends["lstm_additive"][1] - ends["lstm_none"][1]
    return Claim(
        "Fixed-size context",
        SEED_BOTTLENECK,
        f"accuracy at distances {farthest}: LSTM + attention "
        f"{two_decimals(ends['lstm_additive'][1])}, without "
        f"{two_decimals(ends['lstm_none'][1])}" + untrained,
        "not measured" if untrained else verdict_of_margin(gain, ACCURACY_MARGIN),
        f"supported when attention adds at least {ACCURACY_MARGIN} accuracy at the farthest "
        "distances; not supported when it adds none; not measured while the LSTM with attention "
        f"is within {ACCURACY_MARGIN} of chance at the nearest distances",
    )


def _length_buckets(metrics: Path, split: str, figures: Path) -> list[str]:
    """BLEU per source-length bucket of every evaluated run, as a table and one plot."""
    runs = {
        name: scores[split]["length_buckets"]
        for name, scores in evaluated_runs(metrics).items()
        if split in scores
    }
    if not runs:
        return [f"No evaluated architecture in {metrics}/ to show BLEU per source length."]
    buckets = list(dict.fromkeys(b for values in runs.values() for b in values))
    line_panels(
        [
            Panel(
                f"{split}: BLEU per source length",
                "source words",
                "BLEU",
                {
                    name: (buckets, [values.get(b, {}).get("bleu", np.nan) for b in buckets])
                    for name, values in runs.items()
                },
            )
        ],
        figures / "bleu_by_length.png",
    )
    rows = [
        [name, *[values.get(b, {}).get("bleu") for b in buckets]] for name, values in runs.items()
    ]
    return [
        f"BLEU per source-length bucket on {split} (beam search, the evaluate stage's scores):",
        "",
        *markdown_table(["run", *[f"{b} words" for b in buckets]], rows),
        "",
        "![BLEU per source length](study/bleu_by_length.png)",
    ]
