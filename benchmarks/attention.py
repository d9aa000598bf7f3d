"""`bench attention`: one attention call, forward and backward, on the batch shapes of the
training plan: PyTorch's fused kernel (`fast_attention`, what eager training and decoding run)
against the same attention written out (`scaled_dot_product_attention`), eager and compiled, the
form compiled training traces for short sequences (`COMPOSED_ATTENTION_MAX_LEN`).

Per shape of the epoch's plan at `--batch-tokens`: the cross-attention (the target's queries over
the batch's padded source keys, with its padding mask) and the causal self-attention of the
target. Random values, bf16 on CUDA and float32 on CPU, heads and widths of `--arch`.
"""

from __future__ import annotations

import argparse
import collections
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import environment, load_batches, median_seconds
from models.attention import (
    COMPOSED_ATTENTION_MAX_LEN,
    fast_attention,
    scaled_dot_product_attention,
)
from models.vocab import PAD_ID
from pipelines.core.params import load_params

log = logging.getLogger("nmt.bench")

Attention = Callable[[Tensor, Tensor, Tensor, Tensor | None, bool], Tensor]


def written_out(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    return scaled_dot_product_attention(q, k, v, mask, causal)[0]


def implementations() -> dict[str, Attention]:
    """The kernel, and the written-out attention eager and compiled (one graph per shape)."""
    return {
        "kernel": fast_attention,
        "written_out": written_out,
        "written_out_compiled": torch.compile(written_out, dynamic=False),
    }


def median_ms(function: Callable[[], object], iterations: int, repeats: int) -> float:
    """Median over `repeats` of the mean milliseconds of `iterations` calls, after 3 warm-ups."""
    return round(median_seconds(function, iterations, repeats) * 1000, 4)


def time_case(
    function: Attention,
    inputs: tuple[Tensor, ...],
    mask: Tensor | None,
    causal: bool,
    reference: Tensor,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One function's forward and forward + backward time, and its largest difference from
    `reference` (the kernel's output, float32)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    grad = torch.randn_like(inputs[0])

    def forward() -> Tensor:
        return function(*leaves, mask, causal)

    def forward_backward() -> None:
        forward().backward(grad)

    with torch.no_grad():
        difference = (forward().float() - reference).abs().max().item()
    return {
        "max_abs_difference": difference,
        "forward_ms": median_ms(forward, args.iterations, args.repeats),
        "forward_backward_ms": median_ms(forward_backward, args.iterations, args.repeats),
    }


def measure_shape(
    batch: dict[str, Tensor],
    functions: dict[str, Attention],
    heads: int,
    head_dim: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every function on one batch's cross-attention and causal self-attention."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    sentences, keys = batch["src"].shape
    queries = batch["tgt_in"].shape[1]
    padding = (batch["src"] == PAD_ID).to(device)

    def tensor(length: int) -> Tensor:
        shape = (sentences, heads, length, head_dim)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    cases = {
        "padded": ((tensor(queries), tensor(keys), tensor(keys)), padding, False),
        "causal": ((tensor(queries), tensor(queries), tensor(queries)), None, True),
    }
    rows = []
    for attention, (inputs, mask, causal) in cases.items():
        with torch.no_grad():
            reference = fast_attention(*inputs, mask, causal).float()
        for name, function in functions.items():
            rows.append(
                {
                    "shape": [sentences, keys, queries],  # the batch's
                    "sentences": sentences,
                    "keys": inputs[1].shape[2],
                    "queries": queries,
                    "attention": attention,
                    "implementation": name,
                    **time_case(function, inputs, mask, causal, reference, args),
                }
            )
    return rows


def attention(args: argparse.Namespace) -> dict[str, Any]:
    """Every distinct batch shape of the plan's first `args.batches` batches, measured in turn."""
    params = load_params(args.params)
    model = params.arch(args.arch).model
    heads, width = model["n_heads"], model["d_model"]
    batches = load_batches(
        args.tokenized, params.data.train_split, args.batch_tokens, args.batches,
        length_multiple=params.train.length_multiple,
    )  # fmt: skip
    by_shape: dict[tuple[int, ...], dict[str, Tensor]] = {}
    counts: collections.Counter = collections.Counter()
    for batch in batches.tensors:
        shape = (*batch["src"].shape, batch["tgt_in"].shape[1])
        by_shape.setdefault(shape, batch)
        counts[shape] += 1
    functions = implementations()
    rows = []
    for shape, batch in sorted(by_shape.items()):
        log.info("attention: %d sentences, %d source and %d target positions", *shape)
        for row in measure_shape(batch, functions, heads, width // heads, args):
            rows.append({**row, "batches": counts[shape]})
    return {
        "environment": environment(),
        "params": str(args.params),
        "arch": args.arch,
        "heads": heads,
        "head_dim": width // heads,
        "batch_tokens": args.batch_tokens,
        "composed_attention_max_len": COMPOSED_ATTENTION_MAX_LEN,
        "runs": rows,
    }


def print_attention_table(result: dict[str, Any], stream: Any) -> None:
    """Forward + backward milliseconds per shape, one column per implementation."""
    names = list(dict.fromkeys(row["implementation"] for row in result["runs"]))
    cells: dict[tuple[Any, ...], dict[str, float]] = {}
    for row in result["runs"]:
        key = (*row["shape"], row["attention"], row["batches"])
        cells.setdefault(key, {})[row["implementation"]] = row["forward_backward_ms"]
    stream.write(f"\n{result['environment'].get('device', '')}  forward + backward ms\n")
    stream.write(f"{'sentences':>9} {'source':>6} {'target':>6} {'attention':>9} {'batches':>7}")
    stream.write("".join(f" {name:>21}" for name in names) + "\n")
    for (sentences, source, target, kind, count), times in cells.items():
        stream.write(f"{sentences:>9} {source:>6} {target:>6} {kind:>9} {count:>7}")
        stream.write("".join(f" {times[name]:>21.3f}" for name in names) + "\n")
