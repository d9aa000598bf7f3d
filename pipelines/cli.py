"""The `nmt` command: translate with a trained model, open the tracking UI, retrain on a schedule.

The pipeline itself runs with `dvc repro`; its stages are `python -m pipelines.<stage>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from pipelines.errors import PipelineError, run_main, setup_logging

log = logging.getLogger("nmt")


def read_sentences(source: str) -> list[str]:
    """Lines from a file or standard input ('-'); blank lines and undecodable bytes are errors."""
    name = "<stdin>" if source == "-" else source
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError as err:
        raise PipelineError(f"{name}: no such file") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PipelineError(f"{name}:{line}: invalid UTF-8") from err
    lines = text.splitlines()
    if not lines:
        raise PipelineError(f"{name}: no input sentences")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise PipelineError(f"{name}:{number}: empty line (one sentence per line expected)")
    return lines


def load_translator(model: str, device: str):
    """A Translator from an exported folder, or from the MLflow registry for a models:/ URI."""
    from pipelines.translator import Translator

    if model.startswith(("models:/", "runs:/")):
        from pipelines import tracking
        from pipelines.registry import download_model_folder

        tracking.connect()
        return Translator.load(download_model_folder(model), device=device)
    return Translator.load(model, device=device)


def cmd_translate(args: argparse.Namespace) -> None:
    sentences = read_sentences(args.input)
    translator = load_translator(args.model, args.device)
    progress = not sys.stdout.isatty() and len(sentences) >= args.progress_threshold
    outputs = translator.translate(
        sentences,
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        batch_size=args.batch_size,
        progress=progress,
    )
    sys.stdout.write("".join(f"{line}\n" for line in outputs))


def cmd_ui(args: argparse.Namespace) -> None:
    from pipelines import tracking

    uri = tracking.tracking_uri()
    root = tracking.repo_root()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", (root / "mlruns" / "artifacts").as_uri(),
        "--host", args.host,
        "--port", str(args.port),
        "--workers", "1",
    ]  # fmt: skip
    log.info("MLflow UI on http://%s:%d (store %s); Ctrl-C stops it", args.host, args.port, uri)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    raise SystemExit(subprocess.call(command, env=env))


def cmd_retrain(args: argparse.Namespace) -> None:
    from pipelines.retrain import main as retrain_main

    raise SystemExit(retrain_main(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt",
        description="Machine-translation pipeline tools. Run the pipeline itself with "
        "`dvc repro`; see README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    translate = commands.add_parser(
        "translate",
        help="translate sentences (one per line) from a file or standard input",
        description="Translate one sentence per line from FILE (default: standard input) to "
        "standard output, in batches, with beam search.",
    )
    translate.add_argument("input", nargs="?", default="-", metavar="FILE", help="default: stdin")
    translate.add_argument(
        "--model",
        required=True,
        help="an exported model folder (artifacts/<arch>) or a registry URI such as "
        "models:/nmt-translator@champion",
    )
    translate.add_argument("--beam-size", type=int, default=5, help="beam width (default 5)")
    translate.add_argument("--length-penalty", type=float, default=0.6, help="GNMT alpha")
    translate.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    translate.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    translate.add_argument(
        "--progress-threshold", type=int, default=200,
        help="show a progress bar when stdout is not a terminal and there are this many lines",
    )  # fmt: skip
    translate.set_defaults(func=cmd_translate)

    ui = commands.add_parser(
        "ui",
        help="serve the MLflow UI on the pipeline's tracking store",
        description="Start `mlflow server` on the store the pipeline writes to "
        "(MLFLOW_TRACKING_URI, else mlruns/mlflow.db). Binds to 127.0.0.1 unless told otherwise.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.set_defaults(func=cmd_ui)

    retrain = commands.add_parser(
        "retrain",
        help="scheduled retraining: pull new data, retrain, promote only if better",
        description="One idempotent retraining pass for a scheduler. Exit codes: 0 up to date, "
        "10 promoted, 11 not promoted, 1 failed, 75 locked by another run.",
    )
    retrain.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    retrain.add_argument("--lock", type=Path, default=Path(".nmt-retrain.lock"), help="lock file")
    retrain.set_defaults(func=cmd_retrain)
    return parser


@run_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    if getattr(args, "beam_size", 1) < 1:
        raise PipelineError("--beam-size: must be >= 1")
    args.func(args)


if __name__ == "__main__":
    main()
