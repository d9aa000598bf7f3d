"""The GPU fast paths compute the same function as the plain ones (checked on the CPU in CI), and
on a CUDA machine run without a host sync per training step (``gpu`` tests, skipped elsewhere).

Covered elsewhere, not repeated here: SDPA against the explicit attention formula
(tests/models/test_attention.py::test_fast_path_equals_explicit_path and
::test_need_weights_path_equals_fused_path), batched against one-sentence-at-a-time beam search
(tests/models/test_search.py::test_batched_search_equals_one_sentence_at_a_time), and decode_step
against the teacher-forced decoder for every variant (tests/models/test_seq2seq.py).
"""

from __future__ import annotations

import pytest
import torch

from models import PAD_ID, build_model
from models.attention import (
    AdditiveAttention,
    MultiplicativeAttention,
    fast_attention,
    use_cudnn_attention,
)
from models.attention import scaled_dot_product_attention as explicit_attention
from pipelines.training.loss import label_smoothed_nll
from pipelines.training.step import make_step

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB = 40
RECURRENT = {
    "family": "recurrent",
    "cell": "lstm",
    "embedding_dim": 16,
    "hidden_size": 24,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.0,
}


def _batch(generator: torch.Generator, batch: int = 3, src_len: int = 7, tgt_len: int = 6):
    src = torch.randint(4, VOCAB, (batch, src_len), generator=generator)
    src[1, 4:] = PAD_ID  # a shorter sentence
    tgt_in = torch.randint(4, VOCAB, (batch, tgt_len), generator=generator)
    tgt_in[:, 0] = 2
    return src, tgt_in


def _stepwise_logits(model, src, tgt_in):
    """The reference: one decode_step per target position."""
    state = model.init_decoder_state(model.encode(src))
    steps = []
    for position in range(tgt_in.size(1)):
        logits, state, _ = model.decode_step(tgt_in[:, position], state)
        steps.append(logits)
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("attention", ["none", "additive", "multiplicative"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parallel_recurrent_decoder_equals_the_step_loop(attention, cell):
    """Without input feeding the decoder runs as one cuDNN call over the whole target."""
    torch.manual_seed(0)
    model = build_model(
        {**RECURRENT, "cell": cell, "attention": attention, "input_feeding": False}, VOCAB
    ).eval()
    src, tgt_in = _batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        parallel = model(src, tgt_in)
        stepwise = _stepwise_logits(model, src, tgt_in)
    torch.testing.assert_close(parallel, stepwise, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["additive", "multiplicative"])
def test_parallel_recurrent_attention_matches_the_step_loop(attention):
    torch.manual_seed(0)
    model = build_model({**RECURRENT, "attention": attention, "input_feeding": False}, VOCAB)
    src, tgt_in = _batch(torch.Generator().manual_seed(2))
    with torch.no_grad():
        parallel = model.cross_attention(src, tgt_in)  # [B, T, S]
        state = model.init_decoder_state(model.encode(src))
        steps = []
        for position in range(tgt_in.size(1)):
            _, state, weights = model.decode_step(tgt_in[:, position], state)
            steps.append(weights)
    torch.testing.assert_close(parallel, torch.stack(steps, dim=1), atol=1e-6, rtol=1e-5)
    assert (parallel[1, :, 4:] == 0).all()  # padding gets exactly zero weight


def test_parallel_recurrent_decoder_gradients_equal_the_step_loop():
    torch.manual_seed(0)
    model = build_model({**RECURRENT, "attention": "additive", "input_feeding": False}, VOCAB)
    src, tgt_in = _batch(torch.Generator().manual_seed(3))
    target = torch.randint(4, VOCAB, tgt_in.shape, generator=torch.Generator().manual_seed(4))
    label_smoothed_nll(model(src, tgt_in), target, 0.1)[0].backward()
    parallel = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    label_smoothed_nll(_stepwise_logits(model, src, tgt_in), target, 0.1)[0].backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(parallel[name], param.grad, atol=1e-5, rtol=1e-4)


ATTENTIONS = {
    "additive": (lambda: AdditiveAttention(6, 8, 5), 6),
    "general": (lambda: MultiplicativeAttention(6, 8), 6),
    "dot": (lambda: MultiplicativeAttention(8, 8, "dot"), 8),
}


@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_attend_all_equals_one_query_at_a_time(kind):
    make, query_dim = ATTENTIONS[kind]
    torch.manual_seed(0)
    attention = make()
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 4, query_dim, generator=generator)
    keys = torch.randn(2, 5, 8, generator=generator)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    context, weights = attention.attend_all(queries, keys, padding)
    for t in range(4):
        step_context, step_weights = attention(queries[:, t], keys, padding)
        torch.testing.assert_close(context[:, t], step_context, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(weights[:, t], step_weights, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- on a CUDA GPU only

TRANSFORMER = {
    "family": "transformer",
    "d_model": 64,
    "n_heads": 4,
    "d_ff": 128,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.1,
    "norm": "pre",
}


def _cuda_step(model, copies: bool):
    """The product.s plain training step (bf16 autocast, fused AdamW, clipping) for `model`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    return make_step(model, model, optimizer, 0.1, 1.0, "bf16-mixed", low_precision_weights=copies)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("with_copies", [False, True])
def test_bf16_transformer_step_with_fused_adamw_never_syncs_the_host(with_copies):
    torch.manual_seed(0)
    model = build_model(TRANSFORMER, VOCAB).cuda().train()
    step = _cuda_step(model, with_copies)
    src, tgt_in = (t.cuda() for t in _batch(torch.Generator().manual_seed(0)))
    batch = {"src": src, "tgt_in": tgt_in, "tgt_out": torch.roll(tgt_in, -1, dims=1)}
    step(batch)  # warm-up: handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(batch) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(loss).item() for loss in losses)


@pytest.mark.gpu
@requires_cuda
def test_bf16_weight_copies_train_like_autocast_on_cuda():
    """tests/test_low_precision.py checks bitwise equality on CPU; here the CUDA kernels, fused
    AdamW included, within a tolerance far below one step's update (GPU kernels may differ in
    summation order between calls)."""
    src, tgt_in = (t.cuda() for t in _batch(torch.Generator().manual_seed(0)))
    batch = {"src": src, "tgt_in": tgt_in, "tgt_out": torch.roll(tgt_in, -1, dims=1)}
    models = []
    for with_copies in (False, True):
        torch.manual_seed(0)
        model = build_model(TRANSFORMER, VOCAB).cuda().train()
        step = _cuda_step(model, with_copies)
        for _ in range(3):
            step(batch)
        models.append(model)
    reference, with_copies = models
    for (name, param), ref in zip(
        with_copies.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(param, ref, rtol=0, atol=1e-5, msg=name)


@pytest.fixture
def restore_cudnn_attention():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_train_stage_default_leaves_cudnn_out_of_sdpa(restore_cudnn_attention):
    from pipelines.core.params import TrainParams

    use_cudnn_attention(True)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    use_cudnn_attention(TrainParams().cudnn_attention)  # what the train stage does by default
    assert not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("cudnn", [True, False])
def test_every_trainer_built_from_params_sets_cudnn_attention_as_they_say(
    cudnn, restore_cudnn_attention, tmp_path
):
    """The train stage and `benchmarks.train_untracked` both build their Trainer here."""
    import yaml

    from pipelines.core.params import load_params
    from pipelines.training.trainer import build_trainer
    from tests.training_helpers import workspace_params

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(workspace_params(train={"cudnn_attention": cudnn}))
    )
    params = load_params(tmp_path / "params.yaml")
    use_cudnn_attention(not cudnn)
    build_trainer(params, "transformer", tmp_path / "ckpt", tmp_path / "history.csv", None, 1)
    assert torch.backends.cuda.cudnn_sdp_enabled() is cudnn


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("cudnn", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_kernel_matches_explicit_attention_in_bf16_on_cuda(
    causal, cudnn, restore_cudnn_attention
):
    use_cudnn_attention(cudnn)
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(4, 8, 33, 64, device="cuda", generator=generator, dtype=torch.bfloat16)
        for _ in range(3)
    )
    padding = torch.zeros(4, 33, dtype=torch.bool, device="cuda")
    padding[1, 20:] = True
    mask = None if causal else padding
    fast = fast_attention(q, k, v, mask, causal)
    reference, _ = explicit_attention(q.double(), k.double(), v.double(), mask, causal)
    error = (fast.double() - reference).norm() / reference.norm()
    assert error < 1e-2  # bf16 operands


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("length", [16, 33])  # written out when compiled; the kernel
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_attention_matches_explicit_attention_in_bf16_on_cuda(causal, length):
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(4, 8, length, 64, device="cuda", generator=generator, dtype=torch.bfloat16)
        for _ in range(3)
    )
    padding = torch.zeros(4, length, dtype=torch.bool, device="cuda")
    padding[1, length // 2 :] = True
    mask = None if causal else padding
    fast = torch.compile(fast_attention, dynamic=False)(q, k, v, mask, causal)
    reference, _ = explicit_attention(q.double(), k.double(), v.double(), mask, causal)
    error = (fast.double() - reference).norm() / reference.norm()
    assert error < 1e-2  # bf16 operands (the written-out scores are rounded to bf16 too)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("attention", ["none", "additive"])
def test_cudnn_parallel_decoder_matches_the_step_loop_on_cuda(attention):
    torch.manual_seed(0)
    config = {**RECURRENT, "attention": attention, "input_feeding": False}
    model = build_model(config, VOCAB).cuda().eval()
    src, tgt_in = (t.cuda() for t in _batch(torch.Generator().manual_seed(1)))
    with torch.no_grad():
        parallel = model(src, tgt_in)
        stepwise = _stepwise_logits(model, src, tgt_in)
    torch.testing.assert_close(parallel, stepwise, atol=1e-4, rtol=1e-3)
