"""DVC stage `evaluate@<arch>`: beam search on every test set, scored with sacreBLEU.

Detokenized hypotheses are scored against the raw references (BLEU and chrF, signature recorded),
also per source-length bucket; results go to ``metrics/<arch>.json`` and to the architecture's
MLflow run (the one its training opened), with hypotheses and attention heatmaps as artifacts.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_path, atomic_write_json
from pipelines.core.errors import PipelineError, run_main, setup_logging
from pipelines.core.params import EvaluateParams, load_params
from pipelines.core.scoring import score
from pipelines.inference.translator import Translator
from pipelines.tracking import runs

log = logging.getLogger("nmt.evaluate")

def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    if not path.exists():
        raise PipelineError(f"{path}: prepared split not found; run the prepare stage first")
    sources, references = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            sources.append(pair["src"])
            references.append(pair["tgt"])
    return sources, references


def translate_and_score(
    translator: Translator, split_file: Path, settings: EvaluateParams, progress: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """Translate one prepared split with the evaluate settings; returns hypotheses and scores."""
    sources, references = read_pairs(split_file)
    log.info("translating %s (%d sentences)", split_file.stem, len(sources))
    hypotheses = translator.translate(
        sources,
        beam_size=settings.beam_size,
        length_penalty=settings.length_penalty,
        max_len_margin=settings.max_len_margin,
        batch_size=settings.batch_size,
        progress=progress,
    )
    return hypotheses, score(hypotheses, references, sources, translator.config["tgt_lang"])


def evaluate(
    translator: Translator,
    test_splits: list[str],
    settings: EvaluateParams,
    prepared: Path,
    hypotheses_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Translate and score each test split; hypotheses are written atomically, one file a split."""
    metrics: dict[str, dict[str, Any]] = {}
    with atomic_path(hypotheses_dir) as tmp:
        tmp.mkdir(parents=True)
        for split in test_splits:
            hypotheses, metrics[split] = translate_and_score(
                translator, prepared / f"{split}.jsonl", settings, progress=True
            )
            (tmp / f"{split}.txt").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
            log.info(
                "%s: BLEU %.2f chrF %.2f", split, metrics[split]["bleu"], metrics[split]["chrf"]
            )
    return metrics


def log_to_mlflow(
    run_id: str,
    metrics: dict[str, dict[str, Any]],
    translator: Translator,
    hypotheses_dir: Path,
    validation_sources: list[str],
) -> None:
    """Test metrics, signatures, hypotheses and attention heatmaps on the architecture's run."""
    from pipelines.reports.plots import attention_heatmap

    client = runs.connect()
    for split, values in metrics.items():
        client.log_metric(run_id, f"test/{split}/bleu", values["bleu"])
        client.log_metric(run_id, f"test/{split}/chrf", values["chrf"])
        for bucket, bucket_values in values["length_buckets"].items():
            client.log_metric(
                run_id,
                f"test/{split}/bleu_len_{bucket.replace('+', 'plus')}",
                bucket_values["bleu"],
            )
    first = next(iter(metrics.values()))
    client.set_tag(run_id, "sacrebleu.signature", first["signature"])
    client.set_tag(run_id, "sacrebleu.chrf_signature", first["chrf_signature"])
    client.log_artifacts(run_id, str(hypotheses_dir), artifact_path="hypotheses")
    with tempfile.TemporaryDirectory() as tmp:
        for number, sentence in enumerate(validation_sources):
            example = translator.attention_example(sentence)
            if example is None:
                break
            attention_heatmap(example, Path(tmp) / f"attention_val{number}.png", title=sentence)
        client.log_artifacts(run_id, tmp, artifact_path="attention")
    client.set_terminated(run_id, status="FINISHED")


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.evaluate",
        description="Beam-search every test split with artifacts/<arch> and score it with "
        "sacreBLEU (DVC stage evaluate@<arch>). Writes metrics/<arch>.json and hypotheses/<arch>/.",
    )
    parser.add_argument("--arch", required=True, help="an architecture trained by train@<arch>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--device", default="cpu", help="torch device for decoding (cpu, cuda)")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    model_dir = Path("artifacts") / args.arch
    translator = Translator.load(model_dir, device=args.device)
    hypotheses_dir = Path("hypotheses") / args.arch
    metrics = evaluate(
        translator, params.data.test_splits, params.evaluate, Path("data/prepared"), hypotheses_dir
    )
    atomic_write_json(Path("metrics") / f"{args.arch}.json", metrics)
    training = json.loads((model_dir / "training.json").read_text())
    validation_sources, _ = read_pairs(
        Path("data/prepared") / f"{params.data.validation_split}.jsonl"
    )
    log_to_mlflow(
        training["run_id"],
        metrics,
        translator,
        hypotheses_dir,
        validation_sources[: params.evaluate.attention_examples],
    )


if __name__ == "__main__":
    main()
