"""The trained SentencePiece subword models (Kudo & Richardson, 2018) of the source and target side.

Written by the ``tokenizer`` stage into one folder: ``tokenizer.json`` (metadata) plus ``spm.model``
when the vocabulary is joint, else ``spm_src.model`` and ``spm_tgt.model``. Ids 0-3 are the special
tokens of :mod:`models.vocab` in every model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm

from models.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from pipelines.core.errors import PipelineError

META_FILE = "tokenizer.json"
JOINT_MODEL = "spm.model"
SRC_MODEL = "spm_src.model"
TGT_MODEL = "spm_tgt.model"
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


def load_processor(path: str | Path) -> spm.SentencePieceProcessor:
    """Load one SentencePiece model, checking that its special ids are the project's."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the tokenizer stage first")
    processor = spm.SentencePieceProcessor(model_file=str(path))
    actual = {
        "pad": processor.pad_id(),
        "unk": processor.unk_id(),
        "bos": processor.bos_id(),
        "eos": processor.eos_id(),
    }
    if actual != SPECIAL_IDS:
        raise PipelineError(f"{path}: special token ids {actual}, expected {SPECIAL_IDS}")
    return processor


@dataclass
class Tokenizers:
    """Source and target SentencePiece processors; one shared object when the vocab is joint."""

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor
    model_files: list[Path]
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizers:
        """Load the models written by the tokenizer stage into `folder`."""
        folder = Path(folder)
        meta_path = folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise PipelineError(f"{meta_path} not found: run the tokenizer stage first") from err
        src_file = folder / meta["files"]["src"]
        tgt_file = folder / meta["files"]["tgt"]
        src = load_processor(src_file)
        tgt = src if tgt_file == src_file else load_processor(tgt_file)
        files = [src_file] if tgt_file == src_file else [src_file, tgt_file]
        return cls(src=src, tgt=tgt, model_files=files, meta=meta)

    @classmethod
    def from_model_files(
        cls, src_file: str | Path, tgt_file: str | Path | None = None
    ) -> Tokenizers:
        """Build from model files alone (e.g. a bundled model); `tgt_file` None means joint."""
        src = load_processor(src_file)
        tgt = src if tgt_file is None else load_processor(tgt_file)
        files = [Path(src_file)] if tgt_file is None else [Path(src_file), Path(tgt_file)]
        meta = {
            "joint": tgt_file is None,
            "files": {"src": Path(src_file).name, "tgt": Path(tgt_file or src_file).name},
            "src_vocab_size": src.get_piece_size(),
            "tgt_vocab_size": tgt.get_piece_size(),
        }
        return cls(src=src, tgt=tgt, model_files=files, meta=meta)

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, sentences: list[str]) -> list[list[int]]:
        """Subword ids of source sentences, without BOS/EOS."""
        return self.src.encode(list(sentences), out_type=int)

    def encode_tgt(self, sentences: list[str]) -> list[list[int]]:
        """Subword ids of target sentences, without BOS/EOS."""
        return self.tgt.encode(list(sentences), out_type=int)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Detokenized target text: cut at the first EOS, PAD/BOS dropped, UNK shown as ⁇."""
        return self.tgt.decode([strip_special(seq) for seq in ids])

    def decode_src(self, ids: list[list[int]]) -> list[str]:
        """Detokenized source text (for attention plots and error reports)."""
        return self.src.decode([strip_special(seq) for seq in ids])


def strip_special(ids: Any) -> list[int]:
    """Plain ints of a generated sequence up to its first EOS, without PAD and BOS."""
    out = []
    for token in ids:
        token = int(token)
        if token == EOS_ID:
            break
        if token not in (PAD_ID, BOS_ID):
            out.append(token)
    return out
