"""Where a training step's time goes, measured inside the train stage (``train.profile_steps``).

`StepProfiler` is a Lightning profiler: Lightning wraps every hook, the loader's ``next`` and
each training batch in it. Past the first epoch a process trains (CUDA graphs are captured,
kernels compiled and planned there), it times N training steps of the second epoch (after two
warm-up steps): the wall time per step and the host time of each Lightning action per step
(hooks nest: ``run_training_batch`` holds the optimizer step, which holds the training step).
Then it traces N steps of the third epoch with ``torch.profiler``: the operators dispatched, the
CUDA runtime calls (synchronisations among them) and the GPU's kernels by category. Tracing
slows the host (a CUDA graph's launch is traced kernel by kernel), so host times come from the
untraced window only. Windows end where the epoch's training does, before validation.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.profilers import Profiler

from pipelines.core.atomic import atomic_write_json

log = logging.getLogger(__name__)

# What a kernel does, from its name (first match wins): where a step's GPU time goes, so that
# fusion work starts where the time is. Names are those of cuBLAS/CUTLASS, FlashAttention and
# PyTorch's ATen kernels (torch 2.x on Hopper).
KERNEL_CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn_generated", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|cublas|sm90_xmma|nvjet|wgmma|splitk", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
    ("softmax / cross-entropy", re.compile(r"softmax|nll_loss|cross_entropy|log_softmax", re.I)),
    ("layer norm", re.compile(r"layer_norm|layernorm|rms_norm", re.I)),
    ("reduction", re.compile(r"reduce|sum_kernel|norm_kernel|argmax|max_kernel", re.I)),
    ("dropout / random", re.compile(r"fused_dropout|dropout|philox|bernoulli|rand", re.I)),
    ("copy / cast", re.compile(r"copy|cast|memcpy|memset|to_copy|cat_|index", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|pointwise|activation", re.I)),
)

PROFILE_FILE = "step_profile.json"  # rank 0's; other ranks' add ``.rank<r>`` to the stem
STEP = "run_training_batch"  # Lightning's action around one training batch
EPOCH = "run_training_epoch"
WARMUP_STEPS = 2  # profiled but not counted: the profiler's own start-up


def profile_files(folder: Path) -> list[Path]:
    """The step profiles in `folder`, every rank's, in name order."""
    return sorted(folder.glob(f"{Path(PROFILE_FILE).stem}*"))


def kernel_category(name: str) -> str:
    """The category of :data:`KERNEL_CATEGORIES` a kernel's name falls in, else "other"."""
    return next((label for label, pattern in KERNEL_CATEGORIES if pattern.search(name)), "other")


def _per_step(total: float, steps: int) -> float:
    return round(total / max(steps, 1), 3)


def _durations(events: list[Any], device_type: Any) -> dict[str, list[float]]:
    """Milliseconds of each call of every event name on `device_type`."""
    durations: dict[str, list[float]] = defaultdict(list)
    for event in events:  # not the ranges of record_function, which show on the GPU too
        if event.device_type == device_type and not getattr(event, "is_user_annotation", False):
            durations[event.name].append(event.time_range.elapsed_us() / 1e3)
    return durations


def _ranked(durations: dict[str, list[float]], steps: int, top: int) -> list[dict[str, Any]]:
    """The `top` names by time, with their calls and milliseconds per step."""
    ranked = sorted(durations.items(), key=lambda item: -sum(item[1]))[:top]
    return [
        {
            "name": name[:100],
            "calls_per_step": len(t) / steps,
            "ms_per_step": _per_step(sum(t), steps),
        }
        for name, t in ranked
    ]


def kernel_summary(events: list[Any], steps: int, top: int = 12) -> dict[str, Any]:
    """GPU work in ``torch.profiler`` `events` of `steps` steps: kernels launched and kernel time
    per step, time by :func:`kernel_category`, and the kernels that take the most time."""
    from torch.autograd import DeviceType

    kernels = _durations(events, DeviceType.CUDA)
    categories: dict[str, float] = defaultdict(float)
    for name, times in kernels.items():
        categories[kernel_category(name)] += sum(times)
    by_time = sorted(categories.items(), key=lambda item: -item[1])
    return {
        "steps": steps,
        "kernels_per_step": _per_step(sum(len(t) for t in kernels.values()), steps),
        "gpu_kernel_ms_per_step": _per_step(sum(map(sum, kernels.values())), steps),
        "ms_per_step_by_category": {label: _per_step(ms, steps) for label, ms in by_time},
        "top_kernels": _ranked(kernels, steps, top),
    }


def runtime_calls(events: list[Any], steps: int, top: int = 10) -> list[dict[str, Any]]:
    """The CUDA runtime and driver calls the host made, by host time per step: launches, copies,
    synchronisations (a ``...Synchronize``, or a ``cudaMemcpy`` to the host, waits for the GPU)."""
    from torch.autograd import DeviceType

    host = _durations(events, DeviceType.CPU)
    return _ranked({name: t for name, t in host.items() if name.startswith("cu")}, steps, top)


class _Window:
    """Training steps of one epoch, counted after `skip` steps until `steps` are counted or the
    epoch's training ends: wall time per step and the host time of each Lightning action."""

    def __init__(self, skip: int, steps: int) -> None:
        self.skip, self.steps = skip, steps
        self.begun = 0
        self.boundaries: list[float] = []  # each counted step's start, then the last one's end
        self.host: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        self.closed = False

    @property
    def counting(self) -> bool:
        return not self.closed and self.begun > self.skip

    @property
    def counted(self) -> int:
        return max(len(self.boundaries) - 1, 0)

    def step_begins(self, now: float) -> None:
        self.begun += 1
        if self.begun > self.skip and not self.closed:
            self.boundaries.append(now)
            self.closed = len(self.boundaries) > self.steps

    def close(self, now: float) -> None:
        if self.counting:
            self.boundaries.append(now)
        self.closed = True

    def action(self, name: str, starts: bool, now: float) -> None:
        if starts and self.counting:
            self._started[name] = now
        elif not starts and name in self._started:
            self.host[name] += now - self._started.pop(name)

    def summary(self) -> dict[str, Any]:
        steps = self.counted
        wall_ms = (self.boundaries[-1] - self.boundaries[0]) * 1e3
        return {
            "steps": steps,
            "wall_ms_per_step": _per_step(wall_ms, steps),
            "host_ms_per_step_by_action": {
                name: _per_step(seconds * 1e3, steps)
                for name, seconds in sorted(self.host.items(), key=lambda item: -item[1])
            },
        }


def _ends_training_part(action_name: str) -> bool:
    """Validation runs inside Lightning's training epoch: it closes a window of steps."""
    return action_name == EPOCH or "validation" in action_name or "val_next" in action_name


class StepProfiler(Profiler):
    """Times `steps` training steps of the second epoch this process trains, then traces as many
    of the third with ``torch.profiler`` (which slows them: CUDA graph launches are traced kernel
    by kernel), and writes the summary to `output` (JSON; see the module's docstring). A window
    ends early where its epoch's training does."""

    def __init__(self, steps: int, output: Path) -> None:
        super().__init__()
        self.steps = steps
        self.output = Path(output)
        self._epochs = 0
        self._epoch_start = 0.0
        self._epoch_start_ms: float | None = None  # epoch 2's start to its first training batch
        self._timing: _Window | None = None
        self._trace: _Window | None = None
        self._profiler: torch.profiler.profile | None = None
        self._events: list[Any] = []
        self._warned = False

    def start(self, action_name: str) -> None:
        now = time.perf_counter()
        if action_name == EPOCH:
            self._epochs += 1
            self._epoch_start = now
            if self._epochs == 2:
                self._timing = _Window(WARMUP_STEPS, self.steps)
            elif self._epochs == 3 and self._timing is not None and self._timing.counted:
                self._trace = _Window(WARMUP_STEPS, self.steps)
        elif action_name == STEP:
            self._step_begins(now)
        elif _ends_training_part(action_name):
            self._close(now)
        for window in (self._timing, self._trace):
            if window is not None:
                window.action(action_name, True, now)

    def stop(self, action_name: str) -> None:
        now = time.perf_counter()
        for window in (self._timing, self._trace):
            if window is not None:
                window.action(action_name, False, now)
        if action_name == EPOCH:
            self._close(now)

    def _step_begins(self, now: float) -> None:
        if self._epochs == 2 and self._timing is not None:
            if self._epoch_start_ms is None:
                self._epoch_start_ms = (now - self._epoch_start) * 1e3
            self._timing.step_begins(now)
        elif self._trace is not None and not self._trace.closed:
            if self._profiler is None:
                self._profiler = _start_trace(self.steps, self._keep_events)
            else:
                self._profiler.step()
            self._trace.step_begins(now)
            if self._trace.closed:
                self._stop_trace()

    def _close(self, now: float) -> None:
        for window in (self._timing, self._trace):
            if window is not None and not window.closed:
                window.close(now)
        if self._profiler is not None:
            self._stop_trace()

    def _keep_events(self, profiler: torch.profiler.profile) -> None:
        self._events = list(profiler.events())  # the profiler drops them when the cycle ends

    def _stop_trace(self) -> None:
        profiler, self._profiler = self._profiler, None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        profiler.stop()
        self.write()

    def describe(self) -> None:
        """At the end of fit (Lightning calls it): write what was measured, with this process's
        peak GPU memory of the whole run."""
        if self._timing is not None:
            self.write()

    def write(self) -> None:
        """The summary of both windows, as far as they went, to `output` (``.rank<r>`` added to
        its name on ranks other than 0)."""
        timing = self._timing
        if timing is None or not timing.counted:
            if not self._warned:
                log.warning("train.profile_steps: no step of a second epoch was timed; no profile")
            self._warned = True
            return
        summary: dict[str, Any] = {
            "epoch": 1,  # counted from the first epoch this process trained
            "rank": 0,
            "epoch_start_ms": round(self._epoch_start_ms or 0.0, 3),
            **timing.summary(),
        }
        trace = self._trace
        if trace is not None and trace.counted:
            steps, events = trace.counted, self._events
            summary["trace"] = {
                "epoch": 2,
                "steps": steps,
                "wall_ms_per_step_traced": trace.summary()["wall_ms_per_step"],
                "aten_ops_per_step": _per_step(
                    sum(e.name.startswith("aten::") for e in events), steps
                ),
                "runtime_calls": runtime_calls(events, steps),
            }
            if torch.cuda.is_available():
                summary["trace"]["gpu"] = kernel_summary(events, steps)
        if torch.cuda.is_available():  # so far: the whole run's, once fit has ended
            summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            summary["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        output = self.output
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            summary["rank"] = rank = torch.distributed.get_rank()
            if rank:
                output = output.with_name(f"{output.stem}.rank{rank}{output.suffix}")
        atomic_write_json(output, summary)
        log.info("step profile written to %s", output)


def _start_trace(steps: int, on_ready: Callable[[Any], None]) -> torch.profiler.profile:
    """A started ``torch.profiler`` (CPU, and CUDA when present) that records `steps` steps after
    its warm-up and hands the events to `on_ready`."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=0, warmup=WARMUP_STEPS, active=steps),
        on_trace_ready=on_ready,
    )
    profiler.start()
    return profiler
