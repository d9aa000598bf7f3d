"""`train.compile`: the Transformer's layers compiled for training only (regional compilation),
alone and under CUDA graphs, against the eager arithmetic (``gpu`` tests skip without CUDA)."""

from __future__ import annotations

import operator
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.transformer import TransformerSeq2Seq
from pipelines.training.cuda_graphs import StepGraphs
from pipelines.training.loss import token_mean_loss
from tests.models.conftest import TINY_TRANSFORMER
from tests.pipeline_helpers import REPO
from tests.test_cuda_graphs import SHAPES, TRANSFORMER, VOCAB, _batch, _epochs

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is and counts the calls."""

    def __init__(self) -> None:
        self.compiled = 0
        self.runs = 0
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiled += 1
        self.graphs.append(graph_module)

        def run(*args: object) -> object:
            self.runs += 1
            return graph_module.forward(*args)

        return run


def test_training_runs_the_compiled_layers_and_everything_else_the_eager_ones():
    torch.manual_seed(0)
    model = build_model(TINY_TRANSFORMER, VOCAB)
    names = list(model.state_dict())
    batch = _batch(0)
    model.train()
    eager = model(batch["src"], batch["tgt_in"])
    backend = CountingBackend()
    model.compile_for_training(backend=backend)
    assert list(model.state_dict()) == names  # checkpoints, export and averaging unchanged
    compiled = model(batch["src"], batch["tgt_in"])
    compiled.sum().backward()
    assert backend.compiled >= 2  # an encoder layer and a decoder layer (shared by each stack)
    assert backend.runs == 4  # 2 encoder + 2 decoder layers, each through its compiled graph
    # Dropout 0: the same function; the traced layers write short attention out (fast_attention)
    # where eager calls the fused kernel, so float32 rounding apart.
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    traced = {node.target for graph in backend.graphs for node in graph.graph.nodes}
    assert operator.matmul in traced and F.scaled_dot_product_attention not in traced
    runs = backend.runs
    with torch.no_grad():  # validation's loss, and decoding, keep the eager layers
        model(batch["src"], batch["tgt_in"])
    model.eval()
    model(batch["src"], batch["tgt_in"])
    assert backend.runs == runs


def _loss_of(model: torch.nn.Module):
    def loss_function(src, tgt_in, tgt_out):
        return token_mean_loss(model(src, tgt_in), tgt_out, 0.1)

    return loss_function


def _step_gradients(model: torch.nn.Module, graphs: StepGraphs | None, bf16: bool):
    """The loss and the gradients of one step on each of the three shapes, summed."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    loss_function = _loss_of(model)
    losses = []
    for shape in SHAPES:
        batch = {k: v.cuda() for k, v in _batch(1, shape).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = (graphs or loss_function)(batch["src"], batch["tgt_in"], batch["tgt_out"])
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses), torch.cat([p.grad.flatten() for p in parameters])


def _pair(bf16: bool):
    """Eager, then compiled layers under CUDA graphs, from the same weights (dropout 0)."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model({**TRANSFORMER, "dropout": 0.0, "attention_dropout": 0.0}, VOCAB)
        model = model.cuda().train()
        graphs = None
        if compiled:
            model.compile_for_training()
            graphs = StepGraphs(_loss_of(model), model.parameters())
        results.append(_step_gradients(model, graphs, bf16))
    return results


@pytest.mark.gpu
@requires_cuda
def test_compiled_graphed_step_equals_the_eager_step_in_float32():
    (eager_losses, eager_grads), (losses, grads) = _pair(bf16=False)
    # Inductor sums a LayerNorm or a softmax in another order: float32 rounding only.
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads, eager_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@requires_cuda
def test_compiled_graphed_step_stays_within_bf16_rounding_of_the_eager_step():
    (eager_losses, eager_grads), (losses, grads) = _pair(bf16=True)
    # Fused kernels keep float32 between element-wise ops where eager rounds each to bf16
    # (8 bits of mantissa, relative step 2^-8 = 0.4 %).
    torch.testing.assert_close(losses, eager_losses, rtol=1e-2, atol=1e-2)
    cosine = torch.nn.functional.cosine_similarity(grads.float(), eager_grads.float(), dim=0)
    assert cosine > 0.999


def _train_with_dropout(compiled: bool) -> list[float]:
    """The loss of every step: the same 3 x 3 batches four times, bf16, dropout on."""
    torch.manual_seed(0)
    model = build_model(TRANSFORMER, VOCAB).cuda().train()
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, fused=True)
    graphs = None
    if compiled:
        model.compile_for_training()
        graphs = StepGraphs(_loss_of(model), parameters)
    losses = []
    for _ in range(4):
        for batch in _epochs(3):
            batch = {k: v.cuda() for k, v in batch.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = (graphs or _loss_of(model))(
                    batch["src"], batch["tgt_in"], batch["tgt_out"]
                )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=graphs is None)
            losses.append(loss.item())
    return losses


@pytest.mark.gpu
@requires_cuda
def test_compiled_graphed_training_learns_as_the_eager_training():
    """Dropout on: compiled dropout draws other masks, so the losses follow the eager curve
    without equalling it. Means over the 9 batches of a pass, first pass against last."""
    curves = {compiled: _train_with_dropout(compiled) for compiled in (False, True)}
    first = {c: sum(losses[:9]) / 9 for c, losses in curves.items()}
    last = {c: sum(losses[-9:]) / 9 for c, losses in curves.items()}
    for compiled in (False, True):  # 36 steps of a tiny model: the loss falls by a few %
        assert last[compiled] < 0.97 * first[compiled], curves[compiled]
    assert first[True] == pytest.approx(first[False], rel=0.05), curves
    assert last[True] == pytest.approx(last[False], rel=0.1), curves


def test_the_train_stage_builds_a_compiled_model_when_train_compile_is_set(monkeypatch):
    import pipelines.stages.train as stage
    from pipelines.core.params import load_params
    from pipelines.core.paths import PATHS

    monkeypatch.setattr(stage, "read_references", lambda *args: [])  # no prepared data needed
    compiled = []
    monkeypatch.setattr(
        TransformerSeq2Seq, "compile_for_training", lambda self, **options: compiled.append(self)
    )
    params = load_params(REPO / "params.yaml")
    tokenizers = SimpleNamespace(decode_tgt=str, src_vocab_size=VOCAB, tgt_vocab_size=VOCAB)
    for flag in (False, True):
        flagged = replace(params, train=replace(params.train, compile=flag))
        run = flagged.model_run("transformer", None)
        module = stage.build_module(run, flagged, PATHS, tokenizers, None)
    assert compiled == [module.model]  # once, for the run with train.compile: true
