"""The `nmt` command: fetch a corpus, translate with a model, serve it, open the MLflow UI, retrain.

The pipeline itself runs with `dvc repro`; its stages are `python -m pipelines.stages.<stage>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.core.errors import PipelineError, run_main, setup_logging
from pipelines.core.params import DataParams

if TYPE_CHECKING:
    pass

log = logging.getLogger("nmt")
PACKAGE = "nmt-pipeline"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_device(device: str) -> str:
    """A torch device that exists here (``auto``: cuda when available, else cpu), or an error."""
    import torch

    from pipelines.inference.settings import resolve_device

    device = resolve_device(device)
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise PipelineError(f"--device {device}: not a torch device (cpu, cuda, cuda:1)") from err
    if parsed.type == "cuda":
        available = torch.cuda.device_count()
        if not available or (parsed.index is not None and parsed.index >= available):
            raise PipelineError(f"--device {device}: {available} CUDA device(s) visible")
    return device


def existing_store_uri(what: str) -> str:
    """The tracking URI (:func:`pipelines.tracking.runs.tracking_uri`), or an error naming `what`
    when it is a SQLite store that does not exist: MLflow would quietly create an empty one
    (mlflow#23634)."""
    from pipelines.tracking import runs

    uri = runs.tracking_uri()
    store = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not store.exists():
        raise PipelineError(
            f"{what}: no MLflow store at {store}; run `dvc repro` here or set MLFLOW_TRACKING_URI"
        )
    return uri


def load_translator(model: str, device: str):
    """A Translator from an exported folder, a CTranslate2 one from a converted folder (CPU
    only), or a Translator from the MLflow registry for a models:/ URI."""
    from pipelines.inference.ct2_translator import CTranslate2Translator, is_converted_folder
    from pipelines.inference.translator import Translator

    if is_converted_folder(model):
        if device != "cpu":
            raise PipelineError(f"--device {device}: a CTranslate2 folder translates on the cpu")
        return CTranslate2Translator.load(model)
    if not model.startswith(("models:/", "runs:/")):
        return Translator.load(model, device=device)
    from pipelines.tracking import runs
    from pipelines.tracking.registry import download_model_folder

    existing_store_uri(model)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    runs.connect()
    # Everything is read into memory on load, so the downloaded copy can go right after.
    with tempfile.TemporaryDirectory(prefix="nmt-model-") as tmp:
        return Translator.load(download_model_folder(model, tmp), device=device)


def project_settings(root: Path | None = None):
    """The ``evaluate`` settings of the project's params.yaml, or None outside a project.

    The project is the one `nmt` runs in: the folder with dvc.yaml at or above the working
    directory (:func:`pipelines.tracking.runs.repo_root`), when it holds a params.yaml.
    """
    import yaml

    from models.config import ConfigError, from_dict
    from pipelines.core.params import EvaluateParams
    from pipelines.tracking import runs

    root = root or runs.repo_root()
    params_file = root / "params.yaml"
    if not ((root / "dvc.yaml").is_file() and params_file.is_file()):
        return None
    try:
        section = (yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}).get("evaluate")
        return from_dict(EvaluateParams, section or {}, prefix="evaluate").decoding()
    except (yaml.YAMLError, AttributeError, ConfigError) as err:
        raise PipelineError(f"{params_file}: {err} (read for the decoding settings)") from err


def decoding_settings(translator, args: argparse.Namespace):
    """The flags given, over the model's recorded settings (its decoding.json); for a folder
    without one, over the project's params.yaml `evaluate` settings, else the defaults."""
    settings, source = translator.settings, "the model's decoding.json"
    if translator.settings_file is None:
        project = project_settings()
        settings, source = (
            (settings, "the defaults") if project is None else (project, "params.yaml evaluate")
        )
    flags = {"beam_size": args.beam_size, "length_penalty": args.length_penalty}
    flags["batch_size"] = args.batch_size
    given = ", ".join(f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None)
    settings = settings.with_overrides(**flags)
    log.info(
        "decoding with %s: %s%s", source, settings, f", overridden by {given}" if given else ""
    )
    return settings


def cmd_translate(args: argparse.Namespace) -> None:
    for option, value in (
        ("--beam-size", args.beam_size),
        ("--batch-size", args.batch_size),
        ("--n-best", args.n_best),
    ):
        if value is not None and value < 1:
            raise PipelineError(f"{option}: must be >= 1")
    if args.length_penalty is not None and args.length_penalty < 0:
        raise PipelineError("--length-penalty: must be >= 0")
    from pipelines.inference.streaming import (
        Progress,
        count_lines,
        iter_lines,
        open_input,
        write_translations,
    )

    stream, name = open_input(args.input)
    try:
        translator = load_translator(args.model, check_device(args.device))
        settings = decoding_settings(translator, args)
        if args.n_best > settings.beam_size:
            raise PipelineError(
                f"--n-best {args.n_best}: must be at most the beam size ({settings.beam_size})"
            )
        # A person typing gets each line back at once; a pipe or file is read in full batches.
        batch_size = 1 if stream.isatty() else settings.batch_size
        progress = Progress(count_lines(stream), args.progress_threshold)
        try:
            lines = iter_lines(stream, name)
            write_translations(translator, settings, lines, batch_size, args.n_best, progress)
            if progress.done == 0:
                log.warning("%s: no input lines", name)
        finally:
            progress.close()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader went away (`nmt translate big.txt | head`): stop quietly, as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def cmd_export(args: argparse.Namespace) -> None:
    from pipelines.inference.ct2_conversion import export_ctranslate2
    from pipelines.inference.ct2_translator import is_converted_folder

    if is_converted_folder(args.model):
        raise PipelineError(f"{args.model}: already converted to CTranslate2")
    translator = load_translator(args.model, "cpu")
    export_ctranslate2(translator, args.model, args.output, args.quantization)


def ui_command(host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment that `nmt ui` runs."""
    from pipelines.tracking import runs

    uri = existing_store_uri("nmt ui")
    if uri.startswith(("http://", "https://")):
        raise PipelineError(f"MLFLOW_TRACKING_URI is a server already: open {uri} in a browser")
    root = runs.repo_root()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", (root / "mlruns" / "artifacts").as_uri(),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    # The job-execution workers serve GenAI features only; the pipeline does not need them.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return command, env


def cmd_ui(args: argparse.Namespace) -> None:
    from pipelines.tracking import runs

    command, env = ui_command(args.host, args.port)
    if args.host not in LOOPBACK:
        log.warning("binding %s: the MLflow UI has no authentication", args.host)
    log.info(
        "MLflow UI on http://%s:%d (store %s); the runs table is under Experiments; "
        "Ctrl-C stops it",
        args.host,
        args.port,
        runs.tracking_uri(),
    )
    sys.stderr.flush()
    # Become the server, so that Ctrl-C and a supervisor's SIGTERM reach it directly.
    os.execvpe(command[0], command, env)


def serve_command(
    model: str, host: str, port: int, workers: int
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow models serve` command line and environment that `nmt serve` runs.

    The model is checked first (a one-line error for an unknown name, alias, version or run), and
    served from this environment (``--env-manager local``): MLflow's default would build a
    virtualenv, which needs the network.
    """
    from pipelines.tracking import runs
    from pipelines.tracking.registry import translator_model_info

    if workers < 1:
        raise PipelineError("--workers: must be >= 1")
    uri = existing_store_uri(model)
    runs.connect()
    translator_model_info(model)
    command = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "--model-uri", model,
        "--env-manager", "local",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return command, env


def cmd_serve(args: argparse.Namespace) -> None:
    command, env = serve_command(args.model, args.host, args.port, args.workers)
    if args.host not in LOOPBACK:
        log.warning("binding %s: the scoring server has no authentication", args.host)
    log.info(
        "serving %s on http://%s:%d/invocations (store %s); Ctrl-C stops it",
        args.model,
        args.host,
        args.port,
        env["MLFLOW_TRACKING_URI"],
    )
    sys.stderr.flush()
    # Become the server, so that Ctrl-C and a supervisor's SIGTERM reach it directly.
    os.execvpe(command[0], command, env)


def split_renames(specs: list[str]) -> dict[str, str]:
    """``--split HUB=NAME`` options (``test=test_2016_flickr``) as a mapping."""
    renames: dict[str, str] = {}
    for spec in specs:
        hub, _, name = spec.partition("=")
        if not hub or not name or "/" in name:
            raise PipelineError(f"--split {spec}: expected HUB=NAME, e.g. test=test_2016_flickr")
        renames[hub] = name
    return renames


def cmd_fetch_corpus(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipelines.core.params import load_params
    from pipelines.data.corpus import write_hub_corpus

    renames = split_renames(args.split)
    if args.out.exists() and not args.force:
        raise PipelineError(
            f"{args.out} exists (the DVC-tracked corpus?): pass --force to replace it"
        )
    data = replace(
        load_params(args.params).data,
        dataset=args.dataset,
        config=args.config,
        revision=args.revision,
    )
    written = write_hub_corpus(data, renames, args.out)
    log.info(
        "wrote %s: %s",
        args.out,
        ", ".join(f"{name} ({rows} pairs)" for name, rows in written.items()),
    )


def cmd_retrain(args: argparse.Namespace) -> None:
    from pipelines.ops.retrain import main as retrain_main

    raise SystemExit(retrain_main(args))


def package_version() -> str:
    """The installed version of the nmt-pipeline package ("unknown" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt",
        description="Machine-translation pipeline tools. Run the pipeline itself with "
        "`dvc repro`; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    translate = commands.add_parser(
        "translate",
        help="translate sentences (one per line) from a file or standard input",
        description="Translate one sentence per line from FILE (default: standard input) to "
        "standard output, with beam search, as a stream: lines are read, translated and written "
        "one batch (--batch-size lines) at a time and each batch is flushed, so a pipe or a large "
        "file needs no more memory than a batch; from a terminal, each line is translated as it "
        "is typed. Output line N is the translation of input line N; an empty (or blank) line "
        "gives an empty line. Input is UTF-8 and is normalized as the training data was (Unicode "
        "form recorded in the model's config.json, control characters removed, whitespace "
        "collapsed). Decoding settings not given as flags "
        "are the model's own: those it was evaluated with, recorded in its decoding.json (a "
        "registered model, or any folder holding one); for an exported folder without one "
        "(artifacts/<arch>), the `evaluate` section of the project's params.yaml when run "
        "inside the project, else the built-in defaults (DecodingSettings). A folder converted "
        "by `nmt export --format ctranslate2` is translated by CTranslate2 on the CPU, with the "
        "same search and settings.",
    )
    translate.add_argument("input", nargs="?", default="-", metavar="FILE", help="default: stdin")
    translate.add_argument(
        "--model",
        required=True,
        help="an exported model folder (artifacts/<arch>), a converted one (nmt export) or a "
        "registry URI such as models:/nmt-translator@champion",
    )
    translate.add_argument(
        "--beam-size", type=int, default=None, help="beam width (default: the model's settings)"
    )
    translate.add_argument(
        "--length-penalty", type=float, default=None,
        help="GNMT length penalty alpha (default: the model's settings)",
    )  # fmt: skip
    translate.add_argument(
        "--batch-size", type=int, default=None,
        help="sentences per batch (default: the model's settings)",
    )  # fmt: skip
    translate.add_argument(
        "--n-best", type=int, default=1, metavar="K",
        help="print the K best hypotheses of each input line (1 <= K <= beam size), best first, "
        "as K lines '<input line number>\\t<score>\\t<hypothesis>' (numbers from 1; score: "
        "log-probability / GNMT length penalty); an empty input line gives one line with score 0 "
        "and an empty hypothesis (default 1: plain translations, one line per input line)",
    )  # fmt: skip
    translate.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, or auto (cuda if any)"
    )
    translate.add_argument(
        "--progress-threshold", type=int, default=200,
        help="show a progress bar on stderr when stdout is not a terminal and the input has "
        "this many lines (a file: counted first; a pipe: once this many are translated)",
    )  # fmt: skip
    translate.set_defaults(func=cmd_translate)

    export = commands.add_parser(
        "export",
        help="convert a trained Transformer for a faster CPU engine (CTranslate2)",
        description="Convert a trained Transformer (an exported folder or a registry URI) to "
        "CTranslate2 and write a converted folder: config.json, tokenizer/, decoding.json when "
        "the model has one, and the CTranslate2 model in ctranslate2/. `nmt translate --model "
        "OUTPUT` then decodes with CTranslate2 on the CPU, with the same beam search, length "
        "penalty and settings. Pre- and post-norm, tied or separate embeddings and every "
        "positional encoding convert; an LSTM or ConvS2S model does not (`nmt translate` runs it "
        "with PyTorch). Needs the ct2 extra: pip install 'nmt-pipeline[ct2]'.",
    )
    export.add_argument(
        "--model", required=True,
        help="an exported model folder (artifacts/<arch>-<seed>) or a registry URI such as "
        "models:/nmt-translator@champion",
    )  # fmt: skip
    export.add_argument(
        "--output", type=Path, required=True, help="the converted folder to write (must not exist)"
    )
    export.add_argument(
        "--format", choices=["ctranslate2"], default="ctranslate2",
        help="the engine to convert for (default ctranslate2)",
    )  # fmt: skip
    export.add_argument(
        "--quantization", default="float32",
        help="how the weights are stored: float32 (default; scores as PyTorch's) or int8 "
        "(smaller and faster; see benchmarks/README.md for its BLEU)",
    )  # fmt: skip
    export.set_defaults(func=cmd_export)

    ui = commands.add_parser(
        "ui",
        help="serve the MLflow UI on the pipeline's tracking store",
        description="Start `mlflow server` on the store the pipeline writes to "
        "(MLFLOW_TRACKING_URI, else mlruns/mlflow.db). Binds to 127.0.0.1 unless told otherwise: "
        "the UI has no authentication. In the browser, Experiments -> <dataset>-<src>-<tgt> lists "
        "one run per architecture under its pipeline run (#/experiments/<id>/runs); tick two "
        "runs and press Compare to see their params and metrics side by side; Models -> "
        "nmt-translator shows the registered versions and the `champion` alias.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.set_defaults(func=cmd_ui)

    serve = commands.add_parser(
        "serve",
        help="serve a registered translator over HTTP (mlflow models serve)",
        description="Run `mlflow models serve` on a registered translator, from the store the "
        "pipeline writes to (MLFLOW_TRACKING_URI, else mlruns/mlflow.db), in this Python "
        "environment (--env-manager local: no network, no conda or virtualenv). POST JSON to "
        '/invocations, one sentence per row: {"inputs": ["A dog runs.", ""]} or '
        '{"dataframe_split": {"columns": ["source"], "data": [["A dog runs."]]}}, '
        'optionally with "params": {"beam_size": 1} (defaults: the settings the model was '
        'evaluated with). The answer is {"predictions": [...]}, one translation per row in '
        'order; an empty row gives "". GET /ping answers 200 once the model is loaded.',
    )
    serve.add_argument(
        "--model",
        required=True,
        help="a registered or logged translator: models:/nmt-translator@champion, "
        "models:/<name>/<version> or runs:/<run id>/translator",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    serve.add_argument(
        "--workers", type=int, default=1,
        help="server processes, each with its own copy of the model (default 1)",
    )  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    fetch = commands.add_parser(
        "fetch-corpus",
        help="write a Hugging Face dataset into the corpus folder (no ../shared needed)",
        description="Load DATASET with Hugging Face `datasets` (a Hub id such as "
        "bentrevett/multi30k, a local folder laid out like a Hub repository, or a folder written "
        "by DatasetDict.save_to_disk) and write every split into OUT as <split>.jsonl.gz in the "
        'pipeline\'s layout ({"translation": {src: ..., tgt: ...}} per line, the languages of '
        "--params' data section), checked row by row. --split renames splits to the names "
        "params.yaml uses. Then run the pipeline on it: `dvc repro` records OUT's new version "
        "in its .dvc file.",
    )
    fetch.add_argument("dataset", metavar="DATASET", help="Hub id or local dataset folder")
    fetch.add_argument("--config", default=None, help="dataset configuration (e.g. de-en)")
    fetch.add_argument(
        "--revision", default=None, help="Hub branch, tag or commit to pin (default: main)"
    )
    fetch.add_argument(
        "--split", action="append", default=[], metavar="HUB=NAME",
        help="write Hub split HUB as NAME (repeatable), e.g. test=test_2016_flickr",
    )  # fmt: skip
    fetch.add_argument(
        "--out", type=Path, default=Path(DataParams().dataset),
        help=f"corpus folder to write (default {DataParams().dataset})",
    )  # fmt: skip
    fetch.add_argument(
        "--force", action="store_true", help="replace OUT if it exists (it is replaced whole)"
    )
    fetch.add_argument(
        "--params", type=Path, default=Path("params.yaml"),
        help="params file whose data.src_lang and data.tgt_lang are written (default params.yaml)",
    )  # fmt: skip
    fetch.set_defaults(func=cmd_fetch_corpus)

    retrain = commands.add_parser(
        "retrain",
        help="scheduled retraining: pull new data, retrain, promote only if better",
        description="One idempotent retraining pass for a scheduler (cron, systemd, CI): take a "
        "lock; bring in the latest code and data (git pull --ff-only and dvc pull when the branch "
        "has an upstream, else the workspace as it is); if anything changed, run `dvc repro`, "
        "score the new model (selected on validation) and the champion on retrain.promotion_split "
        "(default: the validation split) with the same beam "
        "settings and sacreBLEU signature, and move `champion` only if the new one reaches the "
        "champion's BLEU + retrain.margin_bleu (and, if retrain.max_p_value is set, a paired "
        "bootstrap p-value at most that). Each decision goes to "
        "reports/retrain/<UTC time>.json and to MLflow tags. Exit codes: 0 up to date, "
        "10 promoted, 11 not promoted, 1 failed (champion untouched), 75 locked by another run.",
    )
    retrain.add_argument(
        "--params", type=Path, default=Path("params.yaml"),
        help="the params file retrain reads, relative to the repository root (the pipeline "
        "itself always reads params.yaml)",
    )  # fmt: skip
    retrain.add_argument(
        "--lock", type=Path, default=Path(".nmt-retrain.lock"),
        help="lock file, relative to the repository root (default .nmt-retrain.lock)",
    )  # fmt: skip
    retrain.set_defaults(func=cmd_retrain)
    return parser


@run_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    args.func(args)


if __name__ == "__main__":
    main()
