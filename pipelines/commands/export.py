"""`nmt export`: a trained Transformer converted for CTranslate2 (a faster CPU engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.commands.translate import load_translator
from pipelines.core.errors import PipelineError


def run(args: argparse.Namespace) -> None:
    from pipelines.inference.ct2_conversion import export_ctranslate2
    from pipelines.inference.ct2_translator import is_converted_folder

    if is_converted_folder(args.model):
        raise PipelineError(f"{args.model}: already converted to CTranslate2")
    translator = load_translator(args.model, "cpu")
    export_ctranslate2(translator, args.model, args.output, args.quantization)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="convert a trained Transformer for a faster CPU engine (CTranslate2)",
        description="Convert a trained Transformer (an exported folder or a registry URI) to "
        "CTranslate2 and write a converted folder: config.json, tokenizer/, decoding.json when "
        "the model has one, and the CTranslate2 model in ctranslate2/. `nmt translate --model "
        "OUTPUT` then decodes with CTranslate2 on the CPU, with the same beam search, length "
        "penalty and settings. Pre- and post-norm, tied or separate embeddings and every "
        "positional encoding convert; an LSTM or ConvS2S model does not (`nmt translate` runs it "
        "with PyTorch). Needs the ct2 extra: pip install 'nmt-pipeline[ct2]'.",
    )
    parser.add_argument(
        "--model", required=True,
        help="an exported model folder (artifacts/<arch>-<seed>) or a registry URI such as "
        "models:/nmt-translator@champion",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, required=True, help="the converted folder to write (must not exist)"
    )
    parser.add_argument(
        "--format", choices=["ctranslate2"], default="ctranslate2",
        help="the engine to convert for (default ctranslate2)",
    )  # fmt: skip
    parser.add_argument(
        "--quantization", default="float32",
        help="how the weights are stored: float32 (default; scores as PyTorch's) or int8 "
        "(smaller and faster; see benchmarks/README.md for its BLEU)",
    )  # fmt: skip
    parser.set_defaults(func=run)
