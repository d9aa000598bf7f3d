"""Throughput results read back: the name of each measured run, its speed-up over Marian measured
in the same round, its MLflow metrics and the printed table."""

from __future__ import annotations

import statistics
from typing import Any, TextIO

from benchmarks.common import Metric

MLFLOW_FIGURES = ("tokens_per_sec", "ms_per_step", "peak_memory_gib", "peak_reserved_gib", "mfu",
                  "mfu_sided", "gpu_busy_fraction")  # fmt: skip


def without_weight_copies(run: dict[str, Any]) -> bool:
    """Our eager model in bf16, measured with autocast's per-call casts instead of the copies."""
    return (
        run.get("kind") == "ours"
        and bool(run.get("autocast_bf16"))
        and not run.get("compiled")
        and not run.get("cuda_graphs")
        and not run.get("low_precision_weights")
    )


def run_label(run: dict[str, Any]) -> str:
    """The model's name, how it ran (compiled; CUDA graphs; fused loss; autocast casts instead of
    bf16 weight copies) and the round."""
    label = run["name"] + (" +compile" if run.get("compiled") else "")
    label += " +graphs" if run.get("cuda_graphs") else ""
    label += " +fused-loss" if run.get("fused_loss") else ""
    label += " -copies" if without_weight_copies(run) else ""
    if run.get("round"):
        label += f" (round {run['round'] + 1})"
    return label


def metric_label(run: dict[str, Any]) -> str:
    """An MLflow-safe metric prefix for one measured model: 'marian(x)' -> 'marian_x'."""
    label = run["name"].replace("(", "_").replace(")", "")
    label += "_without_weight_copies" if without_weight_copies(run) else ""
    label += "_cuda_graphs" if run.get("cuda_graphs") else ""
    label += "_fused_loss" if run.get("fused_loss") else ""
    return label + ("_compiled" if run.get("compiled") else "")


def speedup_key(ours: dict[str, Any], marian: dict[str, Any]) -> str:
    """'ours_<mode>_vs_marian_<mode>': eager, or compiled, cuda_graphs and fused_loss joined by
    '_' (compiled_cuda_graphs, ...), and eager without bf16 weight copies."""
    parts = [m for m in ("compiled", "cuda_graphs", "fused_loss") if ours.get(m)] or ["eager"]
    mode = "_".join(parts) + ("_without_weight_copies" if without_weight_copies(ours) else "")
    marian_mode = "compiled" if marian["compiled"] else "eager"
    return f"ours_{mode}_vs_marian_{marian_mode}"


def speedups(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """tokens/s of our model over MarianMTModel's at the same architecture, for each way of
    running ours (:func:`speedup_key`): each round's ratio (ours and Marian measured in the same
    round) and their median."""
    done = [r for r in runs if "tokens_per_sec" in r]
    per_round: dict[str, list[float]] = {}
    for reference in (r for r in done if r["kind"] == "marian"):
        for ours in done:
            if ours["kind"] != "ours" or ours["arch"] != reference["arch"]:
                continue
            if ours["round"] != reference["round"]:
                continue
            ratio = round(ours["tokens_per_sec"] / reference["tokens_per_sec"], 3)
            per_round.setdefault(speedup_key(ours, reference), []).append(ratio)
    return {
        "speedup_vs_marian": {k: round(statistics.median(v), 3) for k, v in per_round.items()},
        "speedup_vs_marian_per_round": per_round,
    }


def mlflow_metrics(result: dict[str, Any]) -> list[Metric]:
    """Every figure of every run as '<model>/<figure>' (the round as step) and the speed-ups."""
    metrics: list[Metric] = []
    for run in result["runs"]:
        for figure in MLFLOW_FIGURES:
            if run.get(figure) is not None:
                metrics.append((f"{metric_label(run)}/{figure}", run[figure], run["round"]))
    for key, ratio in result.get("speedup_vs_marian", {}).items():
        metrics.append((f"speedup/{key}", ratio, None))
    return metrics


def print_throughput_table(result: dict[str, Any], stream: TextIO) -> None:
    environment = result["environment"]
    stream.write(
        f"\n{environment['device']}  torch {environment['torch']}  "
        f"cuDNN SDPA {result['sdpa_cudnn_enabled']}  "
        f"bf16 matmul {result.get('bf16_matmul_tflops')} TFLOP/s  batch_tokens "
        f"{result['batch_tokens']}  padding {result['padding']['padding_fraction']:.3f}\n"
    )
    stream.write(
        f"{'model':32s} {'params':>8s} {'tok/s':>10s} {'ms/step':>8s} {'GiB':>6s} {'resGiB':>6s} "
        f"{'MFU':>6s} {'sided':>6s} {'syncs':>5s} {'kernels':>7s} {'GPU ms':>7s} {'busy':>5s}\n"
    )
    for run in result["runs"]:
        stream.write(table_row(run))
    stream.write(
        f"speedup vs Marian (median): {result.get('speedup_vs_marian')}; per round: "
        f"{result.get('speedup_vs_marian_per_round')}\n"
    )


def table_row(run: dict[str, Any]) -> str:
    label = run_label(run)
    if "tokens_per_sec" not in run:
        return f"{label:32s} {run.get('error') or run.get('skipped')}\n"
    profile = run.get("profile", {})
    return (
        f"{label:32s} {run['parameters'] / 1e6:7.1f}M {run['tokens_per_sec']:10.0f} "
        f"{run['ms_per_step']:8.2f} {run.get('peak_memory_gib', 0):6.2f} "
        f"{run.get('peak_reserved_gib', 0):6.2f} "
        f"{run.get('mfu', 0):6.3f} {run.get('mfu_sided', 0):6.3f} "
        f"{run['host_syncs_per_step']!s:>5s} "
        f"{profile.get('kernels_per_step', '-')!s:>7s} "
        f"{profile.get('gpu_kernel_ms_per_step', '-')!s:>7s} "
        f"{run.get('gpu_busy_fraction', '-')!s:>5s}\n"
    )
