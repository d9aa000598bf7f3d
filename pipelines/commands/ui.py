"""`nmt ui`: the MLflow UI on the pipeline's tracking store."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipelines.commands.common import become_server, existing_store_uri
from pipelines.core.errors import PipelineError

log = logging.getLogger("nmt")


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


def run(args: argparse.Namespace) -> None:
    from pipelines.tracking import runs

    command, env = ui_command(args.host, args.port)
    log.info(
        "MLflow UI on http://%s:%d (store %s); the runs table is under Experiments; "
        "Ctrl-C stops it",
        args.host,
        args.port,
        runs.tracking_uri(),
    )
    become_server(command, env, args.host, "MLflow UI")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ui",
        help="serve the MLflow UI on the pipeline's tracking store",
        description="Start `mlflow server` on the store the pipeline writes to "
        "(MLFLOW_TRACKING_URI, else mlruns/mlflow.db). Binds to 127.0.0.1 unless told otherwise: "
        "the UI has no authentication. In the browser, Experiments -> <dataset>-<src>-<tgt> lists "
        "one run per architecture under its pipeline run (#/experiments/<id>/runs); tick two "
        "runs and press Compare to see their params and metrics side by side; Models -> "
        "nmt-translator shows the registered versions and the `champion` alias.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.set_defaults(func=run)
