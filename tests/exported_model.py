"""A tiny exported model folder (``artifacts/<arch>`` layout), built in a second, no pipeline run.

Random weights and a SentencePiece model trained on a few made-up sentences: enough for a
Translator to load and decode, for tests of what surrounds decoding (settings, CLI, shipping).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from models import build_model
from pipelines.core.params import TokenizerParams
from pipelines.data.subwords import train_sentencepiece
from pipelines.data.vocab import JOINT_MODEL, META_FILE

WORDS = ["a", "man", "dog", "woman", "rides", "runs", "bike", "in", "the", "park", "snow", "red"]
MODEL = {
    "family": "transformer",
    "d_model": 16,
    "n_heads": 2,
    "d_ff": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
}
SENTENCES = ["A man rides a red bike.", "Two dogs run in the snow.", "A woman in the park."]


def make_exported_folder(folder: Path, seed: int = 0, model: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``tokenizer/`` into `folder`; the model
    is `model` (a ``models.<arch>.model`` dict), by default :data:`MODEL`."""
    model = MODEL if model is None else model
    from safetensors.torch import save_model

    text = [" ".join(words).capitalize() + "." for words in itertools.permutations(WORDS, 4)]
    spm_model = train_sentencepiece(text[:2000] + SENTENCES, TokenizerParams(vocab_size=64))
    tokenizer = folder / "tokenizer"
    tokenizer.mkdir(parents=True)
    (tokenizer / JOINT_MODEL).write_bytes(spm_model)
    meta = {"joint": True, "files": {"src": JOINT_MODEL, "tgt": JOINT_MODEL}}
    (tokenizer / META_FILE).write_text(json.dumps(meta))
    config = {
        "arch": "transformer",
        "model": model,
        "src_vocab_size": 64,
        "tgt_vocab_size": 64,
        "src_lang": "en",
        "tgt_lang": "de",
        "unicode_form": "NFKC",  # as the train stage records params.prepare.unicode_form
    }
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    save_model(build_model(model, 64, 64), str(folder / "model.safetensors"))
    return folder
