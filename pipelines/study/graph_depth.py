"""Sequential operations counted in the autograd graph: the longest chain of operations that
must run one after another to produce a tensor (Vaswani et al. 2017, Table 1, middle column)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def autograd_depth(output: Tensor) -> int:
    """Operations on the longest path of the autograd graph ending at `output` (leaves, such as
    parameters, are not operations)."""
    if output.grad_fn is None:
        raise ValueError("autograd_depth needs a tensor computed with autograd")
    depth: dict[object, int] = {}
    stack: list[tuple[object, bool]] = [(output.grad_fn, False)]
    while stack:  # iterative post-order walk: an unrolled recurrence is thousands of nodes deep
        node, expanded = stack.pop()
        if node in depth:
            continue
        inputs = [parent for parent, _ in node.next_functions if parent is not None]
        if expanded:
            is_leaf = type(node).__name__ == "AccumulateGrad"
            depth[node] = max((depth[p] for p in inputs), default=0) + (0 if is_leaf else 1)
            continue
        stack.append((node, True))
        stack += [(parent, False) for parent in inputs if parent not in depth]
    return depth[output.grad_fn]


def unrolled_lstm(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """A one-layer, one-direction, batch-first `lstm` run one position at a time through an
    ``nn.LSTMCell`` with its weights: the same outputs [B, T, H], one operation chain per step."""
    if lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first:
        raise ValueError("unrolled_lstm takes a one-layer, one-direction, batch-first LSTM")
    cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size, bias=lstm.bias)
    cell = cell.to(device=x.device, dtype=x.dtype)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
    for name in names:  # shared, not copied: gradients reach the LSTM's own parameters
        setattr(cell, name, getattr(lstm, f"{name}_l0"))
    hidden = x.new_zeros(x.size(0), lstm.hidden_size)
    state = (hidden, hidden)
    outputs = []
    for position in range(x.size(1)):
        state = cell(x[:, position], state)
        outputs.append(state[0])
    return torch.stack(outputs, dim=1)  # [B, T, H]
