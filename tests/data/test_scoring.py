"""Scoring: corpus BLEU/chrF as sacreBLEU computes them, length buckets, paired bootstrap."""

from __future__ import annotations

import pytest
import sacrebleu

from pipelines.core.scoring import paired_bootstrap, sacrebleu_tokenizer, score

REFERENCES = [
    "Ein Mann fährt Fahrrad auf der Straße.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau liest ein Buch im Park.",
    "Kinder spielen Fußball auf einer grünen Wiese neben dem alten Haus am See.",
] * 10
SOURCES = [
    "A man rides a bike on the street.",
    "Two dogs play in the snow.",
    "A woman reads a book in the park.",
    "Children play football on a green meadow next to the old house by the lake today.",
] * 10
GOOD = list(REFERENCES)
GOOD[0] = "Ein Mann fährt Rad auf der Straße."
POOR = ["Ein Mann.", "Hunde im Schnee.", "Eine Frau liest.", "Kinder spielen."] * 10


def test_score_is_sacrebleus_corpus_score_with_its_signature():
    result = score(POOR, REFERENCES, SOURCES, "de")
    bleu = sacrebleu.BLEU(tokenize="13a")
    assert result["bleu"] == round(bleu.corpus_score(POOR, [REFERENCES]).score, 2)
    chrf = sacrebleu.CHRF().corpus_score(POOR, [REFERENCES]).score
    assert result["chrf"] == round(chrf, 2)
    assert result["signature"] == str(bleu.get_signature())
    assert result["sentences"] == 40
    assert score(REFERENCES, REFERENCES, SOURCES, "de")["bleu"] == 100.0


def test_length_buckets_count_source_words_and_skip_empty_buckets():
    buckets = score(GOOD, REFERENCES, SOURCES, "de")["length_buckets"]
    assert {name: b["sentences"] for name, b in buckets.items()} == {"1-10": 30, "11-20": 10}
    assert buckets["11-20"]["bleu"] == 100.0  # the long sentence is translated exactly


@pytest.mark.parametrize(("lang", "tokenizer"), [("de", "13a"), ("zh", "zh"), ("ja", "ja-mecab")])
def test_tokenizer_follows_the_target_language(lang, tokenizer):
    assert sacrebleu_tokenizer(lang) == tokenizer


def test_paired_bootstrap_tells_a_clear_difference_from_a_one_sentence_one():
    clear = paired_bootstrap(POOR, GOOD, REFERENCES, "de")
    slight = list(GOOD)
    slight[5] = "Zwei Hunde spielen in dem Schnee."  # one sentence of forty differs a little
    unclear = paired_bootstrap(GOOD, slight, REFERENCES, "de")
    assert clear["p_value"] < 0.01 and unclear["p_value"] > 0.1
    # Two-sided (sacreBLEU tests |difference|): a clear loss is as significant as a clear win.
    assert paired_bootstrap(GOOD, POOR, REFERENCES, "de")["p_value"] < 0.01
    assert clear["n_samples"] == 1000 and clear["test"] == "paired bootstrap"
    assert "bs:1000|seed:12345" in clear["signature"]
    assert paired_bootstrap(POOR, GOOD, REFERENCES, "de") == clear  # fixed seed: reproducible
