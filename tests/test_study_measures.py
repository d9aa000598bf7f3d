"""The study's instruments: sequential steps in the autograd graph, saved activations, attention
capture, head entropies and roles, and the bare layers of the cost comparison."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.factory import build_model
from pipelines.core.study_params import StudyParams
from pipelines.study.attention_capture import captured_attention
from pipelines.study.graph_depth import autograd_depth, unrolled_lstm
from pipelines.study.heads import HeadStats, attention_entropy, role_shares
from pipelines.study.layers import family_layers
from pipelines.study.timing import measure_steps, saved_activation_bytes
from pipelines.study.variants import transformer_config


def test_the_unrolled_lstm_computes_what_nn_lstm_does_and_shares_its_weights():
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, batch_first=True)
    x = torch.randn(3, 9, 6)
    torch.testing.assert_close(unrolled_lstm(lstm, x), lstm(x)[0])
    unrolled_lstm(lstm, x).sum().backward()
    assert lstm.weight_hh_l0.grad is not None and lstm.weight_hh_l0.grad.abs().sum() > 0


def test_unrolled_lstm_refuses_what_it_does_not_unroll():
    with pytest.raises(ValueError, match="one-layer, one-direction, batch-first"):
        unrolled_lstm(nn.LSTM(4, 4, batch_first=True, bidirectional=True), torch.zeros(1, 2, 4))


def test_the_recurrent_chain_grows_by_the_same_amount_per_position_and_the_others_do_not():
    layers = {layer.family: layer for layer in family_layers(8, 2, 3)}
    depth = {
        family: [autograd_depth(layer.stepwise(torch.randn(1, n, 8))) for n in (4, 8, 16)]
        for family, layer in layers.items()
    }
    steps = depth["recurrent"]
    assert steps[2] - steps[1] == 2 * (steps[1] - steps[0]) > 0  # linear in n
    assert len(set(depth["self-attention"])) == 1
    assert len(set(depth["convolutional"])) == 1


def test_autograd_depth_counts_operations_not_leaves():
    weight = torch.ones(3, requires_grad=True)
    assert autograd_depth(weight * 2) == 1
    assert autograd_depth(((weight * 2) + 1).exp().sum()) == 4
    with pytest.raises(ValueError, match="computed with autograd"):
        autograd_depth(torch.ones(2))


@pytest.mark.parametrize("family", ["self-attention", "recurrent", "convolutional"])
def test_every_layer_maps_a_sequence_to_one_of_the_same_shape(family):
    (layer,) = [layer for layer in family_layers(8, 2, 3) if layer.family == family]
    assert layer.forward(torch.randn(2, 7, 8)).shape == (2, 7, 8)


def test_saved_activations_grow_with_the_input_and_leave_parameters_out():
    torch.manual_seed(0)
    linear = nn.Linear(16, 16)

    def bytes_at(length: int) -> int:
        x = torch.randn(4, length, 16, requires_grad=True)
        return saved_activation_bytes(lambda: linear(x).relu().sum(), linear)

    # Linear saves its input, ReLU its output: two float32 tensors of 4 x n x 16.
    assert bytes_at(8) == 2 * 4 * 8 * 16 * 4
    assert bytes_at(32) == 4 * bytes_at(8)
    assert linear.weight.grad is None  # measuring leaves no gradients behind


def test_measure_steps_times_every_step_in_rounds_and_counts_its_memory():
    calls = []
    small, large = nn.Linear(8, 8), nn.Linear(8, 8)
    x, y = torch.randn(2, 8), torch.randn(64, 8)

    def step(name, module, inputs):
        def loss():
            calls.append(name)
            return module(inputs).sum()

        return loss, module

    costs = measure_steps(
        {"small": step("small", small, x), "large": step("large", large, y)},
        torch.device("cpu"),
        repeats=3,
    )
    # counted and warmed up one after the other, then three rounds of both
    assert calls == ["small"] * 2 + ["large"] * 2 + ["small", "large"] * 3
    assert costs["small"].saved_bytes == 2 * 8 * 4 and costs["large"].saved_bytes == 64 * 8 * 4
    assert all(cost.seconds > 0 and cost.peak_bytes is None for cost in costs.values())
    assert small.weight.grad is None and large.weight.grad is None


def test_captured_attention_leaves_the_output_as_it_was_and_removes_its_hooks():
    torch.manual_seed(0)
    model = build_model(transformer_config(StudyParams(d_model=16, n_heads=4)), 30).eval()
    src, tgt_in = torch.randint(4, 30, (2, 7)), torch.randint(4, 30, (2, 5))
    modules = [model.encoder_layers[0].self_attention, model.decoder_layers[0].cross_attention]
    with torch.no_grad():
        expected = model(src, tgt_in)
        with captured_attention(modules) as captured:
            output = model(src, tgt_in)
        torch.testing.assert_close(output, expected)
        model(src, tgt_in)  # after the block: nothing more is captured
    (encoder,), (cross,) = captured
    assert encoder.shape == (2, 4, 7, 7) and cross.shape == (2, 4, 5, 7)
    torch.testing.assert_close(encoder.sum(-1), torch.ones(2, 4, 7))


def test_attention_entropy_of_uniform_and_of_one_hot_weights():
    uniform = torch.full((1, 2, 3, 4), 0.25)
    one_hot = torch.zeros(1, 2, 3, 4)
    one_hot[..., 0] = 1.0
    weights = torch.cat([uniform[:, :1], one_hot[:, :1]], dim=1)  # head 0 uniform, head 1 not
    valid = torch.tensor([[True, True, False]])
    weights[0, 1, 2] = 0.25  # a padded query: its uniform row must not count
    entropy = attention_entropy(weights, valid)
    assert entropy.tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_role_shares_count_the_queries_whose_largest_weight_is_at_the_role_s_key():
    argmax = torch.tensor([[[0, 0, 1, 2], [1, 2, 3, 3]]])  # [B=1, H=2, T=4]
    query = torch.arange(4).unsqueeze(0)
    targets = {"previous": (query - 1, 0), "next": (torch.tensor([[1, 2, 3, -1]]), 0)}
    shares = role_shares(argmax, targets, torch.ones(1, 4, dtype=torch.bool))
    assert shares[0] == {"previous": 1.0, "next": 0.0}  # query 0 has no previous token
    assert shares[1] == {"previous": 0.0, "next": 1.0}  # query 3 has no next token
    assert HeadStats("encoder", 0, 0, 1.0, shares[0]).role == "previous"
    assert HeadStats("encoder", 0, 1, 1.0, {"previous": 0.5, "next": 0.4}).role == "other"
