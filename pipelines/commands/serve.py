"""`nmt serve`: a registered translator over HTTP (`mlflow models serve`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipelines.commands.common import become_server, existing_store_uri
from pipelines.core.errors import PipelineError

log = logging.getLogger("nmt")


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


def run(args: argparse.Namespace) -> None:
    command, env = serve_command(args.model, args.host, args.port, args.workers)
    log.info(
        "serving %s on http://%s:%d/invocations (store %s); Ctrl-C stops it",
        args.model,
        args.host,
        args.port,
        env["MLFLOW_TRACKING_URI"],
    )
    become_server(command, env, args.host, "scoring server")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
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
    parser.add_argument(
        "--model",
        required=True,
        help="a registered or logged translator: models:/nmt-translator@champion, "
        "models:/<name>/<version> or runs:/<run id>/translator",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="server processes, each with its own copy of the model (default 1)",
    )  # fmt: skip
    parser.set_defaults(func=run)
