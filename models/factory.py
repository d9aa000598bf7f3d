"""One `build_model` for every family, from a typed config or the plain dict in params.yaml."""

from __future__ import annotations

from typing import Any

from models.config import ConfigError, from_dict
from models.convolutional import ConvS2SConfig, ConvS2SSeq2Seq
from models.recurrent import RecurrentConfig, RecurrentSeq2Seq
from models.seq2seq import Seq2Seq
from models.transformer import TransformerConfig, TransformerSeq2Seq

ModelConfig = TransformerConfig | RecurrentConfig | ConvS2SConfig

_FAMILIES: dict[str, tuple[type, type[Seq2Seq]]] = {
    "transformer": (TransformerConfig, TransformerSeq2Seq),
    "recurrent": (RecurrentConfig, RecurrentSeq2Seq),
    "convolutional": (ConvS2SConfig, ConvS2SSeq2Seq),
}


def model_config_from_dict(values: dict[str, Any], prefix: str = "") -> ModelConfig:
    """The config class named by `values["family"]`, built and validated from `values`."""
    dotted = f"{prefix}." if prefix else ""
    family = values.get("family")
    if family not in _FAMILIES:
        known = ", ".join(repr(name) for name in _FAMILIES)
        problem = "required key is missing" if family is None else f"unknown family {family!r}"
        raise ConfigError(f"{dotted}family: {problem} (expected one of: {known})")
    config_class, _ = _FAMILIES[family]
    return from_dict(config_class, values, prefix=prefix)


def build_model(
    config: ModelConfig | dict[str, Any], src_vocab_size: int, tgt_vocab_size: int | None = None
) -> Seq2Seq:
    """A freshly initialised model; the target vocabulary defaults to the source one (joint)."""
    if isinstance(config, dict):
        config = model_config_from_dict(config)
    else:
        config.validate()
    _, model_class = _FAMILIES[config.family]
    return model_class(config, src_vocab_size, tgt_vocab_size or src_vocab_size)
