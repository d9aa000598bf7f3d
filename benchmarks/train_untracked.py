"""Train one architecture of a params file with the train stage's own library, without MLflow, then
export it and beam-search the test splits: for lent GPU machines that have no mlflow installed.

    python -m benchmarks.train_untracked --arch convs2s --params profiles/gpu.yaml \\
        --budget-s 300 --out results/

It builds the module, the data module and the Trainer as ``pipelines.stages.train`` does
(Lightning's default logger instead of MLflow) and scores as ``pipelines.stages.evaluate`` does; the
run's
history, throughput and test scores go to ``<out>/<arch>_untracked.json``. Needs the tokenizer
stage's ``data/tokenized`` for the params file's tokenizer settings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from pipelines.core.params import load_params
from pipelines.core.paths import PATHS
from pipelines.data.vocab import Tokenizers
from pipelines.inference.evaluation import evaluate
from pipelines.inference.translator import Translator
from pipelines.stages.train import build_module, data_module, export_config
from pipelines.training.export import export_model
from pipelines.training.trainer import accumulation, build_trainer, world_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_untracked", description=__doc__
    )
    parser.add_argument("--arch", required=True, help="an entry of `models` in the params file")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--budget-s", type=float, help="train.max_time_s for this run")
    parser.add_argument("--out", type=Path, required=True, help="folder for the result JSON")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="untracked-"))
    raw = yaml.safe_load(args.params.read_text())
    raw["architectures"] = [args.arch]
    raw["train"]["max_time_s"] = args.budget_s
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(work / "params.yaml")
    pl.seed_everything(params.seed, workers=True)
    tokenizers = Tokenizers.load(PATHS.tokenized)
    module = build_module(args.arch, params, PATHS, tokenizers, None)
    accumulate = accumulation(params.train, world_size(params))
    history = args.out / f"{args.arch}_history.csv"
    trainer, monitor, best = build_trainer(
        params, args.arch, work / "checkpoints", history, None, accumulate
    )
    start = time.time()
    trainer.fit(module, datamodule=data_module(params, PATHS, accumulate))
    seconds = time.time() - start
    state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    export_model(module.model, export_config(args.arch, params, tokenizers), tokenizers, work / "m")
    translator = Translator.load(work / "m", device=params.evaluate.device)
    metrics = evaluate(
        translator, params.data.test_splits, params.evaluate, PATHS.prepared, work / "hypotheses"
    )
    result = {
        "arch": args.arch,
        "params": module.model.num_parameters(),
        "fit_seconds": round(seconds, 1),
        "epochs": len(monitor.rows),
        "history": monitor.rows,
        "tokens_per_sec": monitor.tokens_per_sec,
        "test": {s: {k: v[k] for k in ("bleu", "chrf", "signature")} for s, v in metrics.items()},
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    (args.out / f"{args.arch}_untracked.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("params", "fit_seconds", "epochs", "test")}))


if __name__ == "__main__":
    main()
