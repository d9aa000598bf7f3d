"""The `study` section of `params.yaml`: which parts of the study run, and at what sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.config import require
from models.convolutional import ConvS2SConfig
from models.transformer import TransformerConfig
from models.vocab import EOS_ID

StudyPart = Literal["cost", "path", "positional", "heads", "efficiency"]
STUDY_PARTS: tuple[StudyPart, ...] = ("cost", "path", "positional", "heads", "efficiency")

# The study builds its Transformers and ConvS2S models with their configs' default `max_len`:
# no position at or above it has a positional encoding.
MODEL_MAX_LEN = min(TransformerConfig().max_len, ConvS2SConfig().max_len)


@dataclass
class StudyParams:
    """The study of the seed's claims (pipelines/study): parts, model sizes, lengths and budgets.

    Every model the study builds has width `d_model`, `layers` encoder and decoder layers,
    `n_heads` heads (Transformer) and convolutions of width `kernel_size` (ConvS2S).
    """

    parts: list[StudyPart] = field(default_factory=lambda: list(STUDY_PARTS))
    seed: int = 1234
    device: str = "auto"  # auto: cuda when available, else cpu
    d_model: int = 64
    n_heads: int = 4
    layers: int = 1
    kernel_size: int = 3
    # cost: forward+backward time and memory at each source length, `batch_tokens` per batch
    lengths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    repeats: int = 3
    vocab_size: int = 8000  # of the whole models timed by `cost`
    # training of the study's own models (path, positional, heads)
    steps: int = 300
    batch_tokens: int = 2048
    lr: float = 0.001
    warmup_steps: int = 50
    # path: the synthetic copy/reverse task
    task: Literal["copy", "reverse"] = "reverse"
    synthetic_max_length: int = 100
    symbols: int = 16  # distinct tokens of the synthetic task
    eval_examples: int = 200
    # positional: training pairs up to this many subword tokens; longer test sources extrapolate
    max_train_tokens: int = 16
    probe_pairs: int = 100
    # heads
    head_counts: list[int] = field(default_factory=lambda: [1, 4, 8])
    # efficiency: validation BLEU levels to reach
    bleu_levels: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0, 30.0])

    def validate(self, prefix: str = "") -> None:
        require(len(self.parts) > 0, f"{prefix}parts", "needs at least one part")
        require(len(set(self.parts)) == len(self.parts), f"{prefix}parts", "lists a part twice")
        sizes = ("d_model", "n_heads", "layers", "kernel_size", "repeats", "steps")
        sizes += ("batch_tokens", "synthetic_max_length", "eval_examples", "max_train_tokens")
        for name in sizes:
            require(getattr(self, name) > 0, f"{prefix}{name}", "must be > 0")
        require(self.kernel_size % 2 == 1, f"{prefix}kernel_size", "must be odd (ConvS2S)")
        require(self.lr > 0, f"{prefix}lr", "must be > 0")
        require(self.warmup_steps >= 0, f"{prefix}warmup_steps", "must be >= 0")
        require(self.probe_pairs >= 0, f"{prefix}probe_pairs", "must be >= 0")
        require(self.symbols >= 2, f"{prefix}symbols", "must be >= 2")
        require(
            self.vocab_size > EOS_ID + 1,
            f"{prefix}vocab_size",
            f"must leave words beside the {EOS_ID + 1} reserved ids",
        )
        require(len(self.lengths) > 0, f"{prefix}lengths", "needs at least one length")
        for length in self.lengths:
            require(length >= 2, f"{prefix}lengths", f"{length} is below 2 tokens")
            require(
                length <= MODEL_MAX_LEN,
                f"{prefix}lengths",
                f"{length} is above the models' maximum length {MODEL_MAX_LEN}",
            )
        require(
            self.synthetic_max_length + 1 <= MODEL_MAX_LEN,
            f"{prefix}synthetic_max_length",
            f"{self.synthetic_max_length} + EOS is above the models' maximum length "
            f"{MODEL_MAX_LEN}",
        )
        require(
            self.batch_tokens >= self.synthetic_max_length + 1,
            f"{prefix}batch_tokens",
            f"must hold one synthetic sequence ({self.synthetic_max_length} + EOS tokens)",
        )
        require(len(self.head_counts) > 0, f"{prefix}head_counts", "needs at least one count")
        checked = [("n_heads", self.n_heads)] + [("head_counts", h) for h in self.head_counts]
        for key, heads in checked:
            require(
                heads > 0 and self.d_model % heads == 0,
                f"{prefix}{key}",
                f"{heads} heads do not divide d_model {self.d_model}",
            )
        require(len(self.bleu_levels) > 0, f"{prefix}bleu_levels", "needs at least one level")
        kind, colon, index = self.device.partition(":")
        require(
            self.device == "auto" or (kind in ("cpu", "cuda") and index.isdigit() == bool(colon)),
            f"{prefix}device",
            "must be auto, cpu, cuda or cuda:<index>",
        )
