"""A linear layer that can run on low-precision copies of its weights kept between training steps.

Under autocast every ``nn.Linear`` call casts its float32 weight and bias to bfloat16, and the
backward pass casts their gradients back: two small kernels per tensor per step, which on a GPU
cost host time rather than GPU time. A trainer can instead keep one bfloat16 copy of the weights,
refresh it once per optimizer step, and collect the copies' gradients (see
``pipelines.training.low_precision``): the same values in far fewer kernel launches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) that uses `low_precision_copy` when set.

    The copy is used only when autocast is on for the input's device with the copy's dtype, so
    the layer computes exactly what autocast would; in float32 it uses its own parameters.
    """

    low_precision_copy: tuple[Tensor, Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        copy = self.low_precision_copy
        if (
            copy is not None
            and torch.is_autocast_enabled(x.device.type)
            and torch.get_autocast_dtype(x.device.type) == copy[0].dtype
        ):
            return F.linear(x, *copy)
        return super().forward(x)
