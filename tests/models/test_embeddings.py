import math

import pytest
import torch

from models import PAD_ID, ConfigError
from models.embeddings import (
    LearnedPositionalEncoding,
    NoPositionalEncoding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    build_positional_encoding,
    build_token_embeddings,
)


def test_sinusoidal_values_match_the_formula():
    d_model, max_len = 6, 20
    pe = SinusoidalPositionalEncoding(d_model, max_len).pe
    for pos in range(max_len):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_handles_odd_dimension():
    pe = SinusoidalPositionalEncoding(5, 4).pe
    assert pe.shape == (4, 5)
    assert pe[1, 4].item() == pytest.approx(math.sin(1 / 10000 ** (4 / 5)), abs=1e-6)


def test_sinusoidal_is_a_buffer_not_a_parameter():
    encoding = SinusoidalPositionalEncoding(8, 16)
    assert list(encoding.parameters()) == []
    assert "pe" not in encoding.state_dict()


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_offset_continues_the_positions(kind):
    torch.manual_seed(0)
    encoding = build_positional_encoding(kind, 8, 16)
    x = torch.randn(2, 7, 8)
    full = encoding(x)
    torch.testing.assert_close(encoding(x[:, 3:5], offset=3), full[:, 3:5])


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_positions_beyond_max_len_are_an_error(kind):
    encoding = build_positional_encoding(kind, 8, 4)
    with pytest.raises(ValueError, match="max_len"):
        encoding(torch.zeros(1, 2, 8), offset=3)


def test_build_positional_encoding_kinds():
    assert isinstance(build_positional_encoding("sinusoidal", 8, 4), SinusoidalPositionalEncoding)
    assert isinstance(build_positional_encoding("learned", 8, 4), LearnedPositionalEncoding)
    none = build_positional_encoding("none", 8, 4)
    assert isinstance(none, NoPositionalEncoding)
    x = torch.randn(1, 3, 8)
    assert none(x, offset=2) is x
    with pytest.raises(ValueError, match="rotary"):
        build_positional_encoding("rotary", 8, 4)


def test_token_embedding_is_scaled_by_sqrt_dim_and_pad_is_zero():
    torch.manual_seed(0)
    embedding = TokenEmbedding(10, 16)
    tokens = torch.tensor([[4, 5, PAD_ID]])
    out = embedding(tokens)
    torch.testing.assert_close(out, embedding.embedding.weight[tokens] * 4.0)
    assert (out[0, 2] == 0).all()
    # Initialised so the scaled embedding has roughly unit variance.
    assert embedding.embedding.weight[1:].std().item() * 4.0 == pytest.approx(1.0, rel=0.3)
    unscaled = TokenEmbedding(10, 16, scale=False)
    torch.testing.assert_close(unscaled(tokens), unscaled.embedding.weight[tokens])


def test_tied_embeddings_share_one_matrix():
    src, tgt, output = build_token_embeddings(12, 12, 8, 8, tie=True, scale=True)
    assert src is tgt
    assert output.weight is tgt.embedding.weight
    src, tgt, output = build_token_embeddings(12, 15, 8, 6, tie=False, scale=True)
    assert src is not tgt
    assert output.weight.shape == (15, 6)


def test_tying_needs_a_joint_vocabulary():
    with pytest.raises(ConfigError, match="tie_embeddings: requires a joint vocabulary"):
        build_token_embeddings(12, 15, 8, 8, tie=True, scale=True)
    with pytest.raises(ConfigError, match="tie_embeddings"):
        build_token_embeddings(12, 12, 8, 6, tie=True, scale=True)
