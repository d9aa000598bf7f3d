"""Forward+backward cost of one training step: the fastest of several timed repeats (the one
other processes disturbed least, as `timeit` advises), the activations autograd keeps for the
backward pass, and (CUDA) the peak memory the step allocates."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

K = TypeVar("K")


@dataclass(frozen=True)
class StepCost:
    """One step's measured cost."""

    seconds: float  # forward+backward time, the fastest repeat
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


def _timed_step(
    loss_fn: Callable[[], Tensor], module: nn.Module, device: torch.device
) -> tuple[float, int]:
    """Seconds of one forward+backward pass and, on CUDA, the peak bytes it allocated (else 0)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    _synchronize(device)
    start = time.perf_counter()
    loss_fn().backward()
    _synchronize(device)
    seconds = time.perf_counter() - start
    module.zero_grad(set_to_none=True)
    return seconds, torch.cuda.max_memory_allocated(device) - before if cuda else 0


def measure_steps(
    steps: dict[K, tuple[Callable[[], Tensor], nn.Module]], device: torch.device, repeats: int
) -> dict[K, StepCost]:
    """The cost of each step: key -> (the forward pass to a scalar loss, its module).

    Each step first runs once to count its saved activations and once to warm up (kernel
    choice, allocator caches). Then `repeats` rounds time every step once each, so that a burst
    of load from other processes slows one round of many steps, not every repeat of one.
    """
    saved = {}
    for key, (loss_fn, module) in steps.items():
        saved[key] = saved_activation_bytes(loss_fn, module)
        _timed_step(loss_fn, module, device)
    rounds = [
        {key: _timed_step(loss_fn, module, device) for key, (loss_fn, module) in steps.items()}
        for _ in range(repeats)
    ]
    cuda = device.type == "cuda"
    return {
        key: StepCost(
            min(timed[key][0] for timed in rounds),
            saved[key],
            max(timed[key][1] for timed in rounds) if cuda else None,
        )
        for key in steps
    }
