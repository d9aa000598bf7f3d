"""Seq2Seq.sided_parameters: the weights each source / target token passes through, which the
benchmark's "sided" MFU multiplies by the source and target token counts."""

from __future__ import annotations

import pytest
from torch import nn

from models import RecurrentSeq2Seq, Seq2Seq, TransformerSeq2Seq


def numel(*modules: nn.Module | None) -> int:
    """Parameters of `modules` summed as they are (no tying between them in these checks)."""
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def ids(*modules: nn.Module | None) -> set[int]:
    return {id(p) for m in modules if m is not None for p in m.parameters()}


def left_out(model: Seq2Seq) -> set[int]:
    """The parameters on neither side."""
    encoder, decoder = model.sided_modules()
    return ids(model) - ids(*encoder, *decoder)


@pytest.mark.parametrize("variant", ["transformer", "transformer-pre-learned"])
def test_transformer_counts_the_layer_stacks_and_the_output_projection(make_model, variant):
    model = make_model(variant)
    assert isinstance(model, TransformerSeq2Seq)
    encoder, decoder = model.sided_parameters()
    assert encoder == numel(model.encoder_layers, model.encoder_norm)
    assert decoder == numel(model.decoder_layers, model.decoder_norm, model.output_projection)
    # Tied and joint: the one embedding matrix is the output projection, on the decoder side;
    # only the positional table (learned) is left out.
    assert left_out(model) == ids(model.positional)
    assert model.encoder_norm.__class__ is (
        nn.LayerNorm if variant.endswith("pre-learned") else nn.Identity
    )


def test_transformer_untied_output_projection_is_counted_once_on_the_decoder_side(make_model):
    model = make_model("transformer", tie_embeddings=False)
    encoder, decoder = model.sided_parameters()
    projection = numel(model.output_projection)
    assert encoder == numel(model.encoder_layers, model.encoder_norm)
    assert decoder == numel(model.decoder_layers, model.decoder_norm) + projection
    assert left_out(model) == ids(model.src_embedding, model.tgt_embedding)


@pytest.mark.parametrize("variant", ["lstm-additive", "lstm-multiplicative", "lstm-none"])
def test_recurrent_counts_the_encoder_and_everything_after_it(make_model, variant):
    model = make_model(variant)
    assert isinstance(model, RecurrentSeq2Seq)
    encoder, decoder = model.sided_parameters()
    assert encoder == numel(model.encoder)
    assert decoder == numel(
        model.bridge, model.decoder, model.attention, model.combine, model.output_projection
    )
    assert (model.attention is None) == (variant == "lstm-none")
    assert left_out(model) == ids(model.src_embedding, model.tgt_embedding) - ids(
        model.output_projection
    )


def test_convolutional_counts_the_convolution_stacks_and_their_projections(make_model):
    model = make_model("convs2s")
    encoder, decoder = model.sided_parameters()
    assert encoder == numel(model.encoder_input, model.encoder_layers, model.encoder_output)
    assert decoder == numel(
        model.decoder_input, model.decoder_layers, model.decoder_output, model.output_projection
    )
    tables = ids(model.src_embedding, model.tgt_embedding, model.src_positions, model.tgt_positions)
    assert left_out(model) == tables - ids(model.output_projection)


def test_every_variant_leaves_out_embedding_tables_only(make_model, variant):
    model = make_model(variant)
    encoder, decoder = model.sided_modules()
    assert ids(*encoder).isdisjoint(ids(*decoder))
    tables = ids(*(m for m in model.modules() if isinstance(m, nn.Embedding)))
    assert left_out(model) <= tables
    assert sum(model.sided_parameters()) == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in model.parameters() if id(p) in left_out(model)
    )


def test_each_side_counts_a_shared_parameter_once(make_model):
    model = make_model("transformer")
    shared = model.decoder_layers[0]
    model.sided_modules = lambda: ([], [shared, shared, model.decoder_layers])
    assert model.sided_parameters() == (0, numel(model.decoder_layers))
