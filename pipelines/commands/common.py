"""What several `nmt` commands share: the tracking store they read and how a command becomes a
server process."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipelines.core.errors import PipelineError

log = logging.getLogger("nmt")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def become_server(command: list[str], env: dict[str, str], host: str, what: str) -> None:
    """Replace this process by the server `command` (so that Ctrl-C and a supervisor's SIGTERM
    reach it directly), warning first when `host` is not a loopback address."""
    if host not in LOOPBACK:
        log.warning("binding %s: the %s has no authentication", host, what)
    sys.stderr.flush()
    os.execvpe(command[0], command, env)
