import pytest
import torch

from models import ConfigError, TransformerConfig, build_model
from models.config import from_dict

SRC = torch.tensor([[4, 9, 13, 7, 5, 3]])  # no padding, so any permutation is a valid sentence
PERMUTATION = torch.tensor([3, 0, 5, 1, 4, 2])


def test_without_positions_the_encoder_is_permutation_equivariant(make_model):
    model = make_model("transformer", positional="none")
    memory = model.encode(SRC).memory
    permuted = model.encode(SRC[:, PERMUTATION]).memory
    torch.testing.assert_close(permuted, memory[:, PERMUTATION], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_with_positions_the_encoder_sees_order(make_model, positional):
    model = make_model("transformer", positional=positional)
    memory = model.encode(SRC).memory
    permuted = model.encode(SRC[:, PERMUTATION]).memory
    assert (permuted - memory[:, PERMUTATION]).abs().max() > 1e-2


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_output_is_layer_normalised(make_model, norm):
    memory = make_model("transformer", norm=norm).encode(SRC).memory
    torch.testing.assert_close(memory.mean(-1), torch.zeros(1, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(memory.var(-1, unbiased=False), torch.ones(1, 6), atol=1e-3, rtol=0)


def test_pre_norm_adds_final_layer_norms(make_model):
    post = make_model("transformer", norm="post")
    pre = make_model("transformer", norm="pre")
    assert pre.num_parameters() - post.num_parameters() == 2 * 2 * 32


def test_cross_attention_is_per_head_of_the_last_layer(make_model, pad_batch):
    model = make_model("transformer")
    src = torch.tensor([[4, 5, 6, 3]])
    tgt_in = torch.tensor([[2, 7, 8]])
    weights = model.cross_attention(src, tgt_in)
    assert weights.shape == (4, 3, 4)  # heads, T, S
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 3))
    assert (weights[0] - weights[1]).abs().max() > 1e-3
    state = model.init_decoder_state(model.encode(src))
    for t in range(3):
        _, state, step_attention = model.decode_step(tgt_in[:, t], state)
        torch.testing.assert_close(step_attention[0], weights[:, t].mean(0), atol=1e-6, rtol=1e-5)


def test_cross_attention_ignores_source_padding(make_model):
    model = make_model("transformer")
    weights = model.cross_attention(torch.tensor([[4, 5, 3, 0, 0]]), torch.tensor([[2, 7]]))
    assert (weights[..., 3:] == 0).all()


def test_config_defaults_are_the_base_model():
    config = from_dict(TransformerConfig, {})
    assert (config.d_model, config.n_heads, config.d_ff, config.encoder_layers) == (512, 8, 2048, 6)
    assert config.norm == "post" and config.positional == "sinusoidal" and config.tie_embeddings


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"d_model": 30, "n_heads": 4}, "n_heads"),
        ({"d_ff": -1}, "d_ff"),
        ({"n_heads": 0}, "n_heads"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"norm": "sandwich"}, "norm"),
        ({"activation": "swish"}, "activation"),
        ({"positional": "rotary"}, "positional"),
    ],
)
def test_bad_values_name_the_field(values, key):
    with pytest.raises(ConfigError, match=rf"^model\.{key}:"):
        from_dict(TransformerConfig, values, prefix="model")


def test_untied_model_with_separate_vocabularies(make_model):
    torch.manual_seed(0)
    config = {
        "family": "transformer",
        "d_model": 16,
        "n_heads": 2,
        "d_ff": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "tie_embeddings": False,
    }
    model = build_model(config, src_vocab_size=11, tgt_vocab_size=13)
    assert model(torch.tensor([[4, 5, 3]]), torch.tensor([[2, 6]])).shape == (1, 2, 13)
    with pytest.raises(ConfigError, match="tie_embeddings: requires a joint vocabulary"):
        build_model({**config, "tie_embeddings": True}, 11, 13)
