import pytest

from models import (
    ConfigError,
    RecurrentConfig,
    RecurrentSeq2Seq,
    TransformerConfig,
    TransformerSeq2Seq,
    build_model,
    model_config_from_dict,
)

PREFIX = "models.transformer.model"


def test_family_selects_the_config_class():
    assert isinstance(model_config_from_dict({"family": "transformer"}), TransformerConfig)
    config = model_config_from_dict({"family": "recurrent", "cell": "gru"})
    assert isinstance(config, RecurrentConfig) and config.cell == "gru"


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({}, "family", "required key is missing"),
        ({"family": "state_space"}, "family", "unknown family"),
        ({"family": "transformer", "d_model": 30, "n_heads": 4}, "n_heads", "must divide d_model"),
        ({"family": "transformer", "d_ff": -8}, "d_ff", "must be > 0"),
        ({"family": "transformer", "n_layers": 6}, "n_layers", "unknown key"),
        ({"family": "transformer", "dropout": "0.1"}, "dropout", "expected a number"),
        ({"family": "recurrent", "attention": "local"}, "attention", "must be one of"),
        ({"family": "recurrent", "num_layers": 2}, "num_layers", "unknown key"),
        ({"family": "recurrent", "hidden_size": 0}, "hidden_size", "must be > 0"),
    ],
)
def test_bad_configs_name_the_field(values, key, message):
    with pytest.raises(ConfigError, match=rf"^{PREFIX}\.{key}: {message}"):
        model_config_from_dict(values, prefix=PREFIX)


def test_without_prefix_the_key_stands_alone():
    with pytest.raises(ConfigError, match=r"^family: required key is missing"):
        model_config_from_dict({})


def test_build_model_from_dict_or_config():
    small = {"d_model": 16, "n_heads": 2, "d_ff": 32, "encoder_layers": 1, "decoder_layers": 1}
    model = build_model({"family": "transformer", **small}, 30)
    assert isinstance(model, TransformerSeq2Seq)
    assert model.output_projection.out_features == 30
    recurrent = build_model(RecurrentConfig(embedding_dim=8, hidden_size=8), 30, 40)
    assert isinstance(recurrent, RecurrentSeq2Seq)
    assert recurrent.output_projection.out_features == 40


def test_build_model_validates_dataclass_configs():
    with pytest.raises(ConfigError, match=r"^n_heads:"):
        build_model(TransformerConfig(d_model=30, n_heads=4), 30)


def test_tied_transformer_needs_a_joint_vocabulary():
    with pytest.raises(ConfigError, match="tie_embeddings: requires a joint vocabulary"):
        build_model({"family": "transformer", "d_model": 16, "n_heads": 2}, 30, 40)
