"""`nmt retrain`: one idempotent pass of scheduled retraining, safe to run from any scheduler.

1. Take the run lock (:mod:`pipelines.ops.runlock`); a second run exits with ``EXIT_LOCKED``.
2. Bring in the latest data version: ``git pull --ff-only`` and ``dvc pull`` of the corpus pointer
   when the branch has an upstream; otherwise the workspace is used as it is (a corpus folder must
   match its ``.dvc`` pointer, i.e. be ``dvc add``-ed; a Hub corpus is versioned by
   ``data.revision``).
3. Nothing changed (``dvc status`` of the stages up to compare), a champion exists and the
   pipeline's current best model has been decided on: exit ``EXIT_UP_TO_DATE``.
4. Otherwise ``dvc repro evaluate`` (every stage up to the test scores; log kept next to the
   decision record; with ``retrain.start: warm`` the train stage fine-tunes the champion), then
   re-translate the promotion
   split (``retrain.promotion_split``, default the validation split) with the challenger (the
   model the compare stage registers: the architecture with the best mean validation BLEU, its
   best seed) and with the champion, using the same code and the same ``evaluate`` beam settings
   (each model's length penalty chosen on the validation split when ``evaluate.length_penalty_grid``
   is set, as the evaluate stage does), and score both with sacreBLEU (one signature). No test
   split takes part unless it is declared the promotion split, and then the report marks it as
   used for decisions.
5. Promote only if challenger BLEU >= champion BLEU + ``retrain.margin_bleu`` (the margin should
   exceed run-to-run noise, about 0.5 BLEU) and, when ``retrain.max_p_value`` is set, sacreBLEU's
   paired bootstrap p-value is at most that (the p-value is always recorded). Either way the
   decision, both scores, the margin, the p-value, the signature and the data and code versions go
   to ``reports/retrain/<UTC timestamp>.json`` and to tags on the challenger's model version and
   runs.

6. Then ``dvc repro compare``: the report, and the compare stage's own registration, which finds
   the challenger registered already and the champion decided.

Nothing is registered and no alias moves until both scores are in: a run that fails (or is killed)
before that leaves the registry as it was, since the compare stage (the pipeline's only other
registrar) runs after the decision.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.config import ConfigError
from pipelines.core.atomic import atomic_write_json
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings, ModelRun, Params, load_params
from pipelines.core.paths import ProjectPaths
from pipelines.ops.processes import RetrainError, command, git_has_upstream, run_logged
from pipelines.ops.runlock import LockHeld, RunLock
from pipelines.reports.selection import select
from pipelines.tracking import registry, runs

log = logging.getLogger("nmt.retrain")

EXIT_UP_TO_DATE = 0
EXIT_FAILED = 1
EXIT_PROMOTED = 10
EXIT_NOT_PROMOTED = 11
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later
RECORDS = Path("reports/retrain")
DECISION_TAG = "retrain.outcome"


@dataclass
class Decision:
    """What one retraining pass decided, as written to its record."""

    started: datetime
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def stamp(self) -> str:
        return self.started.strftime("%Y%m%dT%H%M%SZ")


# ----------------------------------------------------------------------------- data and status


def data_pointer(params: Params, root: Path) -> Path | None:
    """The corpus folder's ``.dvc`` pointer, or None (a Hub corpus, or an untracked folder)."""
    pointer = root / f"{params.data.dataset.rstrip('/')}.dvc"
    return pointer if pointer.exists() else None


def sync(root: Path, params_file: Path) -> tuple[str, Params]:
    """Bring in the latest code, params and data version; returns (how, the params now)."""
    if git_has_upstream(root):
        command(root, "git", "pull", "--ff-only", "--quiet")
        params = load_params(params_file)
        pointer = data_pointer(params, root)
        if pointer is not None:
            command(root, "dvc", "pull", str(pointer.relative_to(root)))
        how = "git pull --ff-only" + (f" + dvc pull {pointer.name}" if pointer else "")
    else:
        params = load_params(params_file)
        how = "workspace (no git upstream)"
    log.info("data: %s", how)
    return how, params


def pipeline_status(root: Path, params: Params) -> dict[str, Any]:
    """``dvc status`` of `compare` and every stage before it, as JSON (the `study` stage after it
    reports on the models and decides nothing); a corpus folder out of step with its pointer is an
    error."""
    done = command(root, "dvc", "status", "--with-deps", "compare", "--json")
    status = json.loads(done.stdout or "{}")
    pointer = data_pointer(params, root)
    if pointer is not None and str(pointer.relative_to(root)) in status:
        folder = params.data.dataset.rstrip("/")
        raise RetrainError(
            f"{folder} does not match {folder}.dvc: `dvc add {folder}` (and commit the pointer) "
            f"to make it the new data version, or `dvc checkout {folder}.dvc` to drop the change"
        )
    return status


def challenger_run(params: Params, root: Path) -> ModelRun | None:
    """The model the pipeline selects (on validation, as compare does), None before a run."""
    paths = ProjectPaths(root)
    if not all((paths.artifacts / run.name / "training.json").exists() for run in params.runs()):
        return None
    return select(params, paths).run


def undecided_model(params: Params, root: Path, champion: str | None, client) -> str | None:
    """Why the pipeline's current selected model still needs a decision, or None if it has one.

    It has one when a version of it (same run, same weights) is the champion or carries a
    retraining decision: a pass killed after `dvc repro` but before deciding is picked up again.
    """
    run = challenger_run(params, root)
    if run is None:
        return "no trained model yet"
    folder = root / "artifacts" / run.name
    run_id = json.loads((folder / "training.json").read_text())["run_id"]
    sha = registry.model_sha256(folder)
    name = params.tracking.registered_model
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.tags.get(registry.SHA_TAG) == sha and (
            DECISION_TAG in version.tags or str(version.version) == champion
        ):
            return None
    return f"{run.name} of run {run_id} has not been compared with the champion"


# ----------------------------------------------------------------------------- scoring


def score_folder(
    folder: Path, params: Params, split: str, root: Path
) -> tuple[list[str], dict[str, Any]]:
    """Translate `split` with the exported model in `folder` (evaluate's settings, the length
    penalty chosen on the validation split as the evaluate stage chooses it) and score it.

    Returns the hypotheses and the scores kept in the decision record, with the decoding settings.
    """
    from pipelines.inference.evaluation import choose_decoding, translate_and_score
    from pipelines.inference.translator import Translator

    # params.evaluate decides, not the settings a downloaded champion recorded: both sides alike.
    translator = Translator.load(folder, device=params.evaluate.device)
    prepared = root / "data" / "prepared"
    validation = params.data.validation_split
    settings, _ = choose_decoding(translator, prepared, validation, params.evaluate)
    hypotheses, result = translate_and_score(translator, prepared, split, settings)
    scores = {k: result[k] for k in ("bleu", "chrf", "signature", "sentences")}
    return hypotheses, {**scores, "decoding": settings.to_dict()}


def significance(
    hypotheses: dict[str, list[str]], split: str, root: Path, tgt_lang: str
) -> dict[str, Any]:
    """Paired bootstrap of the challenger's translations against the champion's."""
    from pipelines.core.scoring import paired_bootstrap
    from pipelines.data.prepared import read_references

    references = read_references(root / "data" / "prepared", split)
    return paired_bootstrap(hypotheses["champion"], hypotheses["challenger"], references, tgt_lang)


# ----------------------------------------------------------------------------- the pass


def retrain(root: Path, params_file: Path, decision: Decision, lock: RunLock) -> int:
    """One retraining pass under `lock`; returns the exit code (raises on failure)."""
    sync_how, params = sync(root, params_file)
    split = params.promotion_split
    name = params.tracking.registered_model
    status = pipeline_status(root, params)
    client = runs.connect()
    champion = registry.champion_version(name, client=client)
    if champion is None:
        why = "no champion yet"
    elif status:
        why = f"changed: {', '.join(sorted(status))}"
    else:
        why = undecided_model(params, root, champion, client)
    if why is None:
        log.info("up to date: no new data, params or code; %s@champion is v%s", name, champion)
        return EXIT_UP_TO_DATE
    log.info("retraining (%s)", why)
    decision.record.update(
        registered_model=name,
        sync=sync_how,
        trigger=why,
        split=split,
        margin_bleu=params.retrain.margin_bleu,
        max_p_value=params.retrain.max_p_value,
        start=params.retrain.start,
        champion_before=champion,
    )
    with tempfile.TemporaryDirectory(prefix="nmt-retrain-") as tmp:
        champion_dir = None
        if champion is not None:
            champion_dir = Path(tmp) / f"champion-v{champion}"
            fetched = registry.download_model_folder(f"models:/{name}/{champion}", Path(tmp) / "dl")
            shutil.move(fetched, champion_dir)
        if params.retrain.start == "warm":
            log.info("start: warm: the train stage fine-tunes the champion if it fits")
        run_pipeline(root, "evaluate", decision, lock)
        params = load_params(params_file)  # as the pipeline just used them
        run = challenger_run(params, root)
        if run is None:
            raise RetrainError("dvc repro finished without a trained model for every training")
        folder = root / "artifacts" / run.name
        run_id = json.loads((folder / "training.json").read_text())["run_id"]
        log.info("challenger: %s of run %s; champion: version %s", run.name, run_id, champion)
        # Both now, by this code, with the same beam settings: the scores are comparable.
        hypotheses, scores = {}, {}
        hypotheses["challenger"], scores["challenger"] = score_folder(folder, params, split, root)
        if champion_dir is not None:
            hypotheses["champion"], scores["champion"] = score_folder(
                champion_dir, params, split, root
            )
    if len({score["signature"] for score in scores.values()}) != 1:
        raise RetrainError(f"challenger and champion scored with different signatures: {scores}")
    describe_pass(decision.record, params, split, root, client, run, run_id, scores)
    p_value = None
    if "champion" in scores:
        decision.record["significance"] = significance(
            hypotheses, split, root, params.data.tgt_lang
        )
        p_value = decision.record["significance"]["p_value"]
    promote, reason = registry.decide_promotion(
        scores["challenger"]["bleu"],
        scores["champion"]["bleu"] if "champion" in scores else None,
        params.retrain.margin_bleu,
        p_value,
        params.retrain.max_p_value,
    )
    code = settle(client, decision.record, folder, promote, reason)
    run_pipeline(root, "compare", decision, lock)
    return code


def run_pipeline(root: Path, target: str, decision: Decision, lock: RunLock) -> None:
    """``dvc repro <target>``: the stage and every stage it depends on, logged beside the record."""
    repro_log = root / RECORDS / f"{decision.stamp}.repro.log"
    decision.record["repro_log"] = str(repro_log.relative_to(root))
    log.info("dvc repro %s (log: %s)", target, repro_log)
    argv = [sys.executable, "-m", "dvc", "repro", target]
    run_logged(root, argv, repro_log, dict(os.environ), lock)
    lock.update(child_pgid=None)


def describe_pass(
    record: dict[str, Any],
    params: Params,
    split: str,
    root: Path,
    client,
    run: ModelRun,
    run_id: str,
    scores: dict[str, dict[str, Any]],
) -> None:
    """Scores, split, signature and the data and code versions of both models, into `record`."""
    manifest = json.loads((root / "data" / "prepared" / "manifest.json").read_text())
    lineage = runs.lineage_tags(params.data.dataset)
    record.update(
        signature=scores["challenger"]["signature"],
        split_sha256=manifest["splits"][split]["sha256"],
        sentences=scores["challenger"]["sentences"],
        decoding=scores["challenger"]["decoding"],
        data={
            "dataset": params.data.dataset,
            "revision": params.data.revision,
            "dvc_data_hash": lineage["dvc.data_hash"],
            "git_commit": lineage["git.commit"],
            "git_dirty": lineage["git.dirty"],
            "dvc_lock_sha256": lineage["dvc.lock_sha256"],
        },
        split_role="validation" if split == params.data.validation_split else "test",
        challenger={"architecture": run.arch, "training": run.name, "run_id": run_id},
    )
    if "champion" in scores:
        version = record["champion_before"]
        run = client.get_model_version(record["registered_model"], version).run_id
        record["champion"] = {"version": version, "run_id": run}
    for side, score in scores.items():
        tags = client.get_run(record[side]["run_id"]).data.tags
        record[side].update(
            bleu=score["bleu"],
            chrf=score["chrf"],
            decoding=score["decoding"],
            git_commit=tags.get("git.commit", ""),
            dvc_data_hash=tags.get("dvc.data_hash", ""),
            parent_run_id=tags.get("mlflow.parentRunId", ""),
        )


def settle(client, record: dict[str, Any], folder: Path, promote: bool, reason: str) -> int:
    """The only registry changes of a pass: register the challenger, tag it, maybe promote it."""
    name, champion = record["registered_model"], record["champion_before"]
    if registry.champion_version(name, client=client) != champion:
        raise RetrainError(f"{name}@champion moved while retraining; leaving it alone")
    run_id, decoding = record["challenger"]["run_id"], DecodingSettings(**record["decoding"])
    version = registry.log_and_register(run_id, folder, name, decoding=decoding, client=client)
    record["challenger"]["version"] = version
    if version == champion:
        promote, reason = False, f"the challenger is the champion already (version {version})"
    outcome = "promoted" if promote else "not_promoted"
    record.update(outcome=outcome, reason=reason)
    log.info("%s version %s %s: %s", name, version, outcome.replace("_", " "), reason)
    tag_decision(client, record, name, version)
    if promote:
        registry.set_champion(
            name, version, record["split"], reason=f"nmt retrain: {reason}", client=client
        )
    record["champion_after"] = registry.champion_version(name, client=client)
    record["exit_code"] = EXIT_PROMOTED if promote else EXIT_NOT_PROMOTED
    return record["exit_code"]


def tag_decision(client, record: dict[str, Any], name: str, version: str) -> None:
    """The decision as tags on the challenger's version, its run and its pipeline's parent run."""
    challenger, champion = record["challenger"], record.get("champion") or {}
    tags = {
        DECISION_TAG: record["outcome"],
        "retrain.reason": record["reason"],
        "retrain.at": record["started"],
        "retrain.record": record["record_file"],
        "retrain.split": record["split"],
        "retrain.signature": record["signature"],
        "retrain.margin_bleu": str(record["margin_bleu"]),
        "retrain.max_p_value": str(record["max_p_value"]),
        "retrain.p_value": str(record.get("significance", {}).get("p_value", "")),
        "retrain.challenger_bleu": str(challenger["bleu"]),
        "retrain.champion_version": str(champion.get("version", "none")),
        "retrain.champion_bleu": str(champion.get("bleu", "")),
        "retrain.dvc_data_hash": record["data"]["dvc_data_hash"],
        "retrain.git_commit": record["data"]["git_commit"],
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(challenger["run_id"], key, value)
    parent = challenger["parent_run_id"]
    if parent:  # with the keys compare writes when it registers by itself
        for key, value in {
            **tags,
            "registry.model": name,
            "registry.version": version,
            "registry.architecture": challenger["architecture"],
            "registry.promoted": str(record["outcome"] == "promoted").lower(),
            "registry.decision": record["reason"],
        }.items():
            client.set_tag(parent, key, value)


def write_record(root: Path, decision: Decision) -> Path:
    path = root / decision.record["record_file"]
    atomic_write_json(path, decision.record)
    return path


def _raise_on_signal(signum: int, frame) -> None:
    raise RetrainError(f"stopped by signal {signal.Signals(signum).name}")


def main(args: argparse.Namespace) -> int:
    """`nmt retrain`: returns the exit code (see the module docstring and `nmt retrain --help`)."""
    root = runs.repo_root()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    lock = RunLock(root / args.lock)
    try:
        lock.acquire()
    except LockHeld as err:
        log.error("another retrain is running: %s; exiting (code %d)", err, EXIT_LOCKED)
        return EXIT_LOCKED
    previous = signal.signal(signal.SIGTERM, _raise_on_signal)
    started = datetime.now(timezone.utc)
    decision = Decision(started)
    decision.record.update(
        started=started.isoformat(timespec="seconds"),
        record_file=str(RECORDS / f"{decision.stamp}.json"),
    )
    log.info("nmt retrain in %s, pid %d, %s", root, os.getpid(), decision.record["started"])
    clock = time.monotonic()
    try:
        code = retrain(root, root / args.params, decision, lock)
    except (Exception, KeyboardInterrupt) as err:  # nothing was promoted: say so, keep a record
        known = (RetrainError, PipelineError, ConfigError, KeyboardInterrupt)
        if not isinstance(err, known):
            log.exception("unexpected error")
        log.error("retrain failed: %s", str(err) or type(err).__name__)
        decision.record.update(outcome="failed", reason=str(err), exit_code=EXIT_FAILED)
        code = EXIT_FAILED
    try:
        if code != EXIT_UP_TO_DATE:
            decision.record["seconds"] = round(time.monotonic() - clock, 1)
            log.info("decision record: %s", write_record(root, decision))
    finally:
        signal.signal(signal.SIGTERM, previous)
        lock.release()
    return code
