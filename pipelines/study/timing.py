"""Forward+backward cost of one training step: median time over repeats, the activations
autograd keeps for the backward pass, and (CUDA) the peak memory the step allocates."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class StepCost:
    """One step's measured cost."""

    seconds: float  # median forward+backward time
    saved_bytes: int  # tensors autograd saves for backward, parameters left out
    peak_bytes: int | None  # CUDA only: peak allocation during the step above what was there


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_activation_bytes(loss_fn: Callable[[], Tensor], module: nn.Module) -> int:
    """Bytes of the distinct storages autograd saves while `loss_fn` runs, parameters excluded;
    the backward pass then runs and frees them."""
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn()
    loss.backward()
    module.zero_grad(set_to_none=True)
    return sum(storages.values())


def measure_step(
    loss_fn: Callable[[], Tensor], module: nn.Module, device: torch.device, repeats: int
) -> StepCost:
    """Run `loss_fn` (the forward pass, to a scalar) and its backward pass: once to count the
    saved activations, once more to warm up, then `repeats` timed times."""
    saved = saved_activation_bytes(loss_fn, module)
    loss_fn().backward()  # warm-up: kernel selection, allocator caches
    module.zero_grad(set_to_none=True)
    times, peak = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        _synchronize(device)
        start = time.perf_counter()
        loss_fn().backward()
        _synchronize(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak or 0, torch.cuda.max_memory_allocated(device) - before)
        module.zero_grad(set_to_none=True)
    return StepCost(statistics.median(times), saved, peak)
