"""`bench decode`: beam-search sentences per second of an exported model, batched and one
sentence at a time."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from typing import Any

from benchmarks.common import Metric, environment, synchronize
from pipelines.core.params import DecodingSettings
from pipelines.data.prepared import read_sources
from pipelines.inference.translator import Translator

log = logging.getLogger("nmt.bench")


def decode(args: argparse.Namespace) -> dict[str, Any]:
    """The split's sentences in batches of `args.batch_size`, then its first
    `args.unbatched_sentences` one at a time, after a warm-up translation of 64."""
    translator = Translator.load(args.model, device=args.device)
    sources = read_sources(args.prepared, args.split)
    settings = DecodingSettings(beam_size=args.beam, length_penalty=args.length_penalty)
    translator.translate(sources[:64], replace(settings, batch_size=args.batch_size))  # warm-up
    result: dict[str, Any] = {
        "environment": environment(),
        "model": str(args.model),
        "split": args.split,
        "beam_size": args.beam,
        "length_penalty": args.length_penalty,
        "runs": [],
    }
    for batch_size, count in ((args.batch_size, len(sources)), (1, args.unbatched_sentences)):
        subset = sources[:count]
        synchronize()
        start = time.perf_counter()
        translator.translate(subset, replace(settings, batch_size=batch_size))
        synchronize()
        seconds = time.perf_counter() - start
        result["runs"].append(
            {
                "batch_size": batch_size,
                "sentences": len(subset),
                "seconds": round(seconds, 3),
                "sentences_per_sec": round(len(subset) / seconds, 1),
            }
        )
        log.info("%s beam %d batch %d: %.1f sentences/s", args.model, args.beam, batch_size,
                 len(subset) / seconds)  # fmt: skip
    batched, single = result["runs"]
    result["batched_speedup"] = round(batched["sentences_per_sec"] / single["sentences_per_sec"], 2)
    return result


def mlflow_metrics(result: dict[str, Any]) -> list[Metric]:
    """Sentences per second, batched and one at a time."""
    metrics: list[Metric] = []
    for run in result["runs"]:
        key = "batched" if run["batch_size"] > 1 else "one_at_a_time"
        metrics.append((f"{key}/sentences_per_sec", run["sentences_per_sec"], None))
    return metrics
