"""Validation BLEU as checkpoint selection, early stopping and averaging use it: greedy decoding of
the whole validation split, detokenized, scored by sacreBLEU with the target language's tokenizer
(as evaluation scores the test sets)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import sacrebleu
from torch import Tensor

from models import Seq2Seq
from pipelines.core.decoding import greedy_search
from pipelines.core.scoring import bleu_metric, corpus_bleu

IndexedTokens = tuple[int, list[int]]  # (example index in the split, generated token ids)


@dataclass(frozen=True)
class ValidationBleu:
    """Decodes validation batches and scores the whole split, each example once, in split order."""

    detokenize: Callable[[list[list[int]]], list[str]]
    references: Sequence[str]
    tgt_lang: str
    max_len_margin: int = 20

    def decode(self, model: Seq2Seq, src: Tensor, indices: Sequence[int]) -> list[IndexedTokens]:
        """Greedy translations of one batch, paired with the examples' indices."""
        hypotheses = greedy_search(model, src, max_len_margin=self.max_len_margin)
        return list(zip(indices, (h.tokens for h in hypotheses), strict=True))

    def score(self, outputs: Iterable[IndexedTokens]) -> float:
        """Corpus BLEU of `outputs` (any number of batches and ranks) against the references."""
        ordered = sorted(outputs)
        hypotheses = self.detokenize([tokens for _, tokens in ordered])
        if [index for index, _ in ordered] == list(range(len(self.references))):
            return self._whole_split.corpus_score(hypotheses, None).score
        references = [self.references[index] for index, _ in ordered]
        return corpus_bleu(hypotheses, references, self.tgt_lang)

    @functools.cached_property
    def _whole_split(self) -> sacrebleu.BLEU:
        """BLEU with the split's reference statistics extracted once: validation scores the
        whole split every epoch."""
        return bleu_metric(self.tgt_lang, self.references)
