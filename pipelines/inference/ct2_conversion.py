"""Convert an exported Transformer to CTranslate2 (Klein et al., 2020), as its own fairseq and
OpenNMT-py converters do: the weights go into a ``TransformerSpec`` layer by layer.

Pre- and post-norm, tied or separate embeddings, ReLU or GELU, and every positional encoding
convert exactly: the positions are written as a table (CTranslate2's built-in sinusoids put the
sines and cosines in two halves, ours interleave them). A converted folder is an exported folder
(``config.json``, ``tokenizer/``, ``decoding.json`` when the model has one) whose weights are the
CTranslate2 model in ``ctranslate2/``, which
:class:`~pipelines.inference.ct2_translator.CTranslate2Translator` loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.attention import MultiHeadAttention
from models.transformer import FeedForward, Residual, TransformerSeq2Seq
from pipelines.core.atomic import atomic_path, atomic_write_json
from pipelines.core.errors import PipelineError
from pipelines.data.vocab import META_FILE
from pipelines.inference.ct2_translator import CT2_FOLDER, import_ctranslate2
from pipelines.inference.settings import write_settings
from pipelines.inference.translator import Translator

log = logging.getLogger("nmt.export")

QUANTIZATIONS = ("float32", "int8")  # the weight types measured on CPU (benchmarks/README.md)


def _array(tensor: Tensor) -> Any:
    """A float32 copy: CTranslate2 quantizes its arrays in place, the model must stay as it is."""
    return tensor.detach().to("cpu", torch.float32, copy=True).numpy()


def _set_linear(spec: Any, linear: nn.Linear) -> None:
    spec.weight = _array(linear.weight)
    spec.bias = _array(linear.bias)


def _set_layer_norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _set_attention(spec: Any, attention: MultiHeadAttention, residual: Residual) -> None:
    """CTranslate2 fuses Q, K, V (self-attention) and K, V (over the memory) as ours does."""
    if attention.self_attention:
        projections = [attention.qkv_proj, attention.out_proj]
    else:
        projections = [attention.query_proj, attention.key_value_proj, attention.out_proj]
    for linear_spec, linear in zip(spec.linear, projections, strict=True):
        _set_linear(linear_spec, linear)
    _set_layer_norm(spec.layer_norm, residual.norm)


def _set_feed_forward(spec: Any, feed_forward: FeedForward, residual: Residual) -> None:
    _set_linear(spec.linear_0, feed_forward.linear_in)
    _set_linear(spec.linear_1, feed_forward.linear_out)
    _set_layer_norm(spec.layer_norm, residual.norm)


def transformer_spec(
    model: TransformerSeq2Seq, src_pieces: list[str], tgt_pieces: list[str]
) -> Any:
    """The ``ctranslate2.specs.TransformerSpec`` holding `model`'s weights and vocabularies.

    The source gets EOS appended by CTranslate2 (``add_source_eos``) and decoding starts from
    BOS, as :class:`~pipelines.inference.translator.Translator` does.
    """
    import_ctranslate2()
    from ctranslate2.specs import common_spec
    from ctranslate2.specs.transformer_spec import TransformerSpec

    config = model.config
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}
    spec = TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.n_heads,
        pre_norm=config.norm == "pre",
        activation=activation[config.activation],
    )
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = model.encoder_layers[0].attention_residual.norm.eps
    with torch.no_grad():
        # Every position the model can encode, as added to a zero embedding: [max_len, d_model].
        positions = _array(model.positional(torch.zeros(1, config.max_len, config.d_model))[0])
    for side, embedding in (
        (spec.encoder, model.src_embedding),
        (spec.decoder, model.tgt_embedding),
    ):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = _array(embedding.embedding.weight)
        side.scale_embeddings = embedding.multiplier
        side.position_encodings.encodings = positions
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attention, layer.attention_residual)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_residual)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder_layers, strict=True):
        _set_attention(
            layer_spec.self_attention, layer.self_attention, layer.self_attention_residual
        )
        _set_attention(layer_spec.attention, layer.cross_attention, layer.cross_attention_residual)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_residual)
    if config.norm == "pre":
        _set_layer_norm(spec.encoder.layer_norm, model.encoder_norm)
        _set_layer_norm(spec.decoder.layer_norm, model.decoder_norm)
    _set_linear(spec.decoder.projection, model.output_projection)
    spec.register_source_vocabulary(src_pieces)
    spec.register_target_vocabulary(tgt_pieces)
    return spec


def export_ctranslate2(
    translator: Translator, source: str, out_dir: Path, quantization: str = "float32"
) -> None:
    """Write `translator` (loaded from `source`, named in messages) as a converted folder at
    `out_dir`, its weights stored as `quantization`; atomically, and never over an existing path.

    Only a Transformer converts: another family is a one-line error saying that `nmt translate`
    runs it with PyTorch.
    """
    family = translator.config["model"]["family"]
    if not isinstance(translator.model, TransformerSeq2Seq):
        raise PipelineError(
            f"{source}: a {family} model; only Transformers convert to CTranslate2, so "
            f"`nmt translate --model {source}` runs it with PyTorch"
        )
    if quantization not in QUANTIZATIONS:
        raise PipelineError(f"--quantization {quantization}: expected one of {QUANTIZATIONS}")
    if out_dir.exists():
        raise PipelineError(f"{out_dir}: already exists; remove it or give another --output")
    tokenizers = translator.tokenizers
    pieces = [
        [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        for processor in (tokenizers.src, tokenizers.tgt)
    ]
    spec = transformer_spec(translator.model, *pieces)
    spec.validate()
    spec.optimize(quantization=quantization)
    with atomic_path(out_dir) as tmp:
        (tmp / CT2_FOLDER).mkdir(parents=True)
        spec.save(str(tmp / CT2_FOLDER))
        atomic_write_json(tmp / "config.json", translator.config)
        if translator.settings_file is not None:
            write_settings(tmp, translator.settings)
        # Written from memory: a registry model's downloaded folder is gone by now.
        (tmp / "tokenizer").mkdir()
        atomic_write_json(tmp / "tokenizer" / META_FILE, tokenizers.meta)
        for side, processor in (("src", tokenizers.src), ("tgt", tokenizers.tgt)):
            path = tmp / "tokenizer" / tokenizers.meta["files"][side]
            path.write_bytes(processor.serialized_model_proto())
    log.info("%s: CTranslate2 model (%s weights) in %s", source, quantization, out_dir)
