import dataclasses

import pytest
import torch

from models import ConfigError, RecurrentConfig
from models.config import from_dict

RECURRENT = [
    "lstm-none",
    "lstm-none-context",
    "lstm-additive",
    "lstm-multiplicative",
    "gru-additive",
    "gru-dot-unidirectional",
]


@pytest.mark.parametrize("variant", RECURRENT)
def test_padding_never_leaks_into_the_encoder(make_model, pad_batch, variant):
    model = make_model(variant)
    short = [4, 5, 6, 3]
    alone = model.encode(torch.tensor([short]))
    batched = model.encode(pad_batch([[7, 8, 9, 10, 11, 12, 3], short]))
    torch.testing.assert_close(batched.memory[1:, :4], alone.memory, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batched.final_state[1:], alone.final_state, atol=1e-6, rtol=1e-5)
    assert (batched.memory[1, 4:] == 0).all()


@pytest.mark.parametrize("variant", RECURRENT)
def test_encoder_output_sizes(make_model, variant):
    model = make_model(variant)
    encoder_out = model.encode(torch.tensor([[4, 5, 3], [6, 3, 0]]))
    features = model.config.memory_dim
    assert encoder_out.memory.shape == (2, 3, features)
    assert encoder_out.final_state.shape == (2, features)


def _logits_with_altered_memory(model):
    src, tgt_in = torch.tensor([[4, 5, 6, 3]]), torch.tensor([[2, 7, 8, 9]])
    encoder_out = model.encode(src)
    original = model.decode(tgt_in, encoder_out)
    altered_memory = torch.randn_like(encoder_out.memory) * 10
    altered = model.decode(tgt_in, dataclasses.replace(encoder_out, memory=altered_memory))
    return original, altered


@pytest.mark.parametrize("variant", ["lstm-none", "lstm-none-context"])
def test_without_attention_only_the_final_state_reaches_the_decoder(make_model, variant):
    original, altered = _logits_with_altered_memory(make_model(variant))
    torch.testing.assert_close(altered, original, atol=0, rtol=0)


def test_context_every_step_feeds_the_fixed_summary_to_every_position(make_model):
    model = make_model("lstm-none-context")
    assert model.decoder.input_size == 16 + model.config.memory_dim
    src, tgt_in = torch.tensor([[4, 5, 6, 3]]), torch.tensor([[2, 7, 8, 9]])
    encoder_out = model.encode(src)
    original = model.decode(tgt_in, encoder_out)
    # The summary alone changes every position's output, also after the first step.
    summary = torch.randn_like(encoder_out.final_state)
    altered = model.decode(tgt_in, dataclasses.replace(encoder_out, final_state=summary))
    assert ((altered - original).abs().amax(dim=-1) > 1e-4).all()


def test_with_attention_the_decoder_reads_the_encoder_outputs(make_model):
    original, altered = _logits_with_altered_memory(make_model("lstm-additive"))
    assert (altered - original).abs().max() > 1e-3


def test_without_attention_the_state_carries_no_memory(make_model):
    model = make_model("lstm-none")
    state = model.init_decoder_state(model.encode(torch.tensor([[4, 5, 3]])))
    assert state.memory is None and state.projected_keys is None and state.src_pad_mask is None


@pytest.mark.parametrize(
    "variant", ["lstm-additive", "lstm-multiplicative", "gru-dot-unidirectional"]
)
def test_cross_attention_is_one_distribution_per_target_position(make_model, variant):
    model = make_model(variant)
    weights = model.cross_attention(torch.tensor([[4, 5, 3, 0]]), torch.tensor([[2, 7, 8]]))
    assert weights.shape == (1, 3, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 3))
    assert (weights[..., 3] == 0).all()


def test_no_cross_attention_without_attention(make_model):
    model = make_model("lstm-none")
    assert model.cross_attention(torch.tensor([[4, 5, 3]]), torch.tensor([[2, 7]])) is None


def test_gru_state_has_no_cell_and_lstm_state_has_one(make_model):
    src = torch.tensor([[4, 5, 3]])
    gru, lstm = make_model("gru-additive"), make_model("lstm-additive")
    assert gru.init_decoder_state(gru.encode(src)).cell is None
    lstm_state = lstm.init_decoder_state(lstm.encode(src))
    assert lstm_state.hidden.shape == lstm_state.cell.shape == (1, 2, 32)  # [B, layers, H]


def test_input_feeding_widens_the_decoder_input(make_model):
    fed = make_model("lstm-additive", input_feeding=True)
    unfed = make_model("lstm-additive", input_feeding=False)
    assert fed.decoder.input_size == 16 + 32
    assert unfed.decoder.input_size == 16


def test_tied_recurrent_embeddings(make_model):
    tied = make_model("lstm-additive", embedding_dim=32, tie_embeddings=True)
    untied = make_model("lstm-additive", embedding_dim=32)
    assert tied.output_projection.weight is tied.tgt_embedding.embedding.weight
    assert tied.src_embedding is tied.tgt_embedding
    assert untied.num_parameters() - tied.num_parameters() == 2 * 20 * 32


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"attention": "multiplicative", "multiplicative_score": "dot"}, "multiplicative_score"),
        ({"tie_embeddings": True, "embedding_dim": 8, "hidden_size": 16}, "tie_embeddings"),
        ({"attention": "local"}, "attention"),
        ({"attention": "additive", "context_every_step": True}, "context_every_step"),
        ({"cell": "rnn"}, "cell"),
        ({"hidden_size": -4}, "hidden_size"),
        ({"encoder_layers": 0}, "encoder_layers"),
        ({"dropout": 1.5}, "dropout"),
        ({"bidirectional": "yes"}, "bidirectional"),
    ],
)
def test_bad_values_name_the_field(values, key):
    with pytest.raises(ConfigError, match=rf"^rnn\.{key}:"):
        from_dict(RecurrentConfig, values, prefix="rnn")


def test_dot_score_is_fine_when_dimensions_match():
    config = from_dict(
        RecurrentConfig,
        {"attention": "multiplicative", "multiplicative_score": "dot", "bidirectional": False},
    )
    assert config.memory_dim == config.hidden_size
