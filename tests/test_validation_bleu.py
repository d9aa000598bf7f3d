"""Validation BLEU (`ValidationBleu.score`): the whole split scored against references whose
statistics are extracted once, equal to sacreBLEU scoring from scratch, in any output order."""

from __future__ import annotations

import random

import pytest

from pipelines.core.scoring import corpus_bleu
from pipelines.training import validation as validation_module
from pipelines.training.validation import ValidationBleu

# fmt: off
WORDS = ("ein", "mann", "fährt", "mit", "dem", "rad", "durch", "die", "stadt", "und", "zwei",
         "hunde", "laufen", "im", "park")
# fmt: on


def sentence(rng: random.Random) -> list[int]:
    return [rng.randrange(len(WORDS)) for _ in range(rng.randint(3, 12))]


def detokenize(batch: list[list[int]]) -> list[str]:
    return [" ".join(WORDS[i] for i in tokens) for tokens in batch]


@pytest.fixture
def split():
    rng = random.Random(7)
    references = detokenize([sentence(rng) for _ in range(60)])
    # Hypotheses: each reference with a few words replaced, so BLEU is neither 0 nor 100.
    hypotheses = []
    for reference in references:
        ids = [WORDS.index(w) for w in reference.split()]
        hypotheses.append([i if rng.random() < 0.7 else rng.randrange(len(WORDS)) for i in ids])
    return ValidationBleu(detokenize, references, "de"), references, hypotheses


def test_whole_split_in_any_order_scores_as_sacrebleu_from_scratch(split, monkeypatch):
    validation, references, hypotheses = split
    expected = corpus_bleu(detokenize(hypotheses), references, "de")
    assert 5 < expected < 95

    def from_scratch(*args):
        raise AssertionError("the whole split is scored against the cached references")

    monkeypatch.setattr(validation_module, "corpus_bleu", from_scratch)
    outputs = list(enumerate(hypotheses))
    random.Random(1).shuffle(outputs)  # batches and ranks come in any order
    assert validation.score(outputs) == pytest.approx(expected, abs=1e-9)
    # Scored again (the next epoch), with other hypotheses: the cached references still hold.
    worse = [(i, tokens[:-1]) for i, tokens in enumerate(hypotheses)]
    assert validation.score(worse) == pytest.approx(
        corpus_bleu(detokenize([t for _, t in worse]), references, "de"), abs=1e-9
    )


def test_part_of_the_split_scores_against_its_own_references(split):
    validation, references, hypotheses = split
    part = [(i, hypotheses[i]) for i in range(0, 60, 3)]
    expected = corpus_bleu(
        detokenize([tokens for _, tokens in part]), [references[i] for i, _ in part], "de"
    )
    assert validation.score(part) == pytest.approx(expected, abs=1e-9)
    assert validation.score([]) == 0.0
