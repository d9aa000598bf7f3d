"""`bench throughput`: training steps of our models and of MarianMTModel at the same
architecture on the same batches, round by round, in one process or each in its own."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import (
    Batches,
    environment,
    load_batches,
    marian_for,
    matmul_tflops,
    write_json,
)
from benchmarks.jobs import Job, planned_jobs
from benchmarks.measure import Subject, ThroughputSettings, measure
from benchmarks.summary import speedups
from models import PAD_ID, build_model
from models.attention import use_cudnn_attention
from pipelines.core.params import Params, load_params

log = logging.getLogger("nmt.bench")

MODES = {"on": [True], "off": [False], "both": [True, False]}
DEFINITION = {
    "tokens_per_sec": "non-pad source + target tokens of timed training steps / seconds",
    "mfu": "6 * parameters * tokens_per_sec / measured bf16 matmul rate",
    "mfu_sided": "6 * (encoder_params * src_tokens + decoder_params * tgt_tokens) "
    "/ seconds / measured bf16 matmul rate",
}


@dataclass
class Setup:
    """What every job of one process measures on: the params, batches and settings."""

    params: Params
    batches: Batches
    vocab_size: int
    settings: ThroughputSettings
    device: str


def build_subject(setup: Setup, job: Job) -> Subject:
    """Our model or Marian for `job.arch`, seeded, on the device (compiled if asked)."""
    arch_params = setup.params.arch(job.arch)
    torch.manual_seed(setup.params.seeds[0])
    memory_baseline = (
        (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
        if torch.cuda.is_available()
        else (0, 0)
    )
    if job.kind == "ours":
        model = build_model(arch_params.model, setup.vocab_size).to(setup.device)
        forward, name = model, job.arch
    else:
        model = marian_for(arch_params.model, setup.vocab_size).to(setup.device)

        def forward(src: Tensor, tgt_in: Tensor) -> Tensor:
            # No decoder padding mask: target padding is at the end, so the causal mask alone
            # gives real positions the same context (as in TransformerSeq2Seq).
            return model(
                input_ids=src, attention_mask=src != PAD_ID, decoder_input_ids=tgt_in
            ).logits

        name = f"marian({job.arch})"
    if job.compiled and job.kind == "ours":
        model.compile_for_training(dynamic=True)  # as train.compile does
    elif job.compiled:
        model.compile(dynamic=True)
    ours = job.kind == "ours"
    return Subject(
        name, model, forward, arch_params.optim, job.compiled,
        low_precision_weights=job.copies and ours and not job.compiled,
        cuda_graphs=job.graphed and ours and model.graph_safe,
        fused_loss=ours and setup.params.train.fused_loss,
        memory_baseline=memory_baseline,
    )  # fmt: skip


def run_job(setup: Setup, job: Job) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """Build and measure one job in this process: the result and `measure`'s deferred kernel
    profile."""
    subject = build_subject(setup, job)
    run, add_profile = measure(subject, setup.batches, setup.settings)
    run.update(kind=job.kind, arch=job.arch, job=job.spec())
    if job.kind == "marian":
        run["attn_implementation"] = getattr(subject.model.config, "_attn_implementation", None)
    return run, add_profile


def run_isolated(args: argparse.Namespace, cudnn: bool, job: Job) -> dict[str, Any]:
    """Measure one job in a fresh Python process, so no job runs after another in its process."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "job.json"
        command = [
            sys.executable, "-m", "benchmarks.bench", "throughput", "--job", job.spec(),
            "--params", str(args.params), "--tokenized", str(args.tokenized),
            "--batch-tokens", str(args.batch_tokens), "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--repeats", str(args.repeats),
            "--profile-steps", str(args.profile_steps), "--cudnn-sdpa", "on" if cudnn else "off",
            "--device", args.device, "--out", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        child = json.loads(out.read_text())
    (run,) = child["runs"]
    run["isolated"] = True
    run["bf16_matmul_tflops"] = child.get("bf16_matmul_tflops")
    return run


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Every planned job (or `args.job` alone), measured in turn; the results so far are written
    to `args.out` after each job, so partial results survive a kill."""
    params = load_params(args.params)
    meta = json.loads((args.tokenized / "tokenizer.json").read_text())
    batch_tokens = args.batch_tokens or params.train.batch_tokens
    batches = load_batches(
        args.tokenized,
        params.data.train_split,
        batch_tokens,
        args.warmup + args.steps + 3,
        length_multiple=params.train.length_multiple,  # the train stage's batch shapes
    )
    cudnn = {"on": True, "off": False, None: params.train.cudnn_attention}[args.cudnn_sdpa]
    copies_mode = args.low_precision_weights or (
        "on" if params.train.low_precision_weights else "off"
    )
    graphs_mode = args.cuda_graphs or ("on" if params.train.cuda_graphs else "off")
    use_cudnn_attention(cudnn)  # the same SDPA backends for every model, Marian's too
    results: dict[str, Any] = {
        "environment": environment(),
        "sdpa_cudnn_enabled": torch.backends.cuda.cudnn_sdp_enabled(),
        "params": str(args.params),
        "batch_tokens": batch_tokens,
        "precision": params.train.precision,
        "low_precision_weights": copies_mode,  # requested; each run says if it applied (bf16)
        "cuda_graphs": graphs_mode,
        "padding": batches.stats,
        "isolated": args.isolate,
        "definition": DEFINITION,
        "runs": [],
    }
    peak = None
    if torch.cuda.is_available() and not args.isolate:
        peak = matmul_tflops()
        results["bf16_matmul_tflops"] = round(peak, 1)
        log.info("bf16 matmul: %.1f TFLOP/s", peak)
    settings = ThroughputSettings(
        args.warmup, args.steps, args.repeats, params.train.precision,
        params.train.gradient_clip_val, peak, args.profile_steps,
    )  # fmt: skip
    setup = Setup(params, batches, meta["src_vocab_size"], settings, args.device)
    archs = args.archs or list(params.models)
    jobs = planned_jobs(args, archs, MODES[copies_mode], MODES[graphs_mode])
    measure_jobs(args, setup, [(0, args.job)] if args.job else jobs, results, cudnn)
    rates = [r["bf16_matmul_tflops"] for r in results["runs"] if r.get("bf16_matmul_tflops")]
    if rates:
        results["bf16_matmul_tflops"] = round(statistics.median(rates), 1)
    return results


def measure_jobs(
    args: argparse.Namespace,
    setup: Setup,
    jobs: list[tuple[int, Job]],
    results: dict[str, Any],
    cudnn: bool,
) -> None:
    """Measure `jobs` into `results["runs"]` until `args.max_seconds` are spent; a failing job
    is recorded with its error and the others go on. Kernel profiles run last."""
    deadline = time.monotonic() + args.max_seconds
    profiles: list[Callable[[], None]] = []  # run after every timed job (see `measure`)
    for round_, job in jobs:
        entry = {"name": job.arch, "kind": job.kind, "round": round_, "job": job.spec()}
        if time.monotonic() > deadline:
            log.warning("time budget spent: skipping %s %s", job.kind, job.arch)
            results["runs"].append({**entry, "skipped": "time budget"})
            continue
        try:
            if args.isolate:
                run = run_isolated(args, cudnn, job)
            else:
                run, add_profile = run_job(setup, job)
                if add_profile is not None and round_ == 0:
                    profiles.append(add_profile)
            run["round"] = round_
            results["runs"].append(run)
            results.update(speedups(results["runs"]))
            write_json(args.out, results)  # partial results survive a kill
        except Exception as err:  # one failing model must not lose the others' numbers
            log.exception("%s %s failed", job.kind, job.arch)
            variant = {"compiled": job.compiled, "cuda_graphs": job.graphed}
            results["runs"].append({**entry, **variant, "error": repr(err)})
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for add_profile in profiles:  # each model once, after every timed measurement
        add_profile()
    results.update(speedups(results["runs"]))
