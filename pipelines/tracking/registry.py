"""The MLflow model registry: register translators, move the `champion` alias, fetch one back.

A version is the pyfunc model of :mod:`pipelines.inference.pyfunc_model`, logged into the
architecture's run with the decoding settings it was evaluated with. Aliases, not the deprecated
stages, mark the model in use (mlflow#10336). Every promotion tags the new champion with the
previous champion, the score delta and the time, and the old one with when and by whom it was
replaced, so the registry keeps a history of who was champion when (mlflow#2169).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.tracking import runs

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger("nmt.registry")

CHAMPION = "champion"
LOGGED_MODEL_NAME = "translator"  # the model's name inside its run: runs:/<run_id>/translator
SHA_TAG = "nmt.model_sha256"
DECODING_TAG = "nmt.decoding"  # the decoding settings the version ships (its decoding.json)
DEFAULT_EXAMPLE = ["A man is riding a bicycle.", "Two dogs play in the snow."]


@dataclass
class Promotion:
    """The outcome of one registration: the version, its score and whether it became champion."""

    version: str
    score: float | None
    previous_version: str | None
    previous_score: float | None
    promoted: bool
    reason: str


def _client(client=None):
    return client if client is not None else runs.connect()


def model_sha256(model_dir: Path) -> str:
    """Identifies exported weights: the same folder is registered once, however often asked."""
    digest = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_and_register(
    run_id: str,
    model_dir: str | Path,
    registered_name: str,
    *,
    input_example: list[str] | None = None,
    decoding: DecodingSettings | None = None,
    client=None,
) -> str:
    """Log `model_dir` as a pyfunc model into run `run_id` and register it; returns the version.

    `decoding` is what the model was evaluated with (params.evaluate); the model ships it as its
    ``decoding.json`` (None: the folder's own decoding.json, else the defaults). A version of the
    same weights from the same run with the same settings is reused rather than registered again,
    so a rerun of the compare stage does not pile up identical versions.
    """
    import mlflow

    from pipelines.inference.pyfunc_model import log_pyfunc_model, shipped_settings

    client = _client(client)
    model_dir = Path(model_dir)
    sha = model_sha256(model_dir)
    settings = shipped_settings(model_dir, decoding)
    settings_tag = json.dumps(settings.to_dict(), sort_keys=True)
    for existing in client.search_model_versions(
        f"name = '{registered_name}' and run_id = '{run_id}'"
    ):
        if existing.tags.get(SHA_TAG) == sha and existing.tags.get(DECODING_TAG) == settings_tag:
            log.info("%s version %s already holds %s", registered_name, existing.version, model_dir)
            return str(existing.version)
    run = client.get_run(run_id)
    tags = {
        SHA_TAG: sha,
        DECODING_TAG: settings_tag,
        runs.ARCH_TAG: run.data.tags.get(runs.ARCH_TAG, ""),
        "git.commit": run.data.tags.get("git.commit", ""),
        "nmt.parent_run_id": run.data.tags.get("mlflow.parentRunId", ""),
    }
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc_model(
            model_dir,
            LOGGED_MODEL_NAME,
            input_example or DEFAULT_EXAMPLE,
            metadata={SHA_TAG: sha},
            decoding=settings,
        )
    if run.info.end_time:
        # Reopening the run only attached the model: keep its status and its duration.
        client.set_terminated(run_id, status=run.info.status, end_time=run.info.end_time)
    version = mlflow.register_model(info.model_uri, registered_name, tags=tags)
    client.update_model_version(
        registered_name, version.version, description=f"{tags[runs.ARCH_TAG]} from run {run_id}"
    )
    log.info("registered %s version %s from run %s", registered_name, version.version, run_id)
    return str(version.version)


def version_score(registered_name: str, version: str, split: str, *, client=None) -> float | None:
    """BLEU of a version on `split`, from the run it was logged from: a test split's beam-search
    score, or for the validation split the exported model's (greedy) validation BLEU."""
    client = _client(client)
    run_id = client.get_model_version(registered_name, version).run_id
    metrics = client.get_run(run_id).data.metrics
    return metrics.get(f"test/{split}/bleu", metrics.get(f"validation/{split}/bleu"))


def champion_version(registered_name: str, *, client=None) -> str | None:
    """The version the `champion` alias points at, or None when there is none (or no model)."""
    from mlflow.exceptions import MlflowException

    client = _client(client)
    try:
        return str(client.get_model_version_by_alias(registered_name, CHAMPION).version)
    except MlflowException:
        return None


def champion_score(registered_name: str, split: str, *, client=None) -> float | None:
    """The champion's BLEU on `split`, or None when there is no champion yet."""
    client = _client(client)
    version = champion_version(registered_name, client=client)
    return (
        None if version is None else version_score(registered_name, version, split, client=client)
    )


def decide_promotion(
    candidate: float | None,
    champion: float | None,
    margin: float = 0.0,
    p_value: float | None = None,
    max_p_value: float | None = None,
) -> tuple[bool, str]:
    """The promotion policy, in one place (compare and retrain both use it).

    Promote when there is no champion, or when the candidate wins by at least `margin` BLEU and,
    if `max_p_value` is set, its paired-bootstrap `p_value` is at most that; a tie never promotes.
    Scores are rounded to 0.01, so the gain is compared without float dust.
    """
    if candidate is None:
        return False, "the candidate has no score"
    if champion is None:
        return True, "no champion yet"
    gain = round(candidate - champion, 6)
    if not (gain > 0 and gain >= margin):
        return (
            False,
            f"BLEU {candidate:.2f} does not beat champion {champion:.2f} by margin {margin:.2f}",
        )
    wins = f"BLEU {candidate:.2f} >= champion {champion:.2f} + margin {margin:.2f}"
    if max_p_value is None:
        return True, wins
    if p_value is None:
        return False, f"{wins}, but no significance test was run (max_p_value {max_p_value})"
    if p_value > max_p_value:
        return False, f"{wins}, but not significant: p = {p_value:.4f} > {max_p_value}"
    return True, f"{wins}, p = {p_value:.4f} <= {max_p_value}"


def set_champion(
    registered_name: str, version: str, split: str, *, reason: str = "", client=None
) -> dict[str, Any]:
    """Point `champion` at `version`, recording the previous champion, the delta and the time."""
    client = _client(client)
    version = str(version)
    previous = champion_version(registered_name, client=client)
    score = version_score(registered_name, version, split, client=client)
    record: dict[str, Any] = {"version": version, "score": score, "previous_version": previous}
    if previous == version:
        return record | {"changed": False}
    previous_score = (
        None if previous is None else version_score(registered_name, previous, split, client=client)
    )
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    delta = None if score is None or previous_score is None else round(score - previous_score, 4)
    tags = {
        "champion.promoted_at": now,
        "champion.previous_version": previous or "none",
        "champion.previous_score": "" if previous_score is None else str(previous_score),
        "champion.score": "" if score is None else str(score),
        "champion.score_delta": "" if delta is None else str(delta),
        "champion.split": split,
        "champion.reason": reason,
    }
    client.set_registered_model_alias(registered_name, CHAMPION, version)
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    if previous is not None:
        client.set_model_version_tag(registered_name, previous, "champion.demoted_at", now)
        client.set_model_version_tag(registered_name, previous, "champion.succeeded_by", version)
    log.info(
        "%s@%s: version %s (was %s, delta %s)", registered_name, CHAMPION, version, previous, delta
    )
    return record | {"previous_score": previous_score, "delta": delta, "at": now, "changed": True}


def champion_history(registered_name: str, *, client=None) -> list[dict[str, str]]:
    """Every version that was ever champion, oldest promotion first, from the version tags."""
    client = _client(client)
    history = []
    for version in client.search_model_versions(f"name = '{registered_name}'"):
        if "champion.promoted_at" not in version.tags:
            continue
        entry = {"version": str(version.version)}
        entry.update(
            {
                k.removeprefix("champion."): v
                for k, v in version.tags.items()
                if k.startswith("champion.")
            }
        )
        history.append(entry)
    return sorted(history, key=lambda entry: (entry["promoted_at"], int(entry["version"])))


def register_and_promote(
    run_id: str,
    model_dir: str | Path,
    registered_name: str,
    split: str,
    *,
    margin: float = 0.0,
    replace_champion: bool = True,
    input_example: list[str] | None = None,
    decoding: DecodingSettings | None = None,
    client=None,
) -> Promotion:
    """Register the model of `run_id`, then make it champion if :func:`decide_promotion` says so.

    With ``replace_champion=False`` it becomes champion only when there is none yet (bootstrap).
    `decoding`: the settings it was evaluated with, shipped with it (see :func:`log_and_register`).
    """
    client = _client(client)
    version = log_and_register(
        run_id,
        model_dir,
        registered_name,
        input_example=input_example,
        decoding=decoding,
        client=client,
    )
    score = version_score(registered_name, version, split, client=client)
    previous = champion_version(registered_name, client=client)
    if previous == version:
        return Promotion(version, score, previous, score, False, "already champion")
    previous_score = (
        None if previous is None else version_score(registered_name, previous, split, client=client)
    )
    promote, reason = decide_promotion(score, previous_score, margin)
    if previous is not None and not replace_champion:
        promote, reason = False, f"champion version {previous} kept: `nmt retrain` replaces it"
    if promote:
        set_champion(registered_name, version, split, reason=reason, client=client)
    log.info("%s version %s: %s%s", registered_name, version, reason, "" if promote else " (kept)")
    return Promotion(version, score, previous, previous_score, promote, reason)


def download_model_folder(uri: str, dst_path: str | Path | None = None) -> Path:
    """The exported model folder inside a registered or logged pyfunc model, downloaded locally.

    `uri` is ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or
    ``runs:/<run_id>/translator``; the tracking URI must already be set (``runs.connect()``).
    The folder holds the ``decoding.json`` the model was logged with (versions logged before
    decoding settings were recorded have none).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path))
    except (MlflowException, OSError) as err:
        raise _not_fetched(uri, err) from err
    try:
        model = Model.load(local)
    except (MlflowException, OSError) as err:
        raise _not_a_translator(uri) from err
    folder = local / _model_dir_path(uri, model.flavors)
    log.info("%s: the %s model logged in run %s", uri, folder.name, model.run_id)
    return folder


def translator_model_info(uri: str) -> ModelInfo:
    """MLflow's ModelInfo of the translator at `uri`, from its MLmodel file alone.

    A URI that names no model (unknown name, alias, version or run) or a model that is not a
    translator is a one-line :class:`PipelineError`; the tracking URI must already be set.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as err:
        raise _not_fetched(uri, err) from err
    _model_dir_path(uri, info.flavors)
    return info


def _not_fetched(uri: str, err: Exception) -> PipelineError:
    message = str(getattr(err, "message", err)).splitlines()[0]
    return PipelineError(f"{uri}: cannot be fetched from the MLflow store ({message})")


def _not_a_translator(uri: str) -> PipelineError:
    return PipelineError(f"{uri}: not a translator logged by pipelines.tracking.registry")


def _model_dir_path(uri: str, flavors: dict[str, Any]) -> str:
    """Where a translator model keeps its exported folder, relative to the model's root."""
    from pipelines.inference.pyfunc_model import MODEL_DIR_KEY

    try:
        return flavors["python_function"]["artifacts"][MODEL_DIR_KEY]["path"]
    except (KeyError, TypeError) as err:
        raise _not_a_translator(uri) from err
