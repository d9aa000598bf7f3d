"""`train.fused_loss`: the output projection and the label-smoothed loss computed chunk by chunk
(`pipelines.training.fused_loss`) equal the unfused arithmetic, on CPU and (``gpu`` tests)
under CUDA graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import PAD_ID, build_model
from models.linear import Linear
from pipelines.training import fused_loss
from pipelines.training.cuda_graphs import StepGraphs
from pipelines.training.fused_loss import chunk_loss, fused_token_mean_loss, linear_cross_entropy
from pipelines.training.loss import label_smoothed_nll, token_mean_loss
from pipelines.training.low_precision import LowPrecisionWeights
from pipelines.training.module import TranslationModule
from pipelines.training.step import make_step
from tests.models.conftest import TINY_CONVOLUTIONAL, TINY_RECURRENT
from tests.test_cuda_graphs import SHAPES, TRANSFORMER, VOCAB, _batch
from tests.training_helpers import TINY_OPTIM

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROWS, DIM, TYPES = 37, 16, 50


def _inputs(seed: int = 0):
    torch.manual_seed(seed)
    projection = Linear(DIM, TYPES)
    features = torch.randn(ROWS, DIM, requires_grad=True)
    target = torch.randint(1, TYPES, (ROWS,))
    target[::5] = PAD_ID
    return features, projection, target


def _gradients(features, projection):
    grads = [features.grad, projection.weight.grad, projection.bias.grad]
    features.grad = None
    projection.zero_grad(set_to_none=True)
    return [g.clone() for g in grads]


def _unfused(features, projection, target, smoothing):
    logits = projection(features).unsqueeze(0)
    smoothed, nll = label_smoothed_nll(logits, target.unsqueeze(0), smoothing)
    smoothed.backward()
    return smoothed.detach(), nll.detach(), _gradients(features, projection)


def _fused(features, projection, target, smoothing, chunk_rows):
    smoothed, nll = linear_cross_entropy(features, projection, target, smoothing, chunk_rows)
    smoothed.backward()
    assert not nll.requires_grad
    return smoothed.detach(), nll, _gradients(features, projection)


@pytest.mark.parametrize("chunk_rows", [1, 8, ROWS, 100])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_and_gradients_equal_the_unfused_ones_in_float32(chunk_rows, smoothing):
    features, projection, target = _inputs()
    expected = _unfused(features, projection, target, smoothing)
    smoothed, nll, grads = _fused(features, projection, target, smoothing, chunk_rows)
    torch.testing.assert_close(smoothed, expected[0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll, expected[1], rtol=1e-6, atol=1e-5)
    for grad, want in zip(grads, expected[2], strict=True):
        assert grad.dtype == want.dtype == torch.float32
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)
    assert grads[0][target == PAD_ID].abs().max() == 0  # padding adds nothing


def test_fused_loss_under_bf16_autocast_stays_within_bf16_rounding():
    features, projection, target = _inputs(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _unfused(features, projection, target, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        smoothed, nll, grads = _fused(features, projection, target, 0.1, 8)
    # The same bf16 products and float32 losses; the weight gradient is summed over chunks in
    # float32 where autocast rounds the whole sum to bf16 once (relative step 2^-8).
    torch.testing.assert_close(smoothed, expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nll, expected[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], expected[2][0], rtol=1e-5, atol=1e-6)
    for grad, want in zip(grads[1:], expected[2][1:], strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-2, atol=2e-2)


def test_a_pad_only_batch_has_zero_loss_and_zero_gradients():
    features, projection, _ = _inputs()
    target = torch.full((ROWS,), PAD_ID)
    smoothed, nll, grads = _fused(features, projection, target, 0.1, 8)
    assert smoothed.item() == nll.item() == 0.0
    assert all(g.abs().max() == 0 for g in grads)


def test_without_gradients_only_the_losses_are_computed(monkeypatch):
    features, projection, target = _inputs()
    asked = []

    def recording(logits, target, smoothing, with_gradient):
        asked.append(with_gradient)
        return chunk_loss(logits, target, smoothing, with_gradient)

    monkeypatch.setattr(fused_loss, "chunk_loss", recording)
    with torch.no_grad():
        smoothed, nll = linear_cross_entropy(features, projection, target, 0.1, 8)
        logits = projection(features)
    want = F.cross_entropy(logits, target, ignore_index=PAD_ID, reduction="sum")
    torch.testing.assert_close(nll, want)
    assert not smoothed.requires_grad
    assert asked == [False] * 5  # 37 rows in chunks of 8, no gradient work in any
    linear_cross_entropy(features, projection, target, 0.1, 8)
    assert asked[5:] == [True] * 5


def _model_gradients(config: dict, fused: bool):
    """The training loss of a model (dropout on, the same seed) and every parameter's
    gradient."""
    module = TranslationModule(config, TINY_OPTIM, VOCAB, VOCAB, fused_loss=fused).train()
    projections = []  # the logits, each time the projection layer computes them
    module.model.output_projection.register_forward_hook(lambda *_: projections.append(1))
    torch.manual_seed(7)
    batch = _batch(3)
    loss, nll = module.training_loss(batch["src"], batch["tgt_in"], batch["tgt_out"])
    loss.backward()
    assert len(projections) == (0 if fused else 1)  # fused: never the whole batch's logits
    return loss.detach(), nll, [p.grad for p in module.parameters()]


FAMILIES = {
    "transformer": TRANSFORMER,  # tied embeddings
    "lstm-input-feeding": {**TINY_RECURRENT, "dropout": 0.1},
    "lstm-parallel": {**TINY_RECURRENT, "input_feeding": False, "dropout": 0.1},
    "lstm-no-attention": {**TINY_RECURRENT, "attention": "none", "input_feeding": False},
    "convs2s": {**TINY_CONVOLUTIONAL, "dropout": 0.1},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_on_the_same_loss_and_gradients_fused(family):
    torch.manual_seed(0)
    unfused = _model_gradients(FAMILIES[family], fused=False)
    torch.manual_seed(0)
    fused = _model_gradients(FAMILIES[family], fused=True)
    torch.testing.assert_close(fused[0], unfused[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused[1], unfused[1], rtol=1e-6, atol=1e-6)
    for grad, want in zip(fused[2], unfused[2], strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_what_the_projection_maps_to_the_logits(family):
    torch.manual_seed(0)
    model = build_model(FAMILIES[family], VOCAB).eval()
    batch = _batch(0)
    features = model.features(batch["src"], batch["tgt_in"])
    assert features.shape[:2] == batch["tgt_in"].shape
    torch.testing.assert_close(
        model.output_projection(features), model(batch["src"], batch["tgt_in"])
    )


def test_the_benchmark_step_trains_fused_as_unfused():
    losses = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model({**TRANSFORMER, "dropout": 0.0, "attention_dropout": 0.0}, VOCAB)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        step = make_step(model, model, optimizer, 0.1, 1.0, "32-true", fused_loss=fused)
        losses.append(torch.stack([step(_batch(i, SHAPES[i % 3])) for i in range(6)]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    assert losses[0][-1] < losses[0][0]


def _cuda_step_gradients(fused: bool, graphed: bool):
    """bf16: the losses of one step on each shape, and the summed gradients (dropout 0)."""
    torch.manual_seed(0)
    model = build_model({**TRANSFORMER, "dropout": 0.0, "attention_dropout": 0.0}, VOCAB)
    model = model.cuda().train()

    def loss_function(src, tgt_in, tgt_out):
        if fused:
            return fused_token_mean_loss(model, src, tgt_in, tgt_out, 0.1)
        return token_mean_loss(model(src, tgt_in), tgt_out, 0.1)

    graphs = StepGraphs(loss_function, model.parameters()) if graphed else None
    losses = []
    for _ in range(2):  # the second pass replays the captured graphs
        for shape in SHAPES:
            batch = {k: v.cuda() for k, v in _batch(1, shape).items()}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = (graphs or loss_function)(batch["src"], batch["tgt_in"], batch["tgt_out"])
            loss.backward()
            losses.append(loss.detach())
    return torch.stack(losses), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.gpu
@requires_cuda
def test_fused_loss_under_cuda_graphs_equals_it_eager_and_the_unfused_loss():
    unfused_losses, unfused_grads = _cuda_step_gradients(fused=False, graphed=False)
    eager_losses, eager_grads = _cuda_step_gradients(fused=True, graphed=False)
    losses, grads = _cuda_step_gradients(fused=True, graphed=True)
    torch.testing.assert_close(losses, eager_losses, rtol=1e-6, atol=1e-6)  # replay = eager
    torch.testing.assert_close(grads, eager_grads, rtol=1e-5, atol=1e-6)
    # Against the unfused loss (the chunk work compiled on CUDA): bf16 rounding of the weight
    # gradient's sum, and Inductor's order of the float32 reductions.
    torch.testing.assert_close(losses, unfused_losses, rtol=1e-4, atol=1e-4)
    cosine = F.cosine_similarity(grads.float(), unfused_grads.float(), dim=0)
    assert cosine > 0.9999


def test_the_fused_loss_uses_the_bf16_weight_copies_as_linear_layers_do():
    """With ``LowPrecisionWeights`` the projection's bf16 copy gets the gradient, which
    `move_gradients` adds to the float32 weight, as for the unfused loss."""
    config = {**TRANSFORMER, "dropout": 0.0, "attention_dropout": 0.0, "tie_embeddings": False}
    batch = _batch(2)
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model(config, VOCAB).train()
        copies = LowPrecisionWeights(model)
        assert model.output_projection in copies.layers
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss, _ = fused_token_mean_loss(
                    model, batch["src"], batch["tgt_in"], batch["tgt_out"], 0.1
                )
            else:
                loss, _ = token_mean_loss(
                    model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.1
                )
        loss.backward()
        assert model.output_projection.weight.grad is None  # the copy's, until moved
        copies.move_gradients()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (unfused_loss, unfused_grads), (fused_loss_value, fused_grads) = results
    torch.testing.assert_close(fused_loss_value, unfused_loss, rtol=1e-4, atol=1e-4)
    for grad, want in zip(fused_grads, unfused_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-2, atol=2e-2)
