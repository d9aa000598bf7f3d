"""CUDA graphs of the training loss train as the eager step does (``gpu`` tests, skipped without
CUDA), and the LightningModule's side of them (the loss it hands over, gradients zeroed in place)
works on any device."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from models import BOS_ID, PAD_ID, build_model
from pipelines.training.cuda_graphs import CudaGraphsCallback, StepGraphs
from pipelines.training.loss import token_mean_loss
from pipelines.training.module import TranslationModule
from tests.models.conftest import TINY_RECURRENT, TINY_TRANSFORMER
from tests.training_helpers import TINY_OPTIM, quiet_trainer

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB = 30
# Dropout everywhere: a replay must draw the same random numbers as the eager step.
TRANSFORMER = {**TINY_TRANSFORMER, "dropout": 0.1, "attention_dropout": 0.1}
SHAPES = [(4, 9, 8), (6, 5, 7), (3, 12, 10)]  # (sentences, source length, target length)


def _batch(seed: int, shape: tuple[int, int, int] = SHAPES[0]) -> dict[str, torch.Tensor]:
    rows, src_len, tgt_len = shape
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (rows, src_len), generator=generator)
    src[1, src_len - 3 :] = PAD_ID
    tgt = torch.randint(4, VOCAB, (rows, tgt_len), generator=generator)
    tgt[2, tgt_len - 2 :] = PAD_ID
    tgt_in = torch.cat([torch.full((rows, 1), BOS_ID), tgt[:, :-1]], dim=1)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt}


def _epochs(epochs: int) -> list[dict[str, torch.Tensor]]:
    """Every shape once per epoch, in a different order each epoch, with new tokens."""
    order = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    return [_batch(10 * epoch + i, SHAPES[i]) for epoch in range(epochs) for i in order[epoch % 3]]


def _train_on_cuda(graphed: bool, accumulate: int, epochs: int = 3):
    """bf16 autocast, fused AdamW, clipping: `accumulate` micro-batches per optimizer step."""
    torch.manual_seed(0)
    model = build_model(TRANSFORMER, VOCAB).cuda().train()
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, fused=True)

    def loss_function(src, tgt_in, tgt_out):
        return token_mean_loss(model(src, tgt_in), tgt_out, 0.1)

    graphs = StepGraphs(loss_function, parameters) if graphed else None
    losses = []
    batches = _epochs(epochs)
    for start in range(0, len(batches) - accumulate + 1, accumulate):
        for batch in batches[start : start + accumulate]:
            src, tgt_in, tgt_out = (batch[k].cuda() for k in ("src", "tgt_in", "tgt_out"))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = (graphs or loss_function)(src, tgt_in, tgt_out)
            (loss / accumulate).backward()
            losses.append(loss.detach())
        torch.nn.utils.clip_grad_norm_(parameters, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=graphs is None)
    return model, torch.stack(losses), graphs


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("accumulate", [1, 3])
def test_graphed_training_follows_the_eager_training(accumulate):
    torch.manual_seed(123)
    eager_model, eager_losses, _ = _train_on_cuda(graphed=False, accumulate=accumulate)
    torch.manual_seed(123)
    model, losses, graphs = _train_on_cuda(graphed=True, accumulate=accumulate)
    assert len(graphs.graphs) == 3  # one pair per shape, captured in the first epoch
    assert graphs.replays == 9  # every batch, from its capture on
    # Same dropout masks and inputs: any stale input or other random stream would differ by far
    # more than the kernels' run-to-run rounding (atomics in the embedding gradient).
    torch.testing.assert_close(losses, eager_losses, rtol=0, atol=1e-5)
    for (name, param), reference in zip(
        model.named_parameters(), eager_model.parameters(), strict=True
    ):
        torch.testing.assert_close(param, reference, rtol=0, atol=1e-5, msg=name)


@pytest.mark.gpu
@requires_cuda
def test_replayed_steps_never_sync_the_host():
    torch.manual_seed(0)
    model = build_model(TRANSFORMER, VOCAB).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    graphs = StepGraphs(
        lambda *b: token_mean_loss(model(b[0], b[1]), b[2], 0.1), model.parameters()
    )
    batch = [t.cuda() for t in _batch(0).values()]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, nll = graphs(*batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return loss, nll

    step()  # captures the graphs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert graphs.replays == 4
    losses = torch.stack([loss for loss, _ in results])
    assert torch.isfinite(losses).all() and not results[-1][1].requires_grad
    assert len(set(losses.tolist())) == 3  # each replay computed its own step, not a stale one


@pytest.mark.gpu
@requires_cuda
def test_gradients_replaced_after_capture_are_refused():
    model = build_model(TRANSFORMER, VOCAB).cuda().train()
    graphs = StepGraphs(
        lambda *b: token_mean_loss(model(b[0], b[1]), b[2], 0.1), model.parameters()
    )
    batch = [t.cuda() for t in _batch(0).values()]
    graphs(*batch)[0].backward()
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match=r"set_to_none=False"):
        graphs(*batch)


def _fit(accelerator: str, callbacks: list[pl.Callback], epochs: int = 3) -> TranslationModule:
    torch.manual_seed(0)
    module = TranslationModule(TRANSFORMER, TINY_OPTIM, VOCAB, VOCAB)
    loader = DataLoader([_batch(i, shape) for i, shape in enumerate(SHAPES)], batch_size=None)
    validation = DataLoader([_batch(99)], batch_size=None)  # Lightning frees gradients before it
    trainer = quiet_trainer(
        callbacks, accelerator=accelerator, devices=1, max_epochs=epochs, num_sanity_val_steps=0
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=validation)
    return module


class _Recorder(pl.Callback):
    """Records, per optimizer step, whether the module had graphs and its gradient tensors."""

    def __init__(self) -> None:
        self.steps: list[tuple[bool, list[int]]] = []
        self.graphs: list[StepGraphs] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        graphs = pl_module.step_graphs
        if graphs is not None and graphs not in self.graphs:
            self.graphs.append(graphs)
        self.steps.append((graphs is not None, [id(p.grad) for p in pl_module.parameters()]))


@pytest.mark.gpu
@requires_cuda
def test_lightning_fit_with_cuda_graphs_trains_like_eager():
    recorder = _Recorder()
    graphed = _fit("gpu", [CudaGraphsCallback(), recorder])
    eager = _fit("gpu", [])
    (graphs,) = recorder.graphs
    assert (len(graphs.graphs), graphs.replays) == (3, 9)
    assert graphed.step_graphs is None  # dropped at the end of fit
    assert len({tuple(ids) for _, ids in recorder.steps}) == 1  # zeroed in place, never replaced
    state, reference = graphed.state_dict(), eager.state_dict()
    for key in reference:
        torch.testing.assert_close(state[key], reference[key], rtol=0, atol=1e-5, msg=key)


class _PlainCallLoss:
    """Stands in for StepGraphs on the CPU: counts the calls and computes eagerly."""

    def __init__(self, module: TranslationModule) -> None:
        self.module, self.calls = module, 0

    def __call__(self, *inputs: torch.Tensor):
        self.calls += 1
        return self.module.training_loss(*inputs)


class _SetLoss(pl.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.step_graphs = _PlainCallLoss(pl_module)


def test_module_hands_its_loss_to_step_graphs_and_zeroes_gradients_in_place():
    recorder = _Recorder()
    module = _fit("cpu", [_SetLoss(), recorder], epochs=2)
    reference = _fit("cpu", [], epochs=2)
    assert module.step_graphs.calls == 6
    assert len(recorder.steps) == 6 and all(had for had, _ in recorder.steps)
    assert len({tuple(ids) for _, ids in recorder.steps}) == 1  # the same .grad tensors
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_callback_stays_off_on_cpu_and_for_models_that_wait_on_the_host(caplog):
    callback = CudaGraphsCallback()
    trainer = SimpleNamespace(world_size=1)
    module = TranslationModule(TRANSFORMER, TINY_OPTIM, VOCAB, VOCAB)
    with caplog.at_level("INFO", logger="pipelines.training.cuda_graphs"):
        callback.on_fit_start(trainer, module)
    assert module.step_graphs is None
    assert "CUDA graphs off: training on cpu" in caplog.text
    assert build_model(TRANSFORMER, VOCAB).graph_safe
    assert not build_model({**TINY_RECURRENT, "attention": "additive"}, VOCAB).graph_safe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_step_graphs_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        StepGraphs(lambda: (), [torch.zeros(1, requires_grad=True)])
