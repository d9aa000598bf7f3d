"""MLflow plumbing: where the store is, run structure (parent + one run per architecture), lineage.

The store defaults to ``sqlite:///<repo>/mlruns/mlflow.db`` with artifacts under ``<repo>/mlruns``;
``MLFLOW_TRACKING_URI`` overrides it. The repo root is resolved absolutely, also from inside the
temporary copies that ``dvc exp run --queue`` works in, so every run lands in one store.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.core.digest import file_sha256
from pipelines.core.errors import PipelineError

PARENT_KEY_TAG = "pipeline.key"
ARCH_TAG = "architecture"
SEED_TAG = "seed"
DVC_EXPS_MARKER = (".dvc", "tmp", "exps")


def repo_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder with dvc.yaml, outside any DVC experiment copy."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(DVC_EXPS_MARKER) + 1):
        if parts[i : i + len(DVC_EXPS_MARKER)] == DVC_EXPS_MARKER:
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return path


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store under ``<repo>/mlruns``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or repo_root()) / 'mlruns' / 'mlflow.db'}"


def artifact_location(experiment: str, root: Path | None = None) -> str | None:
    """Artifacts of a local store live beside it under mlruns/; a server decides for itself."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return None
    folder = (root or repo_root()) / "mlruns" / "artifacts" / experiment
    return folder.as_uri()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                raise PipelineError(f"MLflow tracking server {uri} answered HTTP {response.status}")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(
            f"MLflow tracking server {uri} does not answer ({reason}); "
            "start it or unset MLFLOW_TRACKING_URI to use the local store under mlruns/"
        ) from err


def connect():
    """Point MLflow at the project's store (checked to answer) and return a client."""
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created with artifacts under mlruns/ when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(name))


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=repo_root()
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def data_hash(dataset: str) -> str:
    """The DVC md5 of a tracked dataset folder (from its .dvc pointer), or '' if untracked."""
    pointer = repo_root() / f"{dataset.rstrip('/')}.dvc"
    if not pointer.exists():
        return ""
    import yaml

    outs = yaml.safe_load(pointer.read_text()).get("outs", [])
    return outs[0].get("md5", "") if outs else ""


LIBRARIES = ("mlflow", "dvc", "sacrebleu", "sentencepiece", "datasets", "numpy", "safetensors")


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """``version.<name>`` of the libraries whose results a run depends on, as installed."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in LIBRARIES:
        try:
            versions[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            versions[f"version.{name}"] = "none"
    return versions


def lineage_tags(dataset: str) -> dict[str, str]:
    """Code, data and pipeline versions plus software, device and threads, as MLflow tags: two
    runs of one commit that disagree can be told apart by them."""
    import lightning
    import torch

    root = repo_root()
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        # dvc.lock is rewritten by the pipeline run itself; its hash is tagged separately.
        "git.dirty": str(
            bool(_git("status", "--porcelain", "-uno", "--", ".", ":!dvc.lock"))
        ).lower(),
        "dvc.data_hash": data_hash(dataset),
        "dvc.lock_sha256": file_sha256(root / "dvc.lock"),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "version.python": platform.python_version(),
        "version.torch": torch.__version__,
        "version.lightning": lightning.__version__,
        "version.cuda": torch.version.cuda or "none",
        **library_versions(),
        "device": gpu or cpu,
        "device.cpu": cpu,
        "torch.num_threads": str(torch.get_num_threads()),
    }


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own source tags (the UI's Source and User columns), as `mlflow run` sets them."""
    import getpass

    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {
        MLFLOW_GIT_COMMIT: _git("rev-parse", "HEAD") or "unknown",
        MLFLOW_SOURCE_NAME: entry_point,
        MLFLOW_SOURCE_TYPE: "LOCAL",
        MLFLOW_USER: user,
    }


def pipeline_key(params_file: Path, dataset: str) -> str:
    """One key per pipeline run: the code commit, the params and the data version together."""
    digest = hashlib.sha256()
    for part in (_git("rev-parse", "HEAD"), file_sha256(params_file), data_hash(dataset)):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def parent_run_id(client, exp_id: str, key: str, run_name: str) -> str:
    """The parent run that groups the architectures of one pipeline run (created once)."""
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{PARENT_KEY_TAG}` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    tags = {PARENT_KEY_TAG: key, **source_tags("dvc repro")}
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    return run.info.run_id


def log_params(client, run_id: str, flat: dict[str, Any]) -> None:
    """Log flattened params in batches (MLflow caps a batch at 100 params)."""
    from mlflow.entities import Param

    items = [
        Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flat.items()
    ]
    existing = client.get_run(run_id).data.params
    items = [p for p in items if p.key not in existing]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def finish_stale_run(client, run_id: str, reason: str) -> None:
    """Mark a run that a killed process left RUNNING as KILLED, with the reason."""
    try:
        run = client.get_run(run_id)
    except Exception:
        return
    if run.info.status == "RUNNING":
        client.set_tag(run_id, "nmt.ended_because", reason)
        client.set_terminated(run_id, status="KILLED", end_time=int(time.time() * 1000))
