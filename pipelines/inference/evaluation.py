"""Translate prepared test splits with given decoding settings and score them with sacreBLEU.

Detokenized hypotheses are scored against the raw references (:func:`pipelines.core.scoring.score`:
BLEU and chrF with their signatures, BLEU per source-length bucket). The length penalty is chosen
on the validation split (:func:`choose_decoding`) before any test split is read. Used by the
evaluate stage and by `nmt retrain`, which scores challenger and champion the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_path
from pipelines.core.params import DecodingSettings, EvaluateParams
from pipelines.core.scoring import score
from pipelines.data.prepared import read_pairs
from pipelines.inference.settings import write_settings
from pipelines.inference.translator import Translator

log = logging.getLogger("nmt.evaluate")


def settings_file(metrics: Path, name: str) -> Path:
    """Where the evaluate stage records the decoding settings of ``metrics/<name>.json``."""
    return metrics / f"{name}.decoding.json"


def translate_and_score(
    translator: Translator,
    prepared: Path,
    split: str,
    settings: DecodingSettings,
    progress: bool = False,
) -> tuple[list[str], dict[str, Any]]:
    """Translate one prepared split with `settings`; returns the hypotheses and their scores."""
    sources, references = read_pairs(prepared, split)
    log.info("translating %s (%d sentences)", split, len(sources))
    hypotheses = translator.translate(sources, settings, progress=progress)
    return hypotheses, score(hypotheses, references, sources, translator.config["tgt_lang"])


def choose_decoding(
    translator: Translator, prepared: Path, validation_split: str, settings: EvaluateParams
) -> tuple[DecodingSettings, dict[str, Any] | None]:
    """The decoding settings with the length penalty of the best beam-search BLEU on
    `validation_split`, among ``settings.length_penalties()`` (ties: the earlier one), and the
    record of that choice; without a grid, ``settings`` as given and None (nothing is decoded)."""
    candidates = settings.length_penalties()
    if len(candidates) == 1:
        return settings.decoding(), None
    bleu: dict[str, float] = {}
    for length_penalty in candidates:
        trial = settings.with_overrides(length_penalty=length_penalty)
        _, result = translate_and_score(translator, prepared, validation_split, trial)
        bleu[str(length_penalty)] = score = result["bleu"]
        log.info("%s, length penalty %s: BLEU %.2f", validation_split, length_penalty, score)
    best = max(candidates, key=lambda length_penalty: bleu[str(length_penalty)])
    log.info("length penalty %s chosen on %s", best, validation_split)
    record = {"split": validation_split, "bleu": bleu, "length_penalty": best}
    return settings.with_overrides(length_penalty=best), record


def evaluate(
    translator: Translator,
    test_splits: list[str],
    settings: DecodingSettings,
    prepared: Path,
    hypotheses_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Translate and score each test split; hypotheses are written atomically, one file a split."""
    metrics: dict[str, dict[str, Any]] = {}
    with atomic_path(hypotheses_dir) as tmp:
        tmp.mkdir(parents=True)
        for split in test_splits:
            hypotheses, metrics[split] = translate_and_score(
                translator, prepared, split, settings, progress=True
            )
            (tmp / f"{split}.txt").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
            log.info(
                "%s: BLEU %.2f chrF %.2f", split, metrics[split]["bleu"], metrics[split]["chrf"]
            )
    return metrics


def record_settings(metrics: Path, name: str, settings: DecodingSettings) -> Path:
    """Write the decoding settings (not the stage's other keys) beside ``metrics/<name>.json``
    (`name`: a training's ``<arch>-<seed>``)."""
    path = settings_file(metrics, name)
    write_settings(path, settings)
    return path
