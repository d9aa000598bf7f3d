"""Tokenized splits as flat id arrays: ``<split>.npz`` with int32 ``src_tokens``/``tgt_tokens`` (all
sentences concatenated, no BOS/EOS; the collate adds them) and int64 ``src_offsets``/``tgt_offsets``
of length N+1, so sentence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.core.errors import PipelineError


@dataclass
class TokenizedSplit:
    """One split's subword ids, flat: sentence ``i`` is ``tokens[offsets[i] : offsets[i + 1]]``."""

    src_tokens: np.ndarray  # int32 [total source tokens]
    src_offsets: np.ndarray  # int64 [N + 1]
    tgt_tokens: np.ndarray  # int32 [total target tokens]
    tgt_offsets: np.ndarray  # int64 [N + 1]
    name: str = ""
    src_lengths: np.ndarray = field(init=False, repr=False)  # int64 [N]
    tgt_lengths: np.ndarray = field(init=False, repr=False)  # int64 [N]

    def __post_init__(self) -> None:
        if len(self.src_offsets) != len(self.tgt_offsets):
            raise PipelineError(f"split {self.name!r}: source and target sizes differ")
        self.src_lengths = np.diff(self.src_offsets)
        self.tgt_lengths = np.diff(self.tgt_offsets)

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src(self, index: int) -> np.ndarray:
        return self.src_tokens[self.src_offsets[index] : self.src_offsets[index + 1]]

    def tgt(self, index: int) -> np.ndarray:
        return self.tgt_tokens[self.tgt_offsets[index] : self.tgt_offsets[index + 1]]

    @classmethod
    def from_ids(cls, src: list[list[int]], tgt: list[list[int]], name: str = "") -> TokenizedSplit:
        src_tokens, src_offsets = flatten(src)
        tgt_tokens, tgt_offsets = flatten(tgt)
        return cls(src_tokens, src_offsets, tgt_tokens, tgt_offsets, name=name)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "src_tokens": self.src_tokens,
            "src_offsets": self.src_offsets,
            "tgt_tokens": self.tgt_tokens,
            "tgt_offsets": self.tgt_offsets,
        }


def flatten(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated int32 tokens and int64 offsets (length N+1, starting at 0)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-reproducible: fixed entry order and timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]))
            archive.writestr(info, buffer.getvalue())


def load_split(folder: str | Path, split: str) -> TokenizedSplit:
    """Read ``<folder>/<split>.npz`` written by the tokenizer stage."""
    path = Path(folder) / f"{split}.npz"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the tokenizer stage first")
    with np.load(path) as archive:
        return TokenizedSplit(
            src_tokens=archive["src_tokens"],
            src_offsets=archive["src_offsets"],
            tgt_tokens=archive["tgt_tokens"],
            tgt_offsets=archive["tgt_offsets"],
            name=split,
        )
