"""Multi30k for the study's Transformers: training batches from the tokenizer stage's arrays
(optionally only short pairs) and BLEU of a trained model with the pipeline's translator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.seq2seq import Seq2Seq
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings, Params
from pipelines.core.paths import ProjectPaths
from pipelines.core.scoring import corpus_bleu
from pipelines.data.prepared import read_pairs
from pipelines.data.tokenized import TokenizedSplit, load_split
from pipelines.data.vocab import Tokenizers
from pipelines.inference.translator import Translator
from pipelines.training.batching import TokenBucketBatchSampler, TranslationDataset, collate

# Greedy search: the study compares models with one another, not with the pipeline's scores.
GREEDY = DecodingSettings(beam_size=1, max_len_margin=50, batch_size=64)


@dataclass
class Corpus:
    """The tokenizers, the training pairs and the primary test split's sentences."""

    tokenizers: Tokenizers
    train: TokenizedSplit
    test_sources: list[str]
    test_references: list[str]
    split: str

    @classmethod
    def load(cls, params: Params, paths: ProjectPaths) -> Corpus:
        split = params.data.test_splits[0]
        sources, references = read_pairs(paths.prepared, split)
        return cls(
            Tokenizers.load(paths.tokenized),
            load_split(paths.tokenized, params.data.train_split),
            sources,
            references,
            split,
        )

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        return self.tokenizers.src_vocab_size, self.tokenizers.tgt_vocab_size


def short_pairs(split: TokenizedSplit, max_tokens: int, key: str) -> TokenizedSplit:
    """The pairs of `split` whose source and target have at most `max_tokens` subwords."""
    keep = [
        i
        for i in range(len(split))
        if split.src_lengths[i] <= max_tokens and split.tgt_lengths[i] <= max_tokens
    ]
    if not keep:
        raise PipelineError(f"{key}: no training pair has at most {max_tokens} subword tokens")
    return TokenizedSplit.from_ids(
        [split.src(i).tolist() for i in keep], [split.tgt(i).tolist() for i in keep]
    )


def training_batches(
    split: TokenizedSplit, batch_tokens: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Token-bucket batches of `split` (the pipeline's sampler and collate), epoch after epoch."""
    sampler = TokenBucketBatchSampler(
        split.src_lengths, split.tgt_lengths, batch_tokens, shuffle=True, seed=seed
    )
    dataset = TranslationDataset(split)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for indices in sampler:
            yield collate(dataset.__getitems__(indices))
        epoch += 1


def translator(model: Seq2Seq, corpus: Corpus, params: Params) -> Translator:
    """The pipeline's translator around a study model, decoding greedily."""
    config = {"unicode_form": params.prepare.unicode_form}
    return Translator(model, corpus.tokenizers, config, GREEDY)


def bleu(
    model: Seq2Seq, corpus: Corpus, params: Params, sentences: list[int] | None = None
) -> float | None:
    """Corpus BLEU on the test split's sentences numbered `sentences` (default: all); None for
    none."""
    chosen = range(len(corpus.test_sources)) if sentences is None else sentences
    if not chosen:
        return None
    hypotheses = translator(model, corpus, params).translate(
        [corpus.test_sources[i] for i in chosen]
    )
    references = [corpus.test_references[i] for i in chosen]
    return corpus_bleu(hypotheses, references, params.data.tgt_lang)
