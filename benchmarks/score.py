"""Score a run's test hypotheses three ways, for comparison with published Multi30k numbers.

- ``bleu``: sacreBLEU, cased, 13a tokenizer, on detokenized output (what the evaluate stage
  reports; the signature is recorded).
- ``bleu_lc_13a``: the same with ``lowercase=True``.
- ``bleu_lc_moses``: lowercased, Moses-tokenized hypotheses and references (sacremoses, German
  rules, no escaping) scored with ``tokenize="none"``, i.e. what ``multi-bleu.perl`` gives on
  tokenized lowercased text, the convention of most Multi30k papers. Needs ``sacremoses``
  (``pip install sacremoses``); without it this score is left out.

    python -m benchmarks.score hypotheses/transformer --prepared data/prepared --out scores.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import sacrebleu

from pipelines.data.prepared import read_references


def moses_tokenize(sentences: list[str], lang: str) -> list[str] | None:
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        return None
    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(s, escape=False, return_str=True) for s in sentences]


def score_split(hypotheses: list[str], references: list[str], lang: str) -> dict[str, Any]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    cased = sacrebleu.BLEU(tokenize="13a")
    lowercased = sacrebleu.BLEU(tokenize="13a", lowercase=True)
    result: dict[str, Any] = {
        "bleu": round(cased.corpus_score(hypotheses, [references]).score, 2),
        "signature": str(cased.get_signature()),
        "bleu_lc_13a": round(lowercased.corpus_score(hypotheses, [references]).score, 2),
        "signature_lc_13a": str(lowercased.get_signature()),
    }
    tokenized_hyp = moses_tokenize(hypotheses, lang)
    tokenized_ref = moses_tokenize(references, lang)
    if tokenized_hyp is not None and tokenized_ref is not None:
        moses = sacrebleu.BLEU(tokenize="none", lowercase=True, force=True)  # tokenized on purpose
        result["bleu_lc_moses"] = round(moses.corpus_score(tokenized_hyp, [tokenized_ref]).score, 2)
        result["signature_lc_moses"] = str(moses.get_signature()) + " (sacremoses de)"
    return result


def score_run(hypotheses_dir: Path, prepared: Path, lang: str) -> dict[str, Any]:
    scores = {}
    for path in sorted(hypotheses_dir.glob("*.txt")):
        hypotheses = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
        scores[path.stem] = score_split(hypotheses, read_references(prepared, path.stem), lang)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.score", description=__doc__)
    parser.add_argument("hypotheses", type=Path, help="a hypotheses/<arch> folder")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--lang", default="de")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    scores = score_run(args.hypotheses, args.prepared, args.lang)
    text = json.dumps(scores, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
