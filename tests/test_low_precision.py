"""bf16 weight copies kept between steps compute exactly what autocast computes (CPU autocast)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from models import BOS_ID, PAD_ID, build_model
from models.linear import Linear
from pipelines.core.errors import PipelineError
from pipelines.training.low_precision import (
    LowPrecisionWeights,
    LowPrecisionWeightsCallback,
    check_bf16_support,
)
from pipelines.training.module import TranslationModule
from pipelines.training.step import make_step
from tests.models.conftest import TINY_TRANSFORMER
from tests.training_helpers import TINY_OPTIM, quiet_trainer

VOCAB = 30
TRANSFORMER = {**TINY_TRANSFORMER, "dropout": 0.1}  # dropout: the copies keep its RNG stream
LSTM_ADDITIVE = {
    "family": "recurrent",
    "embedding_dim": 16,
    "hidden_size": 32,
    "attention": "additive",
    "dropout": 0.1,
}


def _batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (4, 9), generator=generator)
    src[1, 6:] = PAD_ID
    tgt = torch.randint(4, VOCAB, (4, 8), generator=generator)
    tgt[2, 5:] = PAD_ID
    tgt_in = torch.cat([torch.full((4, 1), BOS_ID), tgt[:, :-1]], dim=1)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt}


def _train(model, steps: int, copies: bool) -> list[torch.Tensor]:
    """`steps` bf16 autocast AdamW steps with clipping, as the train stage runs them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = make_step(model, model, optimizer, 0.1, 1.0, "bf16-mixed", low_precision_weights=copies)
    losses = []
    model.train()
    for index in range(steps):
        torch.manual_seed(100 + index)  # the same dropout masks in both runs
        losses.append(step(_batch(index)))
    return losses


def skip_unless_this_cpu_trains_in_bf16(model: torch.nn.Module) -> None:
    """Skip, saying why, where this CPU cannot train `model` in bf16-mixed (an LSTM without
    oneDNN's bfloat16 kernels: the train stage refuses that setting there)."""
    try:
        check_bf16_support(model, "cpu")
    except PipelineError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("config", [TRANSFORMER, LSTM_ADDITIVE], ids=["transformer", "lstm"])
def test_training_with_copies_is_bitwise_the_autocast_training(config):
    torch.manual_seed(0)
    reference = build_model(config, VOCAB)
    skip_unless_this_cpu_trains_in_bf16(reference)
    model = copy.deepcopy(reference)
    expected = _train(reference, steps=4, copies=False)
    got = _train(model, steps=4, copies=True)
    assert torch.equal(torch.stack(got), torch.stack(expected))
    for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert param.dtype == torch.float32, name
        assert torch.equal(param, ref), name


def test_copies_cover_untied_linear_layers_only():
    model = build_model(TRANSFORMER, VOCAB)  # tie_embeddings: the output projection is shared
    weights = LowPrecisionWeights(model)
    linear = [m for m in model.modules() if isinstance(m, Linear)]
    assert model.output_projection in linear
    assert model.output_projection not in weights.layers
    assert model.output_projection.low_precision_copy is None
    assert set(weights.layers) == set(linear) - {model.output_projection}
    # Per layer: q/k/v + out, (cross: q, k/v, out), FFN in/out; weight and bias each.
    assert len(weights.copies) == 2 * (2 * 4 + 2 * 7)
    assert all(c.dtype == torch.bfloat16 and c.is_leaf for c in weights.copies)


def test_copy_is_used_only_under_autocast_of_its_dtype():
    torch.manual_seed(0)
    layer = Linear(8, 4)
    x = torch.randn(3, 8)
    float32_out = layer(x)
    weights = LowPrecisionWeights(torch.nn.Sequential(layer))
    with torch.no_grad():
        layer.weight.add_(1.0)  # the copy is now stale until refreshed
    # In float32 the layer computes from its own (updated) weights, not from the copy.
    torch.testing.assert_close(layer(x), float32_out + x.sum(-1, keepdim=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stale = layer(x)
        weights.refresh()
        fresh = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.low_precision_copy = None
        autocast_out = layer(x)
    assert not torch.equal(stale, fresh)
    assert torch.equal(fresh, autocast_out)
    assert fresh.dtype == torch.bfloat16


def test_gradients_move_to_float32_parameters_and_unused_stay_none():
    torch.manual_seed(0)
    used, unused = Linear(8, 4), Linear(8, 4)
    reference = copy.deepcopy(used)
    weights = LowPrecisionWeights(torch.nn.ModuleList([used, unused]))
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        used(x).float().square().sum().backward()
        reference(x).float().square().sum().backward()
    assert used.weight.grad is None  # until moved
    weights.move_gradients()
    assert used.weight.grad.dtype == torch.float32
    assert torch.equal(used.weight.grad, reference.weight.grad)
    assert torch.equal(used.bias.grad, reference.bias.grad)
    assert unused.weight.grad is None and unused.bias.grad is None
    assert all(c.grad is None for c in weights.copies)


def test_gradients_of_micro_batches_accumulate_in_float32_like_autocast():
    torch.manual_seed(0)
    layer = Linear(8, 4)
    reference = copy.deepcopy(layer)
    weights = LowPrecisionWeights(torch.nn.Sequential(layer))
    for micro_batch in range(3):  # moved after every backward, as the callback does
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(micro_batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x).float().square().sum().backward()
            reference(x).float().square().sum().backward()
        weights.move_gradients()
    assert torch.equal(layer.weight.grad, reference.weight.grad)
    assert torch.equal(layer.bias.grad, reference.bias.grad)


def test_release_detaches_the_copies():
    model = build_model(TRANSFORMER, VOCAB)
    weights = LowPrecisionWeights(model)
    layers = list(weights.layers)
    weights.release()
    assert all(layer.low_precision_copy is None for layer in layers)
    weights.refresh()  # nothing left to refresh: a no-op, not an error
    weights.move_gradients()


def _fit(precision: str, callbacks: list[pl.Callback], accumulate: int = 1) -> TranslationModule:
    torch.manual_seed(0)
    module = TranslationModule(TRANSFORMER, TINY_OPTIM, VOCAB, VOCAB)
    loader = DataLoader([_batch(i) for i in range(3 * accumulate)], batch_size=None)
    trainer = quiet_trainer(
        callbacks,
        accelerator="cpu",
        precision=precision,
        max_steps=3,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        deterministic=True,
    )
    trainer.fit(module, train_dataloaders=loader)
    return module


class _CountingCallback(LowPrecisionWeightsCallback):
    """Records how many layers had copies at each training batch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.layers_per_batch: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, *rest) -> None:
        self.layers_per_batch.append(len(self.weights.layers) if self.weights else 0)
        super().on_train_batch_end(trainer, pl_module, *rest)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_trains_bitwise_like_autocast_and_releases_at_the_end(accumulate):
    callback = _CountingCallback()
    with_copies = _fit("bf16-mixed", [callback], accumulate)
    without = _fit("bf16-mixed", [], accumulate)
    # The copies were in use at every batch (3 optimizer steps of `accumulate` batches each).
    assert callback.layers_per_batch == [22] * 3 * accumulate
    assert callback.weights is None  # released by on_fit_end
    assert all(getattr(m, "low_precision_copy", None) is None for m in with_copies.model.modules())
    state, reference = with_copies.state_dict(), without.state_dict()
    assert state.keys() == reference.keys()
    assert all(state[k].dtype == reference[k].dtype for k in state)
    changed = [k for k in state if not torch.equal(state[k], reference[k])]
    assert not changed, changed


def test_callback_stays_off_outside_bf16_mixed_and_with_several_processes():
    module = TranslationModule(TRANSFORMER, TINY_OPTIM, VOCAB, VOCAB)
    callback = LowPrecisionWeightsCallback()
    callback.on_fit_start(SimpleNamespace(precision="32-true", world_size=1), module)
    assert callback.weights is None
    callback.on_fit_start(SimpleNamespace(precision="bf16-mixed", world_size=2), module)
    assert callback.weights is None
    callback.on_fit_start(SimpleNamespace(precision="bf16-mixed", world_size=1), module)
    assert callback.weights is not None and callback.weights.layers
