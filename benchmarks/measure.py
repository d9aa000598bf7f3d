"""Timing one model's training steps: tokens per second, peak memory, MFU, host synchronisations
and (CUDA) the kernels of a step under ``torch.profiler``."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.common import Batches, sided_parameters, synchronize
from benchmarks.summary import run_label
from pipelines.core.params import OptimParams
from pipelines.training.optim import build_optimizer
from pipelines.training.profiling import kernel_summary
from pipelines.training.step import make_step

log = logging.getLogger("nmt.bench")

Step = Callable[[dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class ThroughputSettings:
    """How every model of one benchmark process trains and is timed: `steps` timed steps after
    `warmup` ones, `repeats` times; `peak_tflops` (the measured bf16 matrix-product rate) for MFU;
    with `profile_steps` (CUDA) that many more steps under torch.profiler."""

    warmup: int
    steps: int
    repeats: int
    precision: str  # train.precision: bf16 autocast for "bf16-mixed"
    gradient_clip_val: float
    peak_tflops: float | None = None
    profile_steps: int = 0

    @property
    def autocast_bf16(self) -> bool:
        return self.precision.startswith("bf16")


@dataclass
class Subject:
    """One model to measure, trained as `optim` says: compiled, with bf16 weight copies kept
    between steps, replaying CUDA graphs of its loss, its output projection fused with the loss.
    `memory_baseline`: the allocated and reserved bytes before it was built (other models are
    kept for their profiles)."""

    name: str
    model: nn.Module
    forward: Callable[[Tensor, Tensor], Tensor]
    optim: OptimParams
    compiled: bool = False
    low_precision_weights: bool = False
    cuda_graphs: bool = False
    fused_loss: bool = False
    memory_baseline: tuple[int, int] = (0, 0)


@dataclass
class Timing:
    """Wall-clock seconds of the phases of :func:`time_steps`."""

    warmup_seconds: float
    first_pass_seconds: float
    seconds_per_repeat: list[float]
    syncs_in_3_steps: int | None
    loss_finite: bool


def count_syncs(step: Step, batches: list[dict[str, Tensor]]) -> int | None:
    """Host-device synchronisations during `batches` steps (CUDA's sync debug mode), or None."""
    if not torch.cuda.is_available():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in batches:
                step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def kernel_profile(step: Step, batches: list[dict[str, Tensor]], top: int = 12) -> dict[str, Any]:
    """GPU work of `batches` training steps under torch.profiler: kernels launched and kernel
    time per step, and the kernels that take the most time. Kernel time far under the wall time
    of a step means the host (Python, dispatch, launches) is the bottleneck, not the GPU."""
    from torch.profiler import ProfilerActivity, profile

    synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            step(batch)
        synchronize()
    return kernel_summary(list(prof.events()), max(len(batches), 1), top)


def time_steps(
    step: Step, batches: list[dict[str, Tensor]], settings: ThroughputSettings
) -> Timing:
    """Warm-up steps, 3 steps counting host syncs, one untimed pass over the timed batches (every
    shape seen once, as in training, where an epoch's shapes recur every epoch: cuDNN attention
    plans, allocator blocks), then the timed passes, peak memory counted from their start."""
    timed = batches[settings.warmup : settings.warmup + settings.steps]
    started = time.perf_counter()
    for batch in batches[: settings.warmup]:
        step(batch)
    synchronize()
    warmup_seconds = time.perf_counter() - started
    syncs = count_syncs(step, batches[settings.warmup : settings.warmup + 3])
    started = time.perf_counter()
    for batch in timed:
        step(batch)
    synchronize()
    first_pass_seconds = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(settings.repeats):
        synchronize()
        start = time.perf_counter()
        for batch in timed:
            losses = step(batch)
        synchronize()
        seconds.append(time.perf_counter() - start)
    finite = bool(torch.isfinite(losses).item())
    return Timing(warmup_seconds, first_pass_seconds, seconds, syncs, finite)


def measure(
    subject: Subject, batches: Batches, settings: ThroughputSettings
) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """Throughput, peak memory, MFU and host syncs of `subject`'s training steps.

    With `settings.profile_steps` (CUDA), also returns a function that profiles that many more
    steps and adds the kernel figures to the result: call it after every timed measurement of
    the process, as a model measured after torch.profiler has run in its process runs slower.
    Peak memory counts what was allocated, and reserved, beyond `subject.memory_baseline`. CUDA
    graphs keep their activations in a memory pool of their own, which counts as reserved only.
    """
    copies = subject.low_precision_weights and settings.autocast_bf16 and not subject.cuda_graphs
    subject = dataclasses.replace(subject, low_precision_weights=copies)  # bf16 copies only
    model, optim = subject.model, subject.optim
    fused = torch.cuda.is_available()
    optimizer = build_optimizer(model, optim.lr, optim.betas, optim.weight_decay, fused=fused)
    step = make_step(
        model, subject.forward, optimizer, optim.label_smoothing, settings.gradient_clip_val,
        settings.precision, copies, subject.cuda_graphs, subject.fused_loss,
    )  # fmt: skip
    model.train()
    timing = time_steps(step, batches.tensors, settings)
    window = slice(settings.warmup, settings.warmup + settings.steps)
    result = figures(subject, batches, window, timing, settings)
    log.info(
        "%s: %.0f tokens/s, %.2f ms/step, peak %.2f GiB, MFU %s, syncs/step %s",
        run_label(result), result["tokens_per_sec"], result["ms_per_step"],
        result.get("peak_memory_gib", 0.0), result.get("mfu"), result["host_syncs_per_step"],
    )  # fmt: skip
    if not (settings.profile_steps and torch.cuda.is_available()):
        return result, None
    profiled = batches.tensors[window][: settings.profile_steps]

    def add_profile() -> None:
        result["profile"] = kernel_profile(step, profiled)
        result["gpu_busy_fraction"] = round(
            result["profile"]["gpu_kernel_ms_per_step"] / result["ms_per_step"], 3
        )

    return result, add_profile


def figures(
    subject: Subject, batches: Batches, window: slice, timing: Timing, settings: ThroughputSettings
) -> dict[str, Any]:
    """The result of one measurement: the timed steps are the batches in `window`."""
    timed = batches.tensors[window]
    src_tokens, tgt_tokens = sum(batches.src_tokens[window]), sum(batches.tgt_tokens[window])
    elapsed = statistics.median(timing.seconds_per_repeat)
    tokens_per_sec = (src_tokens + tgt_tokens) / elapsed
    encoder_params, decoder_params = sided_parameters(subject.model)
    syncs = timing.syncs_in_3_steps
    result = {
        "name": subject.name,
        "compiled": subject.compiled,
        "autocast_bf16": settings.autocast_bf16,
        "low_precision_weights": subject.low_precision_weights,
        "cuda_graphs": subject.cuda_graphs,
        "fused_loss": subject.fused_loss,
        "parameters": sum(p.numel() for p in subject.model.parameters()),
        "encoder_parameters": encoder_params,
        "decoder_parameters": decoder_params,
        "steps": len(timed),
        "repeats": settings.repeats,
        "seconds_per_repeat": [round(s, 4) for s in timing.seconds_per_repeat],
        "ms_per_step": round(1000 * elapsed / len(timed), 3),
        "src_tokens": src_tokens,
        "tgt_tokens": tgt_tokens,
        "tokens_per_sec": round(tokens_per_sec, 1),
        "sentences_per_batch": round(sum(b["src"].size(0) for b in timed) / max(len(timed), 1), 1),
        "warmup_steps": settings.warmup,
        "warmup_seconds": round(timing.warmup_seconds, 2),
        "first_pass_seconds": round(timing.first_pass_seconds, 3),
        "host_syncs_per_step": None if syncs is None else syncs / 3,
        "loss_finite": timing.loss_finite,
    }
    if torch.cuda.is_available():
        allocated, reserved = subject.memory_baseline
        peak = torch.cuda.max_memory_allocated() - allocated
        result["peak_memory_gib"] = round(peak / 2**30, 3)
        peak_reserved = torch.cuda.max_memory_reserved() - reserved
        result["peak_reserved_gib"] = round(peak_reserved / 2**30, 3)
    if settings.peak_tflops:
        peak_flops = settings.peak_tflops * 1e12
        flops = 6 * result["parameters"] * tokens_per_sec
        sided = 6 * (encoder_params * src_tokens + decoder_params * tgt_tokens) / elapsed
        result["model_tflops"] = round(flops / 1e12, 2)
        result["mfu"] = round(flops / peak_flops, 4)
        result["mfu_sided"] = round(sided / peak_flops, 4)
    return result
