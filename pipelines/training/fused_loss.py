"""The output projection and the label-smoothed cross-entropy in one pass over chunks of tokens.

Unfused, the training loss materialises the logits of every target token, casts them to
float32, runs log-softmax over them (twice: the smoothed loss and the plain NLL), and its
backward pass walks the same [tokens, vocabulary] tensors again: at 16,384 target tokens and
8,000 types, 131M logits and about 2 GB of float32 activations alive per step.
`linear_cross_entropy` instead takes the decoder's features and the projection, and for one
chunk of rows at a time computes the logits, their log-sum-exp, both losses and the gradient of
the smoothed loss with respect to the logits, and turns that gradient at once into the
gradients of the features and of the projection (what Liger-Kernel's fused linear
cross-entropy does with Triton kernels). Only one chunk's logits are alive at a time; the
backward pass scales the stored gradients by the loss's incoming gradient.

The arithmetic is autocast's: bfloat16 matrix products under bf16 autocast (the weights cast
once per call), log-sum-exp and losses in float32, float32 gradients for float32 parameters;
the projection's weight gradient is summed over chunks in float32. Nothing waits on the host,
so CUDA graphs capture it. On CUDA each chunk's element-wise work (`chunk_loss`) is compiled into
a few fused kernels (Inductor, dynamic shapes: compiled once, on the first call, outside any
graph capture since `StepGraphs` warms up first).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models import PAD_ID
from models.linear import Linear
from models.seq2seq import Seq2Seq

CHUNK_ELEMENTS = 1 << 26  # logits per chunk (256 MiB in float32): fastest of 2^24-2^26 on an H200


def chunk_loss(
    logits: Tensor, target: Tensor, smoothing: float, with_gradient: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One chunk: logits [C, V] (any float dtype), target [C] -> the summed smoothed loss and
    plain NLL over non-pad rows (float32), and with `with_gradient` the smoothed loss's gradient
    with respect to the logits (in their dtype) and its sum over rows (float32: a bias's)."""
    vocab = logits.size(-1)
    scores = logits.float()
    keep = (target != PAD_ID).float()
    lse = torch.logsumexp(scores, dim=-1)
    nll = lse - scores.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = lse - scores.mean(dim=-1)  # cross-entropy against the uniform distribution
    smoothed = ((1 - smoothing) * nll + smoothing * uniform) @ keep
    if not with_gradient:
        return smoothed, nll @ keep, None, None
    # d smoothed / d logits = softmax - (1 - smoothing) * one-hot - smoothing / V; 0 on padding
    grad = scores.sub_(lse.unsqueeze(1)).exp_().sub_(smoothing / vocab)
    grad.scatter_add_(1, target.unsqueeze(1), keep.new_full((target.numel(), 1), smoothing - 1))
    grad.mul_(keep.unsqueeze(1))
    return smoothed, nll @ keep, grad.to(logits.dtype), grad.sum(dim=0)


@functools.cache
def _compiled_chunk_loss() -> Any:
    return torch.compile(chunk_loss, dynamic=True)


class _LinearCrossEntropy(torch.autograd.Function):
    """(features [N, D], weight [V, D], bias [V] | None, target [N]) -> the summed smoothed loss
    and the summed plain NLL (not differentiable) over non-pad targets."""

    @staticmethod
    def forward(
        ctx: Any,
        features: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        smoothing: float,
        chunk_rows: int,
        dtype: torch.dtype,
        track: bool,
    ) -> tuple[Tensor, Tensor]:
        # needs_input_grad says True under no_grad too: `track` is the caller's grad mode.
        needs = [track and needed for needed in ctx.needs_input_grad]
        grad_features = torch.zeros_like(features) if needs[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs[2] else None
        smoothed_sum = torch.zeros((), device=features.device)
        nll_sum = torch.zeros((), device=features.device)
        per_chunk = _compiled_chunk_loss() if features.is_cuda else chunk_loss
        with torch.autocast(features.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            for start in range(0, features.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                x = features[rows].to(dtype)
                smoothed, nll, grad, grad_rows = per_chunk(
                    F.linear(x, w, b), target[rows], smoothing, any(needs[:3])
                )
                smoothed_sum += smoothed
                nll_sum += nll
                if grad_features is not None:
                    grad_features[rows] = grad @ w
                if grad_weight is not None:
                    grad_weight += (grad.t() @ x).float()
                if grad_bias is not None:
                    grad_bias += grad_rows
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(nll_sum)
        return smoothed_sum, nll_sum

    @staticmethod
    def backward(ctx: Any, grad_smoothed: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        grad_features, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_smoothed.float()
        return (
            None if grad_features is None else grad_features * scale.to(grad_features.dtype),
            None if grad_weight is None else (grad_weight * scale).to(weight_dtype),
            None if grad_bias is None else (grad_bias * scale).to(bias_dtype),
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    features: Tensor,
    projection: Linear,
    target: Tensor,
    smoothing: float,
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed cross-entropy and summed plain NLL (detached) over non-pad targets
    of the logits ``projection(features)``, never materialised beyond `chunk_rows` rows
    (default: `CHUNK_ELEMENTS` logits a chunk). features [..., D], target [...]."""
    device = features.device.type
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else features.dtype
    weight, bias = projection.weight, projection.bias
    copy = projection.low_precision_copy
    if autocast and copy is not None and copy[0].dtype == dtype:
        weight, bias = copy  # the bf16 weight copies kept between steps, as Linear uses them
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.size(0))
    flat = features.reshape(-1, features.size(-1))
    smoothed, nll = _LinearCrossEntropy.apply(
        flat, weight, bias, target.reshape(-1), smoothing, rows, dtype, torch.is_grad_enabled()
    )
    return smoothed, nll.detach()


def fused_token_mean_loss(
    model: Seq2Seq, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, smoothing: float
) -> tuple[Tensor, Tensor]:
    """`pipelines.training.loss.token_mean_loss` of ``model(src, tgt_in)`` against `tgt_out`,
    computed by `linear_cross_entropy` from the model's features and output projection."""
    features = model.features(src, tgt_in)
    smoothed, nll = linear_cross_entropy(features, model.output_projection, tgt_out, smoothing)
    ntokens = (tgt_out != PAD_ID).sum()
    return smoothed / ntokens, nll / ntokens
