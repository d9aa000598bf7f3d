"""The exported translator (``artifacts/<arch>``: safetensors weights, config and tokenizer) and
warm starts from one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from pipelines.core.atomic import atomic_path, atomic_write_json
from pipelines.data.vocab import Tokenizers


def vocabulary(tokenizers: Tokenizers) -> tuple[list[str], list[str]]:
    """The source and target subword pieces, by id."""
    return tuple(
        [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        for processor in (tokenizers.src, tokenizers.tgt)
    )


def warm_start(model: torch.nn.Module, folder: Path, tokenizers: Tokenizers, model_config) -> str:
    """Load the weights of exported `folder` into `model` if they fit; returns how training starts.

    They fit when the model configuration and the vocabulary (every piece, by id) are unchanged;
    otherwise training starts cold and the returned text says why.
    """
    from safetensors.torch import load_model

    config = json.loads((folder / "config.json").read_text())
    if config.get("model") != model_config:
        return f"cold: {folder.name} has another model configuration"
    if vocabulary(Tokenizers.load(folder / "tokenizer")) != vocabulary(tokenizers):
        return f"cold: the vocabulary changed since {folder.name} was trained"
    load_model(model, str(folder / "model.safetensors"), device="cpu")
    return f"warm: fine-tuning {folder.name}"


def export_model(
    model: torch.nn.Module, config: dict[str, Any], tokenizers: Tokenizers, out_dir: Path
) -> None:
    """Write `model`'s weights, `config` (``config.json``) and the tokenizer files, atomically."""
    from safetensors.torch import save_model

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", config)
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        for source in tokenizers.model_files:
            shutil.copy2(source, tok_dir / Path(source).name)
        meta = Path(tokenizers.model_files[0]).parent / "tokenizer.json"
        if meta.exists():
            shutil.copy2(meta, tok_dir / "tokenizer.json")
