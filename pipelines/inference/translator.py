"""Load an exported model folder and translate raw sentences with batched beam search.

An exported folder (``artifacts/<arch>/``) holds ``model.safetensors``, ``config.json`` and
``tokenizer/``; weights load through safetensors, so nothing is ever unpickled. A shipped model's
folder also holds ``decoding.json``, the settings it was evaluated with (:mod:`.settings`): they
become the translator's default :class:`~pipelines.core.params.DecodingSettings`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models import BOS_ID, EOS_ID, PAD_ID, Seq2Seq, build_model
from models.attention import use_cudnn_attention
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.data.vocab import Tokenizers
from pipelines.inference.search import beam_search
from pipelines.inference.settings import DECODING_FILE, read_settings, resolve_device


@dataclass
class AttentionExample:
    """One sentence's translation with its cross-attention, for heatmaps."""

    src_pieces: list[str]
    tgt_pieces: list[str]
    attention: Tensor  # [heads, tgt_len, src_len]


def pad_batch(sequences: list[list[int]], device: torch.device) -> Tensor:
    """Right-pad token lists into a LongTensor [B, S] with PAD_ID."""
    width = max(len(s) for s in sequences)
    batch = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    for row, tokens in enumerate(sequences):
        batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return batch.to(device)


class Translator:
    """A model plus its tokenizers: raw text in, detokenized translations out.

    `settings` are the decoding settings used when :meth:`translate` is given none: those recorded
    in the folder's ``decoding.json``, else the defaults; `settings_file` is that file, or None.
    """

    def __init__(
        self,
        model: Seq2Seq,
        tokenizers: Tokenizers,
        config: dict,
        settings: DecodingSettings | None = None,
        settings_file: Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizers = tokenizers
        self.config = config
        self.settings = settings if settings is not None else DecodingSettings()
        self.settings_file = settings_file

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Translator:
        """Load an exported model folder; a missing or incomplete folder is a clear error.

        `device` is a torch device or ``auto`` (cuda when available, else cpu). The folder's
        ``decoding.json``, if any, becomes the translator's `settings`.
        """
        from safetensors.torch import load_model

        folder = Path(folder)
        for needed in ("config.json", "model.safetensors", "tokenizer"):
            if not (folder / needed).exists():
                raise PipelineError(f"{folder}: not an exported model folder (missing {needed})")
        config = json.loads((folder / "config.json").read_text())
        settings = read_settings(folder)
        device = resolve_device(device)
        model = build_model(config["model"], config["src_vocab_size"], config["tgt_vocab_size"])
        load_model(model, str(folder / "model.safetensors"), device="cpu")
        if torch.device(device).type == "cuda":
            use_cudnn_attention(False)  # beam search meets a new key length at every step
        return cls(
            model.to(device),
            Tokenizers.load(folder / "tokenizer"),
            config,
            settings,
            None if settings is None else folder / DECODING_FILE,
        )

    def _encode(self, sentences: list[str]) -> list[list[int]]:
        return [[*ids, EOS_ID] for ids in self.tokenizers.encode_src(sentences)]

    def iter_batches(
        self, sentences: list[str], batch_size: int
    ) -> Iterator[tuple[list[int], list[list[int]]]]:
        """Batches of (original positions, token ids), sorted by length to limit padding."""
        encoded = self._encode(sentences)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            yield positions, [encoded[i] for i in positions]

    def translate(
        self,
        sentences: Iterable[str],
        settings: DecodingSettings | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Translate `sentences` in order with `settings` (default: the translator's own).

        Empty input gives an empty list.
        """
        settings = self.settings if settings is None else settings
        sentences = list(sentences)
        outputs: list[str] = [""] * len(sentences)
        batches = list(self.iter_batches(sentences, settings.batch_size))
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="translating", unit="batch")
        for positions, token_ids in batches:
            src = pad_batch(token_ids, self.device)
            hypotheses = beam_search(
                self.model,
                src,
                beam_size=settings.beam_size,
                length_penalty=settings.length_penalty,
                max_len_margin=settings.max_len_margin,
            )
            texts = self.tokenizers.decode_tgt([h.tokens for h in hypotheses])
            for position, text in zip(positions, texts, strict=True):
                outputs[position] = text
        return outputs

    def attention_example(
        self, sentence: str, settings: DecodingSettings | None = None
    ) -> AttentionExample | None:
        """Greedy-decode one sentence and return its cross-attention (None without attention).

        Only `settings.max_len_margin` applies (default: the translator's own settings).
        """
        margin = (self.settings if settings is None else settings).max_len_margin
        src_ids = self._encode([sentence])[0]
        src = pad_batch([src_ids], self.device)
        hypothesis = beam_search(self.model, src, beam_size=1, max_len_margin=margin)[0]
        tgt_in = pad_batch([[BOS_ID, *hypothesis.tokens]], self.device)
        with torch.inference_mode():
            attention = self.model.cross_attention(src, tgt_in)
        if attention is None:
            return None
        src_pieces = [self.tokenizers.src.id_to_piece(i) for i in src_ids[:-1]] + ["</s>"]
        tgt_pieces = [self.tokenizers.tgt.id_to_piece(i) for i in hypothesis.tokens] + ["</s>"]
        # cross_attention over tgt_in = BOS + tokens gives one row per predicted token (+ EOS).
        return AttentionExample(src_pieces, tgt_pieces, attention.float().cpu())
