"""DVC stage `evaluate@<arch>-<seed>`: beam search on every test set, scored with sacreBLEU.

A thin script over :mod:`pipelines.inference.evaluation`: decodes with the ``evaluate`` settings of
params.yaml on ``evaluate.device`` (``auto``: cuda when available, else cpu; ``--device``
overrides). With ``evaluate.length_penalty_grid`` it first decodes the validation split with each
length penalty and keeps the best (the test splits are read only after that choice). It writes
``metrics/<arch>-<seed>.json`` (with ``decoding_selection``: the validation BLEU of each candidate),
the settings it decoded the test sets with to ``metrics/<arch>-<seed>.decoding.json`` and the
hypotheses to ``hypotheses/<arch>-<seed>/``, and logs the results to the training's MLflow run,
with hypotheses and attention heatmaps as artifacts.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_write_json
from pipelines.core.errors import run_main, setup_logging
from pipelines.core.params import DecodingSettings, load_params
from pipelines.core.paths import PATHS
from pipelines.core.scoring import bleu_metric
from pipelines.data.prepared import read_sources
from pipelines.inference.evaluation import choose_decoding, evaluate, record_settings
from pipelines.inference.settings import metrics_record, resolve_device
from pipelines.inference.translator import Translator
from pipelines.tracking import runs

log = logging.getLogger("nmt.evaluate")


def log_to_mlflow(
    run_id: str,
    metrics: dict[str, dict[str, Any]],
    translator: Translator,
    settings: DecodingSettings,
    hypotheses_dir: Path,
    validation_sources: list[str],
    selection: dict[str, Any] | None,
) -> None:
    """Test metrics, the length penalty's choice, signatures, hypotheses and attention heatmaps
    on the architecture's run."""
    from pipelines.reports.plots import attention_heatmap

    client = runs.connect()
    if selection is not None:
        for length_penalty, bleu in selection["bleu"].items():
            name = f"validation/{selection['split']}/beam_bleu/lp_{length_penalty}"
            client.log_metric(run_id, name, bleu)
        client.set_tag(run_id, "evaluate.chosen_length_penalty", str(selection["length_penalty"]))
    for split, values in metrics.items():
        client.log_metric(run_id, f"test/{split}/bleu", values["bleu"])
        client.log_metric(run_id, f"test/{split}/chrf", values["chrf"])
        for bucket, bucket_values in values["length_buckets"].items():
            name = f"test/{split}/bleu_len_{bucket.replace('+', 'plus')}"
            client.log_metric(run_id, name, bucket_values["bleu"])
    first = next(iter(metrics.values()))
    client.set_tag(run_id, "sacrebleu.signature", first["signature"])
    client.set_tag(run_id, "sacrebleu.chrf_signature", first["chrf_signature"])
    client.log_artifacts(run_id, str(hypotheses_dir), artifact_path="hypotheses")
    with tempfile.TemporaryDirectory() as tmp:
        for number, sentence in enumerate(validation_sources):
            example = translator.attention_example(sentence, settings)
            if example is None:
                break
            attention_heatmap(example, Path(tmp) / f"attention_val{number}.png", title=sentence)
        client.log_artifacts(run_id, tmp, artifact_path="attention")
    client.set_terminated(run_id, status="FINISHED")


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stages.evaluate",
        description="Beam-search every test split with artifacts/<arch>-<seed> and score it with "
        "sacreBLEU (DVC stage evaluate@<arch>-<seed>); with evaluate.length_penalty_grid, the "
        "length penalty is chosen on the validation split first. Writes "
        "metrics/<arch>-<seed>.json, metrics/<arch>-<seed>.decoding.json and "
        "hypotheses/<arch>-<seed>/.",
    )
    parser.add_argument("--arch", required=True, help="an entry of `models` in params.yaml")
    parser.add_argument(
        "--seed", type=int, default=None, help="one of params.yaml's seeds (default: the first)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument(
        "--device",
        default=None,
        help="torch device for decoding (auto, cpu, cuda, cuda:1); default: evaluate.device",
    )
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    bleu_metric(params.data.tgt_lang)  # a missing tokenizer fails now, not after decoding
    settings = params.evaluate
    run = params.model_run(args.arch, args.seed)
    model_dir = PATHS.artifacts / run.name
    device = resolve_device(args.device or settings.device)
    translator = Translator.load(model_dir, device=device)
    validation_split = params.data.validation_split
    chosen, selection = choose_decoding(translator, PATHS.prepared, validation_split, settings)
    log.info("decoding the test sets on %s with %s", device, chosen)
    hypotheses_dir = PATHS.hypotheses / run.name
    metrics = evaluate(translator, params.data.test_splits, chosen, PATHS.prepared, hypotheses_dir)
    atomic_write_json(PATHS.metrics / f"{run.name}.json", metrics_record(metrics, selection))
    record_settings(PATHS.metrics, run.name, chosen)
    training = json.loads((model_dir / "training.json").read_text())
    examples = read_sources(PATHS.prepared, validation_split)[: settings.attention_examples]
    log_to_mlflow(
        training["run_id"], metrics, translator, chosen, hypotheses_dir, examples, selection
    )


if __name__ == "__main__":
    main()
