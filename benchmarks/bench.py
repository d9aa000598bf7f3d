"""One-GPU benchmarks: training throughput, peak memory and MFU per architecture against Hugging
Face ``MarianMTModel`` on the same configuration, batches and precision; beam-search decoding
speed; and the time-to-BLEU table of finished training runs.

    python -m benchmarks.bench throughput --params profiles/gpu.yaml --out bench.json
    python -m benchmarks.bench decode --model artifacts/transformer-1234 --out decode.json
    python -m benchmarks.bench attention --params profiles/gpu.yaml --out attention.json
    python -m benchmarks.bench report results/ --out summary.json

Throughput counts non-pad source + target tokens per second of full training steps (bf16
autocast forward, label-smoothed loss, backward, gradient clipping, fused AdamW; our models run
them as the train stage does: the Transformer replaying CUDA graphs of its loss per batch shape
with ``train.cuda_graphs`` (``pipelines.training.cuda_graphs``), otherwise eagerly with bf16
weight copies kept between steps (``pipelines.training.low_precision``)), timed between
``torch.cuda.synchronize()`` calls after warm-up steps, over the same token-bucket batches for
every model. MFU = 6 × parameters × tokens/s ÷ the bf16 matrix-product rate measured in the same
process (an 8192³ product). Each token only passes through its own side (the encoder for source
tokens, the decoder and output layer for target tokens), so the same figure is also reported with
6 × (encoder parameters × source tokens + decoder parameters × target tokens) ("sided").
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.jobs import JOB_FORMAT, Job

log = logging.getLogger("nmt.bench")

MLFLOW_HELP = (
    "also log the results as a run of the MLflow experiment 'benchmarks' (the project's store, or "
    "MLFLOW_TRACKING_URI)"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def job_spec(spec: str) -> Job:
    try:
        return Job.parse(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_throughput_parser(sub: argparse._SubParsersAction) -> None:
    tp = sub.add_parser("throughput", help="training tokens/s, peak memory, MFU; vs Marian")
    tp.add_argument("--params", type=Path, default=Path("profiles/gpu.yaml"))
    tp.add_argument("--tokenized", type=Path, default=Path("data/tokenized"))
    tp.add_argument("--archs", nargs="*", help="entries of `models` (default: all)")
    tp.add_argument("--marian", default="transformer_base", help="arch Marian mirrors ('' off)")
    tp.add_argument(
        "--compile",
        nargs="*",
        help="archs also measured compiled, in every round (ours: its layers, as train.compile "
        "does, under CUDA graphs when those are on)",
    )
    tp.add_argument("--compile-marian", action="store_true")
    tp.add_argument("--batch-tokens", type=int, default=0, help="default: train.batch_tokens")
    tp.add_argument("--warmup", type=int, default=10)
    tp.add_argument("--steps", type=int, default=40)
    tp.add_argument("--repeats", type=int, default=3, help="timed passes per measurement")
    tp.add_argument(
        "--rounds", type=int, default=1, help="measure the eager models this many times, in turn"
    )
    tp.add_argument(
        "--cudnn-sdpa",
        choices=("on", "off"),
        help="SDPA's cuDNN backend for all models (default: the params' train.cudnn_attention)",
    )
    tp.add_argument(
        "--profile-steps",
        type=int,
        default=5,
        help="steps profiled for kernel count and GPU kernel time per step (0: none; CUDA only)",
    )
    tp.add_argument(
        "--isolate",
        action="store_true",
        help="measure every job in a fresh Python process (no job runs after another in a process)",
    )
    tp.add_argument(
        "--low-precision-weights",
        choices=("on", "off", "both"),
        help="our eager models keep bf16 weight copies between steps, or let autocast cast every "
        "call, or are measured both ways in each round (default: train.low_precision_weights)",
    )
    tp.add_argument(
        "--cuda-graphs",
        choices=("on", "off", "both"),
        help="our models replay CUDA graphs of the loss's forward and backward per batch shape "
        "(without weight copies), run eagerly, or are measured both ways in each round (default: "
        "train.cuda_graphs; CUDA only)",
    )
    tp.add_argument(
        "--job",
        type=job_spec,
        help=f"{JOB_FORMAT}: measure only this (as --isolate does)",
    )
    tp.add_argument("--max-seconds", type=float, default=400, help="skip jobs after this")
    tp.add_argument("--device", default=DEVICE)
    tp.add_argument("--out", type=Path, required=True)
    tp.add_argument("--mlflow", action="store_true", help=MLFLOW_HELP)


def add_decode_parser(sub: argparse._SubParsersAction) -> None:
    dp = sub.add_parser("decode", help="beam-search sentences/s, batched and one at a time")
    dp.add_argument("--model", type=Path, required=True, help="an exported artifacts/<arch>-<seed>")
    dp.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    dp.add_argument("--split", default="test_2016_flickr")
    dp.add_argument("--beam", type=int, default=5)
    dp.add_argument("--length-penalty", type=float, default=0.6)
    dp.add_argument("--batch-size", type=int, default=64)
    dp.add_argument("--unbatched-sentences", type=int, default=100)
    dp.add_argument("--device", default=DEVICE)
    dp.add_argument("--out", type=Path, required=True)
    dp.add_argument("--mlflow", action="store_true", help=MLFLOW_HELP)
    dp.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="for --mlflow's data version tag"
    )


def add_attention_parser(sub: argparse._SubParsersAction) -> None:
    ap = sub.add_parser(
        "attention",
        help="one attention call on the plan's batch shapes: the fused kernel against the "
        "attention written out, eager and compiled",
    )
    ap.add_argument("--params", type=Path, default=Path("profiles/gpu.yaml"))
    ap.add_argument("--tokenized", type=Path, default=Path("data/tokenized"))
    ap.add_argument("--arch", default="transformer_base", help="heads and widths of this entry")
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--batches", type=int, default=100, help="the plan's first N batches")
    ap.add_argument("--iterations", type=int, default=20, help="calls timed per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="the median of this many is kept")
    ap.add_argument("--device", default=DEVICE)
    ap.add_argument("--out", type=Path, required=True)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="time-to-BLEU and test scores of finished runs")
    rp.add_argument("results", type=Path, help="a folder of run folders (jobs)")
    rp.add_argument("--out", type=Path, required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_throughput_parser(sub)
    add_decode_parser(sub)
    add_attention_parser(sub)
    add_report_parser(sub)
    return parser


Result = dict[str, Any]


def work(command: str) -> tuple[Callable[[argparse.Namespace], Result], Callable | None]:
    """The command's work function and its MLflow metrics, imported here: help and argument
    errors come without loading the training libraries."""
    if command == "throughput":
        from benchmarks import summary, throughput

        return throughput.throughput, summary.mlflow_metrics
    if command == "decode":
        from benchmarks import decode

        return decode.decode, decode.mlflow_metrics
    if command == "attention":
        from benchmarks import attention

        return attention.attention, None
    from benchmarks import report

    return report.report, None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run, metrics = work(args.command)
    result = run(args)
    from benchmarks.common import log_to_mlflow, write_json
    from benchmarks.summary import print_throughput_table
    from pipelines.core.params import load_params

    write_json(args.out, result)
    if getattr(args, "mlflow", False):
        dataset = load_params(args.params).data.dataset
        run_id = log_to_mlflow(args.command, result, args.out, dataset, metrics(result))
        log.info("logged to MLflow experiment 'benchmarks', run %s", run_id)
    if args.command == "throughput":
        print_throughput_table(result, sys.stdout)
    if args.command == "attention":
        from benchmarks.attention import print_attention_table

        print_attention_table(result, sys.stdout)


if __name__ == "__main__":
    main()
