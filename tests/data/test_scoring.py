"""Scoring: corpus BLEU/chrF as sacreBLEU computes them, length buckets, paired bootstrap;
Japanese and Korean with the MeCab extra, or a one-line error naming it."""

from __future__ import annotations

import importlib
import types

import pytest
import sacrebleu

from pipelines.core.errors import PipelineError
from pipelines.core.scoring import (
    corpus_bleu,
    paired_bootstrap,
    sacrebleu_tokenizer,
    score,
)

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


JA_REFERENCES = ["犬が雪の中で遊んでいる。", "男性が自転車に乗っている。"] * 5
JA_SOURCES = ["A dog plays in the snow.", "A man rides a bike."] * 5
JA_POOR = ["犬が遊んでいる。", "男性がいる。"] * 5
MECAB_MISSING = {
    "ja": "data.tgt_lang: ja: scoring Japanese needs sacreBLEU's MeCab tokenizer (ja-mecab), "
    "which is not installed: pip install 'nmt-pipeline[ja]'",
    "ko": "data.tgt_lang: ko: scoring Korean needs sacreBLEU's MeCab tokenizer (ko-mecab), "
    "which is not installed: pip install 'nmt-pipeline[ko]'",
}


def every_scorer(tgt_lang: str) -> list:
    """Each public way to score, as a thunk: all build their BLEU the same way."""
    return [
        lambda: corpus_bleu(JA_POOR, JA_REFERENCES, tgt_lang),
        lambda: corpus_bleu([], [], tgt_lang),  # fails at once, not at the first real hypothesis
        lambda: score(JA_POOR, JA_REFERENCES, JA_SOURCES, tgt_lang),
        lambda: paired_bootstrap(JA_POOR, JA_REFERENCES, JA_REFERENCES, tgt_lang, n_samples=10),
    ]


@pytest.mark.parametrize("lang", ["ja", "ko"])
def test_missing_mecab_is_one_line_naming_the_key_and_the_extra(monkeypatch, lang):
    # What sacreBLEU does where mecab-python3 / mecab-ko is not installed (whether or not it is).
    module = importlib.import_module(f"sacrebleu.tokenizers.tokenizer_{lang}_mecab")
    monkeypatch.setattr(module, "MeCab", None)
    for scorer in every_scorer(lang):
        with pytest.raises(PipelineError) as caught:
            scorer()
        assert str(caught.value) == MECAB_MISSING[lang]
        assert isinstance(caught.value.__cause__, RuntimeError)


def test_an_import_error_is_reported_the_same_and_other_languages_keep_theirs(monkeypatch):
    def no_tokenizer(tokenize: str = "13a", **_):
        raise ImportError(f"no module for {tokenize}")

    monkeypatch.setattr(sacrebleu, "BLEU", no_tokenizer)
    with pytest.raises(PipelineError, match=r"^data\.tgt_lang: ja: .*nmt-pipeline\[ja\]'$"):
        corpus_bleu(JA_POOR, JA_REFERENCES, "ja")
    with pytest.raises(ImportError, match="no module for 13a"):  # not MeCab's: a bug, as it is
        corpus_bleu(POOR, REFERENCES, "de")


class FakeTagger:
    """MeCab's Tagger as sacreBLEU uses it, with the IPA dictionary: splits into characters."""

    def __init__(self, args: str):
        assert "-Owakati" in args

    def dictionary_info(self):
        return types.SimpleNamespace(size=392126, next=None)

    def parse(self, line: str) -> str:
        return " ".join(line) + " \n"

    def version(self) -> str:
        return "0.996"


def test_japanese_scores_with_mecab(monkeypatch):
    # MeCab as the ja extra installs it (faked, so this runs whether or not it is installed).
    module = importlib.import_module("sacrebleu.tokenizers.tokenizer_ja_mecab")
    monkeypatch.setattr(module, "MeCab", types.SimpleNamespace(Tagger=FakeTagger))
    monkeypatch.setattr(module, "ipadic", types.SimpleNamespace(MECAB_ARGS=""), raising=False)
    result = score(JA_POOR, JA_REFERENCES, JA_SOURCES, "ja")
    assert "tok:ja-mecab-0.996-IPA" in result["signature"]
    assert 0 < result["bleu"] < 100
    assert score(JA_REFERENCES, JA_REFERENCES, JA_SOURCES, "ja")["bleu"] == 100.0
    assert corpus_bleu(JA_POOR, JA_REFERENCES, "ja") == pytest.approx(result["bleu"], abs=0.01)
    assert (
        "tok:ja-mecab"
        in paired_bootstrap(JA_POOR, JA_REFERENCES, JA_REFERENCES, "ja", n_samples=10)["signature"]
    )


def test_japanese_in_this_environment_scores_or_names_the_extra():
    try:
        result = score(JA_POOR, JA_REFERENCES, JA_SOURCES, "ja")
    except PipelineError as err:
        assert str(err) == MECAB_MISSING["ja"]
    else:
        assert result["signature"].count("tok:ja-mecab") == 1
