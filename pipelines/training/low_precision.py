"""bfloat16 weight copies kept between optimizer steps, for bf16-mixed training on one device.

Autocast casts every linear weight to bfloat16 on every call and casts its gradient back in the
backward pass: for ``transformer_base`` about 130 casts each way per step, each a kernel launch
plus an autograd node, while the GPU waits on the host. ``LowPrecisionWeights`` keeps the copies
instead: refreshed with one multi-tensor copy after each optimizer step, their gradients moved to
the float32 parameters with one after each backward pass. The arithmetic is the same as
autocast's (the same round-to-nearest casts, the same bfloat16 matrix products, float32 gradients
and optimizer), in far fewer launches.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from models import build_model
from models.linear import Linear
from pipelines.core.errors import PipelineError

log = logging.getLogger(__name__)

PRECISION = "bf16-mixed"


def probe_bf16_lstm(device_type: str) -> None:
    """A tiny LSTM's forward and backward pass under bfloat16 autocast on `device_type`.

    Raises the RuntimeError of a device that cannot run it: on a CPU without bfloat16
    instructions (no AVX-512), oneDNN has no LSTM primitive for bfloat16.
    """
    lstm = nn.LSTM(4, 4, batch_first=True, bidirectional=True).to(device_type)
    inputs = torch.zeros(2, 3, 4, device=device_type, requires_grad=True)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        outputs, _ = lstm(inputs)
    outputs.float().sum().backward()


def check_bf16_support(model: nn.Module, device_type: str) -> None:
    """Refuse bf16-mixed training of `model` on a CPU that cannot run its LSTM in bfloat16.

    Raises a PipelineError naming ``train.precision`` (one line for the user, no traceback)
    where a model with an ``nn.LSTM`` would train on a CPU whose oneDNN has no bfloat16 LSTM;
    anything else (no LSTM, a GPU, a CPU that can) passes.
    """
    if device_type != "cpu" or not any(isinstance(m, nn.LSTM) for m in model.modules()):
        return
    try:
        probe_bf16_lstm(device_type)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0].split(". ")[0].rstrip(".")
        raise PipelineError(
            f"train.precision: {PRECISION}: this CPU cannot run the LSTM in bfloat16 "
            f"(oneDNN: {reason}); use train.precision: 32-true"
        ) from err


def train_device_type(accelerator: str) -> str:
    """The device type Lightning trains on for ``train.accelerator`` (auto: CUDA if present)."""
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def check_precision_support(precision: str, accelerator: str, model: dict[str, Any]) -> None:
    """The train stage's check of ``train.precision`` for the model config `model`, run before
    any run is opened: with bf16-mixed, `check_bf16_support` on the device it would train on."""
    if precision != PRECISION:
        return
    with torch.device("meta"):  # the layers alone: no weights allocated or initialised
        layers = build_model(model, 8)
    check_bf16_support(layers, train_device_type(accelerator))


class LowPrecisionWeights:
    """bfloat16 copies of the weights and biases of `model`'s ``models.linear.Linear`` layers.

    Layers with a parameter that is shared with another module (tied embeddings) or frozen keep
    autocast's own casts. Call `move_gradients` after every backward pass (so gradient
    accumulation sums in float32, as autocast's would) and `refresh` after every optimizer step;
    `release` detaches the copies from the layers.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        self.layers = [
            module
            for module in model.modules()
            if isinstance(module, Linear)
            and all(uses[id(p)] == 1 and p.requires_grad for p in module.parameters(recurse=False))
        ]
        self.parameters = [p for layer in self.layers for p in layer.parameters(recurse=False)]
        self.copies = [torch.empty_like(p, dtype=dtype).requires_grad_() for p in self.parameters]
        by_parameter = dict(zip(map(id, self.parameters), self.copies, strict=True))
        for layer in self.layers:
            bias = None if layer.bias is None else by_parameter[id(layer.bias)]
            layer.low_precision_copy = (by_parameter[id(layer.weight)], bias)
        self._gradients = [torch.empty_like(p) for p in self.parameters]
        self.refresh()

    def refresh(self) -> None:
        """Copy the float32 parameters into the bfloat16 copies (after every optimizer step)."""
        if self.copies:
            with torch.no_grad():
                torch._foreach_copy_(self.copies, self.parameters)

    def move_gradients(self) -> None:
        """Add the copies' gradients, in float32, to the parameters' and clear the copies'.

        A parameter without a gradient gets its copy's (a float32 buffer kept between steps);
        one with a gradient (accumulation over micro-batches) has its copy's added to it, as
        autograd accumulates autocast's float32 gradients. A copy that received no gradient
        leaves its parameter's gradient as it was.
        """
        fresh, accumulated = [], []
        for parameter, buffer, copy in zip(
            self.parameters, self._gradients, self.copies, strict=True
        ):
            if copy.grad is not None:
                (fresh if parameter.grad is None else accumulated).append((parameter, buffer, copy))
        if fresh:
            torch._foreach_copy_([b for _, b, _ in fresh], [c.grad for _, _, c in fresh])
            for parameter, buffer, _ in fresh:
                parameter.grad = buffer
        if accumulated:
            grads = [p.grad for p, _, _ in accumulated]
            torch._foreach_add_(grads, [c.grad for _, _, c in accumulated])
        for _, _, copy in fresh + accumulated:
            copy.grad = None

    def release(self) -> None:
        """Detach the copies: the layers compute from their float32 parameters again."""
        for layer in self.layers:
            layer.low_precision_copy = None
        self.layers, self.parameters, self.copies, self._gradients = [], [], [], []


class LowPrecisionWeightsCallback(pl.Callback):
    """Keeps `LowPrecisionWeights` for the LightningModule's model during `fit` in bf16-mixed.

    Inactive in any other precision and with more than one process: DDP reduces the gradients of
    the parameters the forward pass used, and the float32 parameters would not be among them.
    Inactive with CUDA graphs (`pipelines.training.cuda_graphs`), whose replays cast on the GPU
    alone.
    """

    def __init__(self) -> None:
        self.weights: LowPrecisionWeights | None = None
        self._stale = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if str(trainer.precision) != PRECISION:
            return
        if trainer.world_size > 1:
            log.info("bf16 weight copies off: %d processes (DDP)", trainer.world_size)
            return
        if getattr(pl_module, "step_graphs", None) is not None:
            log.info("bf16 weight copies off: CUDA graphs replay autocast's casts on the GPU")
            return
        self.weights = LowPrecisionWeights(pl_module)
        log.info("bf16 weight copies kept for %d linear layers", len(self.weights.layers))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.weights is not None:
            self.weights.move_gradients()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._stale = True  # the parameters change: refresh the copies after this batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        if self.weights is not None and self._stale:
            self.weights.refresh()
            self._stale = False

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self.weights is not None:
            self.weights.release()
            self.weights = None
