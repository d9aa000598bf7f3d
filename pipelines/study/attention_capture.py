"""Per-head attention weights of a model's MultiHeadAttention layers, captured with forward
hooks while the model runs its ordinary forward pass (the weights are asked for on the way in)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from models.attention import MultiHeadAttention


@contextmanager
def captured_attention(modules: list[MultiHeadAttention]) -> Iterator[list[list[Tensor]]]:
    """Within the block, every call of `modules[i]` appends its weights [B, H, T, S] to the
    i-th list yielded; the layers compute them with the written-out softmax(QKᵀ/√d)."""
    captured: list[list[Tensor]] = [[] for _ in modules]

    def ask_for_weights(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True}

    def keeper(index: int):
        def keep(module: Any, args: tuple, kwargs: dict, output: tuple) -> None:
            captured[index].append(output[1].detach())

        return keep

    handles = []
    for index, module in enumerate(modules):
        handles.append(module.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
        handles.append(module.register_forward_hook(keeper(index), with_kwargs=True))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
