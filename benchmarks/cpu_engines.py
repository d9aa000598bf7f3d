"""The CPU engines of `nmt translate` on one test split: our PyTorch beam search against the
model converted to CTranslate2 with float32 and with int8 weights (`nmt export --format
ctranslate2`), each at its fastest thread count and batch size. Scores are the evaluate stage's
(sacreBLEU on detokenized output); speed is sentences per second over the whole split.

    python -m benchmarks.cpu_engines --model artifacts/transformer-1234 --prepared data/prepared \\
        --split test_2016_flickr --out benchmarks/results/<date>_cpu_engines.json

One process: the model is converted into a temporary folder, each engine's settings are tried on
the split's first `--sweep-sentences` sentences, then the engines translate the whole split in
turn, `--rounds` times (interleaved, so that other load on the machine falls on all of them);
the median round counts. The decoding settings are `--decoding` (the evaluate stage's
``metrics/<arch>.decoding.json``), else the defaults, which are the evaluate stage's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import environment, write_json
from pipelines.core.params import DecodingSettings
from pipelines.core.scoring import score
from pipelines.data.prepared import read_pairs
from pipelines.inference.ct2_conversion import export_ctranslate2
from pipelines.inference.ct2_translator import CTranslate2Translator, import_ctranslate2
from pipelines.inference.settings import read_settings
from pipelines.inference.translator import TextTranslator, Translator
from pipelines.tracking.runs import cpu_model

log = logging.getLogger("nmt.bench")

QUANTIZATIONS = ("float32", "int8")


def timed_translation(
    translator: TextTranslator, sources: list[str], settings: DecodingSettings
) -> tuple[list[str], float]:
    """The translations of `sources` and the seconds they took."""
    start = time.perf_counter()
    hypotheses = translator.translate(sources, settings)
    return hypotheses, time.perf_counter() - start


def engines(model: str, converted: Path) -> dict[str, Callable[[int], TextTranslator]]:
    """Each engine's name and how to get it running on a number of threads."""

    def pytorch(threads: int) -> TextTranslator:
        torch.set_num_threads(threads)
        return Translator.load(model)

    def ctranslate2(quantization: str) -> Callable[[int], TextTranslator]:
        return lambda threads: CTranslate2Translator.load(converted / quantization, threads)

    return {"pytorch": pytorch, **{f"ct2_{q}": ctranslate2(q) for q in QUANTIZATIONS}}


def fastest(
    load: Callable[[int], TextTranslator],
    sources: list[str],
    settings: DecodingSettings,
    threads: list[int],
    batch_sizes: list[int],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fastest (threads, batch size) on `sources` (after one warm-up), and every trial."""
    trials = []
    for count in threads:
        translator = load(count)
        timed_translation(translator, sources[:32], settings)  # warm-up
        for batch_size in batch_sizes:
            _, seconds = timed_translation(
                translator, sources, replace(settings, batch_size=batch_size)
            )
            trials.append(
                {
                    "threads": count,
                    "batch_size": batch_size,
                    "sentences_per_sec": round(len(sources) / seconds, 1),
                }
            )
    return max(trials, key=lambda trial: trial["sentences_per_sec"]), trials


def run(args: argparse.Namespace) -> dict[str, Any]:
    sources, references = read_pairs(args.prepared, args.split)
    settings = DecodingSettings() if args.decoding is None else read_settings(args.decoding)
    pytorch = Translator.load(args.model)
    with tempfile.TemporaryDirectory(prefix="nmt-ct2-") as tmp:
        converted = Path(tmp)
        conversion_seconds = {}
        for quantization in QUANTIZATIONS:
            start = time.perf_counter()
            export_ctranslate2(pytorch, args.model, converted / quantization, quantization)
            conversion_seconds[quantization] = round(time.perf_counter() - start, 2)
        loaders = engines(args.model, converted)
        best, sweeps = {}, {}
        for name, load in loaders.items():
            best[name], sweeps[name] = fastest(
                load, sources[: args.sweep_sentences], settings, args.threads, args.batch_sizes
            )
            log.info("%s: fastest with %s", name, best[name])
        running = {name: loaders[name](best[name]["threads"]) for name in loaders}
        outputs: dict[str, list[str]] = {}
        rounds: dict[str, list[float]] = {name: [] for name in loaders}
        for round_number in range(args.rounds):
            for name, translator in running.items():
                if name == "pytorch":
                    torch.set_num_threads(best[name]["threads"])
                engine_settings = replace(settings, batch_size=best[name]["batch_size"])
                hypotheses, seconds = timed_translation(translator, sources, engine_settings)
                if outputs.setdefault(name, hypotheses) != hypotheses:
                    raise RuntimeError(f"{name}: round {round_number + 1} translated differently")
                rounds[name].append(round(len(sources) / seconds, 1))
                log.info("round %d, %s: %.1f sentences/s", round_number + 1, name, rounds[name][-1])
    speeds = {name: statistics.median(rounds[name]) for name in loaders}
    scores = {
        name: score(outputs[name], references, sources, pytorch.config["tgt_lang"])
        for name in loaders
    }
    table = {
        name: {
            "bleu": scores[name]["bleu"],
            "chrf": scores[name]["chrf"],
            "sentences_per_sec": speeds[name],
            "speedup": round(speeds[name] / speeds["pytorch"], 2),
            "rounds": rounds[name],
            "threads": best[name]["threads"],
            "batch_size": best[name]["batch_size"],
            "same_as_pytorch": sum(
                a == b for a, b in zip(outputs[name], outputs["pytorch"], strict=True)
            ),
        }
        for name in loaders
    }
    return {
        "environment": {
            **environment(),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "ctranslate2": import_ctranslate2().__version__,
        },
        "note": args.note,
        "model": str(args.model),
        "split": args.split,
        "sentences": len(sources),
        "decoding": settings.to_dict(),
        "signature": scores["pytorch"]["signature"],
        "conversion_seconds": conversion_seconds,
        "engines": table,
        "sweeps": sweeps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_engines", description=__doc__)
    parser.add_argument(
        "--model", default="artifacts/transformer-1234", help="an exported Transformer"
    )
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--decoding", type=Path, help="a decoding.json (default: the defaults)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep-sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--note", default="", help="recorded in the result (e.g. other load)")
    parser.add_argument("--out", type=Path, required=True, help="the result JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args)
    write_json(args.out, result)
    for name, row in result["engines"].items():
        log.info(
            "%s: BLEU %.2f, %.1f sentences/s (rounds %s, %d threads, batch %d), %.2fx",
            name,
            row["bleu"],
            row["sentences_per_sec"],
            row["rounds"],
            row["threads"],
            row["batch_size"],
            row["speedup"],
        )


if __name__ == "__main__":
    main()
