"""`nmt translate`: one sentence per line from a file or standard input, translated as a
stream, with the model's own decoding settings unless flags say otherwise."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from pipelines.commands.common import existing_store_uri
from pipelines.core.errors import PipelineError

log = logging.getLogger("nmt")


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


def run(args: argparse.Namespace) -> None:
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
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
    parser.add_argument("input", nargs="?", default="-", metavar="FILE", help="default: stdin")
    parser.add_argument(
        "--model",
        required=True,
        help="an exported model folder (artifacts/<arch>), a converted one (nmt export) or a "
        "registry URI such as models:/nmt-translator@champion",
    )
    parser.add_argument(
        "--beam-size", type=int, default=None, help="beam width (default: the model's settings)"
    )
    parser.add_argument(
        "--length-penalty", type=float, default=None,
        help="GNMT length penalty alpha (default: the model's settings)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="sentences per batch (default: the model's settings)",
    )  # fmt: skip
    parser.add_argument(
        "--n-best", type=int, default=1, metavar="K",
        help="print the K best hypotheses of each input line (1 <= K <= beam size), best first, "
        "as K lines '<input line number>\\t<score>\\t<hypothesis>' (numbers from 1; score: "
        "log-probability / GNMT length penalty); an empty input line gives one line with score 0 "
        "and an empty hypothesis (default 1: plain translations, one line per input line)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, or auto (cuda if any)"
    )
    parser.add_argument(
        "--progress-threshold", type=int, default=200,
        help="show a progress bar on stderr when stdout is not a terminal and the input has "
        "this many lines (a file: counted first; a pipe: once this many are translated)",
    )  # fmt: skip
    parser.set_defaults(func=run)
