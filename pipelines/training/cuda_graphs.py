"""CUDA graphs of the training loss's forward and backward pass, one pair per batch shape.

An eager ``transformer_base`` step launches about a thousand kernels, each issued by Python and
the autograd engine, and the GPU waits on the host for half of the step. A CUDA graph replays a
captured sequence of kernels with one launch. Token-bucket batches come in a fixed set of shapes
(the sampler packs the same length-sorted sequence every epoch, only the order of the batches
changes), so `StepGraphs` captures each shape the first time it runs and replays the graphs for
every batch of that shape: from the second epoch on, the forward pass is one launch and the
backward pass another. Gradient clipping and the optimizer
step stay eager (a few multi-tensor kernels).

The graphs run the same kernels in the same order as the eager step, with dropout drawing from
the same random stream (a replay advances the generator as the eager kernels would), so training
is the same as without them. Inside a graph the parameters' gradients are added, in one
multi-tensor kernel, to the gradient tensors they had at capture: zero them in place between
steps (``zero_grad(set_to_none=False)``). Those tensors are views of one flat buffer
(``StepGraphs.flat_gradients``), which DDP's all-reduce averages in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from pipelines.training.gradient_sync import FlatGradientSync, flat_gradients

log = logging.getLogger(__name__)

LossFunction = Callable[..., tuple[Tensor, ...]]


@dataclass
class _Captured:
    """The two graphs of one batch shape and the tensors they read and write."""

    inputs: list[Tensor]
    outputs: tuple[Tensor, ...]
    grad_output: Tensor
    forward: torch.cuda.CUDAGraph
    backward: torch.cuda.CUDAGraph


class _Replay(torch.autograd.Function):
    """Autograd node around a captured pair: forward replays one graph, backward the other."""

    @staticmethod
    def forward(ctx: Any, anchor: Tensor, captured: _Captured, *inputs: Tensor) -> Any:
        for static, value in zip(captured.inputs, inputs, strict=True):
            static.copy_(value)
        captured.forward.replay()
        ctx.captured = captured
        # Copies: the next replay overwrites the static outputs, Lightning may still hold these.
        loss, *extras = (output.clone() for output in captured.outputs)
        ctx.mark_non_differentiable(*extras)
        return (loss, *extras)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_: Tensor) -> tuple[None, ...]:
        captured: _Captured = ctx.captured
        captured.grad_output.copy_(grad_loss)
        captured.backward.replay()  # adds into the parameters' gradients
        return (None,) * (2 + len(captured.inputs))


class StepGraphs:
    """Calls ``loss_function(*inputs) -> (loss, *detached metrics)`` through CUDA graphs.

    The first call with a new combination of input shapes captures the forward and backward
    pass of `loss_function` (under the call's autocast state, its cache off as graphs require);
    every call replays the forward graph of its shapes, and ``loss.backward()`` the backward
    graph, which adds the gradients of `parameters` to their ``.grad`` tensors. Call it with no
    autograd graph of an earlier call alive (drop the previous loss after its backward pass).
    Beyond `max_shapes` captured shapes, new shapes run eagerly.
    """

    def __init__(
        self,
        loss_function: LossFunction,
        parameters: Iterable[Tensor],
        max_shapes: int = 1024,
    ) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.loss_function = loss_function
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError("StepGraphs needs parameters that require gradients")
        self.device = self.parameters[0].device
        self.max_shapes = max_shapes
        self.graphs: dict[tuple[Any, ...], _Captured] = {}
        self.replays = 0
        self._pool = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream(self.device)
        self._gradients: list[Tensor] = []
        self.flat_gradients: Tensor | None = None  # the gradients, when laid out flat
        self._anchor = torch.empty(0, device=self.device, requires_grad=True)

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        captured = self.graphs.get(key)
        if captured is None:
            if len(self.graphs) == self.max_shapes:
                return self.loss_function(*inputs)
            captured = self.graphs[key] = self._capture(inputs, key)
            if len(self.graphs) == self.max_shapes:
                log.warning(
                    "CUDA graphs: %d shapes captured, new ones run eagerly", len(self.graphs)
                )
        self._check_gradients()
        self.replays += 1
        return _Replay.apply(self._anchor, captured, *inputs)

    def _check_gradients(self) -> None:
        if any(p.grad is not g for p, g in zip(self.parameters, self._gradients, strict=True)):
            raise RuntimeError(
                "CUDA graphs add into the gradient tensors they were captured with, and a "
                "parameter's .grad was replaced or set to None: zero gradients in place "
                "(optimizer.zero_grad(set_to_none=False))"
            )

    def _capture(self, inputs: Sequence[Tensor], key: tuple[Any, ...]) -> _Captured:
        try:
            return self._capture_graphs(inputs)
        except RuntimeError as err:
            raise RuntimeError(
                f"CUDA graph capture of the training loss failed for input shapes {key} ({err}); "
                "train without it: train.cuda_graphs: false"
            ) from err

    def _capture_graphs(self, inputs: Sequence[Tensor]) -> _Captured:
        # No autograd graph of an earlier call may be alive here: its gradient accumulators
        # would stay bound to the stream they were created on, outside the capture.
        if not self._gradients:  # one flat buffer where it can (DDP reduces it in place)
            self.flat_gradients = flat_gradients(self.parameters)
            if self.flat_gradients is None:  # mixed dtypes or devices: one tensor each
                for p in self.parameters:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            self._gradients = [p.grad for p in self.parameters]
        self._check_gradients()
        static_inputs = [t.detach().clone() for t in inputs]
        autocast = _autocast_without_cache(self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            # Before each capture: lazy per-stream set-up (cuBLAS workspaces), and a compiled
            # model's compilation for these shapes, which must not happen inside a capture.
            self._warm_up(static_inputs, autocast)
            forward = torch.cuda.CUDAGraph()
            with _capturing(forward, self._pool), autocast:
                outputs = self.loss_function(*static_inputs)
            grad_output = torch.zeros_like(outputs[0])
            backward = torch.cuda.CUDAGraph()
            with _capturing(backward, self._pool):
                grads = torch.autograd.grad(
                    outputs[0], self.parameters, grad_output, allow_unused=True
                )
                used = [
                    (g, p.grad)
                    for p, g in zip(self.parameters, grads, strict=True)
                    if g is not None
                ]
                torch._foreach_add_([total for _, total in used], [g for g, _ in used])
            del grads, used
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return _Captured(
            static_inputs, tuple(o.detach() for o in outputs), grad_output, forward, backward
        )

    def _warm_up(self, inputs: Sequence[Tensor], autocast: Any) -> None:
        """One forward and backward pass on the capture stream, leaving gradients and the
        random generator as they were."""
        rng = torch.cuda.get_rng_state(self.device)
        with autocast:
            loss = self.loss_function(*inputs)[0]
        torch.autograd.grad(loss, self.parameters, allow_unused=True)
        torch.cuda.set_rng_state(rng, self.device)


class _capturing:
    """Capture the kernels issued on the current stream into `graph` (graph memory from `pool`).

    Other threads may make CUDA calls meanwhile (the DataLoader's pin-memory thread does), so
    only this thread's unsafe calls abort the capture. (``torch.cuda.graph`` would also
    synchronise and empty the allocator's cache at every capture, once per batch shape.)
    """

    def __init__(self, graph: torch.cuda.CUDAGraph, pool: Any) -> None:
        self.graph, self.pool = graph, pool

    def __enter__(self) -> None:
        self.graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")

    def __exit__(self, *exc: object) -> None:
        self.graph.capture_end()


def _autocast_without_cache(device: torch.device) -> Any:
    """The caller's autocast state for `device`, with the weight-cast cache off."""
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        return nullcontext()
    return torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False)


class CudaGraphsCallback(pl.Callback):
    """Gives the LightningModule a `StepGraphs` for its ``training_loss`` during `fit`.

    Active on CUDA devices for models whose training step never waits on the host
    (``Seq2Seq.graph_safe``: the Transformer; the LSTMs read packed lengths on the host). The
    module zeroes gradients in place while it is set. Under DDP, whose gradient all-reduce runs
    from autograd hooks inside the backward pass (which a replayed graph does not run), a
    `FlatGradientSync` averages the gradients after the backward pass instead.
    """

    def __init__(self) -> None:
        self.sync = FlatGradientSync()
        self.active = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.active = False
        if pl_module.device.type != "cuda":
            log.info("CUDA graphs off: training on %s", pl_module.device.type)
            return
        if not pl_module.model.graph_safe:
            log.info("CUDA graphs off: %s waits on the host", type(pl_module.model).__name__)
            return
        pl_module.step_graphs = StepGraphs(pl_module.training_loss, pl_module.parameters())
        self.active = True
        log.info("CUDA graphs: the training loss's forward and backward replay per batch shape")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active:
            self.sync.on_train_start(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.active:
            self.sync.on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        graphs = getattr(pl_module, "step_graphs", None)
        if graphs is not None:
            log.info(
                "CUDA graphs: %d shapes captured, %d replays", len(graphs.graphs), graphs.replays
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.step_graphs = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        pl_module.step_graphs = None
