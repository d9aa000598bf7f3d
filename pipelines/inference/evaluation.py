"""Translate prepared test splits with given decoding settings and score them with sacreBLEU.

Detokenized hypotheses are scored against the raw references (:func:`pipelines.core.scoring.score`:
BLEU and chrF with their signatures, BLEU per source-length bucket). Used by the evaluate stage
and by `nmt retrain`, which scores challenger and champion the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_path
from pipelines.core.params import DecodingSettings
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
