"""sacreBLEU scoring (Post, 2018), the same everywhere: corpus BLEU and chrF with the target
language's tokenizer (sacrebleu#147), BLEU per source-length bucket, and paired bootstrap
resampling (Koehn, 2004) between two systems: its p-value, and the confidence interval of the
BLEU difference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sacrebleu

from pipelines.core.errors import PipelineError

LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, None))
# sacreBLEU's tokenizer by target language (sacrebleu#147); 13a for everything else.
TOKENIZER_BY_LANG = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
# Tokenizers whose packages are optional: (language named in the error, the project's extra).
OPTIONAL_TOKENIZERS = {"ja-mecab": ("Japanese", "ja"), "ko-mecab": ("Korean", "ko")}


def sacrebleu_tokenizer(tgt_lang: str) -> str:
    return TOKENIZER_BY_LANG.get(tgt_lang, "13a")


def bleu_metric(tgt_lang: str, references: Sequence[str] | None = None) -> sacrebleu.BLEU:
    """sacreBLEU's BLEU with `tgt_lang`'s tokenizer; with `references`, their n-gram statistics
    are extracted once, for scoring the whole of them again and again
    (``corpus_score(hypotheses, None)``).

    Japanese and Korean need MeCab, an optional extra: where it is missing, sacreBLEU's
    RuntimeError (ImportError in other releases) becomes a one-line PipelineError naming the fix.
    """
    tokenize = sacrebleu_tokenizer(tgt_lang)
    try:
        return sacrebleu.BLEU(
            tokenize=tokenize, references=None if references is None else [list(references)]
        )
    except (ImportError, RuntimeError) as err:
        if tokenize not in OPTIONAL_TOKENIZERS:
            raise
        language, extra = OPTIONAL_TOKENIZERS[tokenize]
        raise PipelineError(
            f"data.tgt_lang: {tgt_lang}: scoring {language} needs sacreBLEU's MeCab tokenizer "
            f"({tokenize}), which is not installed: pip install 'nmt-pipeline[{extra}]'"
        ) from err


def corpus_bleu(hypotheses: list[str], references: list[str], tgt_lang: str) -> float:
    """Corpus BLEU of detokenized `hypotheses` against one reference each (0.0 for none)."""
    bleu = bleu_metric(tgt_lang)  # before the empty case: a missing tokenizer fails at once
    if not hypotheses:
        return 0.0
    return bleu.corpus_score(hypotheses, [references]).score


def bucket_name(low: int, high: int | None) -> str:
    return f"{low}-{high}" if high else f"{low}+"


def score(
    hypotheses: list[str], references: list[str], sources: list[str], tgt_lang: str
) -> dict[str, Any]:
    """Corpus BLEU and chrF with signatures, and BLEU per source-length bucket."""
    bleu = bleu_metric(tgt_lang)
    chrf = sacrebleu.CHRF()
    result: dict[str, Any] = {
        "bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
        "length_buckets": {},
    }
    for low, high in LENGTH_BUCKETS:
        members = [
            i
            for i, s in enumerate(sources)
            if low <= len(s.split()) and (high is None or len(s.split()) <= high)
        ]
        if not members:
            continue
        bucket_bleu = bleu_metric(tgt_lang).corpus_score(
            [hypotheses[i] for i in members], [[references[i] for i in members]]
        )
        result["length_buckets"][bucket_name(low, high)] = {
            "bleu": round(bucket_bleu.score, 2),
            "sentences": len(members),
        }
    return result


def paired_bootstrap(
    baseline: list[str],
    candidate: list[str],
    references: list[str],
    tgt_lang: str,
    n_samples: int = 1000,
) -> dict[str, Any]:
    """sacreBLEU's paired bootstrap resampling (Koehn 2004) of `candidate` against `baseline`.

    The p-value is two-sided: how likely a BLEU difference at least this large (either way) is if
    the two systems were equally good. The direction is the caller's to check. sacreBLEU's fixed
    seed (in the signature) makes it reproducible.
    """
    from sacrebleu.significance import PairedTest

    metric = bleu_metric(tgt_lang)
    systems = [("baseline", baseline), ("candidate", candidate)]
    signatures, results = PairedTest(
        systems, {"BLEU": metric}, [references], test_type="bs", n_samples=n_samples
    )()
    _, result = results["BLEU"]
    return {
        "test": "paired bootstrap",
        "p_value": round(float(result.p_value), 4),
        "n_samples": n_samples,
        "signature": str(signatures["BLEU"]),
    }


def bleu_difference(
    baseline: list[str],
    candidate: list[str],
    references: list[str],
    tgt_lang: str,
    n_samples: int = 1000,
) -> dict[str, Any]:
    """BLEU(candidate) - BLEU(baseline) with its 95% paired-bootstrap confidence interval.

    sacreBLEU's bootstrap resampling (its per-sentence statistics, its fixed seed): both systems
    are resampled with the same sentence indices, and the interval is the 2.5th-97.5th percentile
    of the per-sample differences.
    """
    from sacrebleu.significance import _bootstrap_resample

    metric = bleu_metric(tgt_lang)
    samples = []
    for system in (baseline, candidate):
        stats = metric._extract_corpus_statistics(system, [references])
        _, scores = _bootstrap_resample(stats, metric, n_samples)  # same seed: same indices
        samples.append(np.array([score.score for score in scores]))
    low, high = np.percentile(samples[1] - samples[0], [2.5, 97.5])
    difference = (
        metric.corpus_score(candidate, [references]).score
        - metric.corpus_score(baseline, [references]).score
    )
    return {
        "difference": round(float(difference), 2),
        "ci_low": round(float(low), 2),
        "ci_high": round(float(high), 2),
        "n_samples": n_samples,
        "sentences": len(references),
    }
