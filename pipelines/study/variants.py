"""The models the study builds: every family at the same width and depth (`study.d_model`,
`study.layers`), so that they differ in kind, not in size; no dropout, since they train briefly."""

from __future__ import annotations

from models.convolutional import ConvS2SConfig
from models.embeddings import PositionalKind
from models.factory import ModelConfig
from models.recurrent import RecurrentConfig
from models.transformer import TransformerConfig
from pipelines.core.study_params import StudyParams

# The families of the path-length comparison and of the whole-model costs, by display name.
FAMILY_NAMES = {
    "lstm_none": "LSTM, no attention",
    "lstm_additive": "LSTM + attention",
    "convs2s": "ConvS2S",
    "transformer": "Transformer",
}


def transformer_config(
    study: StudyParams, positional: PositionalKind = "sinusoidal", n_heads: int | None = None
) -> TransformerConfig:
    """A pre-LayerNorm Transformer with d_ff = 4·d_model (Vaswani et al. 2017's ratio)."""
    return TransformerConfig(
        d_model=study.d_model,
        n_heads=study.n_heads if n_heads is None else n_heads,
        d_ff=4 * study.d_model,
        encoder_layers=study.layers,
        decoder_layers=study.layers,
        dropout=0.0,
        norm="pre",
        positional=positional,
    )


def recurrent_config(study: StudyParams, attention: str) -> RecurrentConfig:
    """A bidirectional LSTM encoder-decoder, with `attention` ("none" or "additive"), in the
    pipeline's baseline recipe: no input feeding (the decoder is one cuDNN call, not a Python loop
    over hundreds of target positions) and, without attention, the summary vector fed to every
    step (Cho et al. 2014): still one fixed-size vector for the whole source."""
    return RecurrentConfig(
        cell="lstm",
        embedding_dim=study.d_model,
        hidden_size=study.d_model,
        encoder_layers=study.layers,
        decoder_layers=study.layers,
        dropout=0.0,
        attention=attention,
        input_feeding=False,
        context_every_step=attention == "none",
    )


def convs2s_config(study: StudyParams) -> ConvS2SConfig:
    """ConvS2S with kernels of width `study.kernel_size`."""
    return ConvS2SConfig(
        embedding_dim=study.d_model,
        hidden_size=study.d_model,
        encoder_layers=study.layers,
        decoder_layers=study.layers,
        kernel_size=study.kernel_size,
        dropout=0.0,
    )


def family_configs(study: StudyParams) -> dict[str, ModelConfig]:
    """One config per entry of :data:`FAMILY_NAMES`."""
    return {
        "lstm_none": recurrent_config(study, "none"),
        "lstm_additive": recurrent_config(study, "additive"),
        "convs2s": convs2s_config(study),
        "transformer": transformer_config(study),
    }
