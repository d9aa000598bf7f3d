"""`nmt retrain` end to end: a scheduler's checkout, new data versions arriving through git and DVC.

One module-scoped setup is shared by ordered scenarios (each builds on the state the previous one
left): an *author* copy of the project publishes data versions and params changes to a bare git
repository and a local DVC remote, both in a temporary folder; a *deploy* clone of it is where the
scheduler runs `nmt retrain`. Tiny profile, Transformer only, 40 validation and 30 test sentences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines.core.params import load_params
from pipelines.ops import retrain, runlock
from pipelines.tracking import registry
from tests.pipeline_helpers import (
    SHARED,
    TRANSFORMER,
    cut_corpus,
    git,
    kill_groups,
    make_project_copy,
    project_env,
    run,
    tiny_params,
)

pytestmark = pytest.mark.slow

if not (SHARED / "multi30k").exists():
    pytest.skip("../shared/multi30k is not beside the checkout", allow_module_level=True)

SPLIT = "test_2016_flickr"
SIZES = {"validation": 40, SPLIT: 30}
MODEL = "nmt-translator"
TRAIN_STAGE = f"Running stage 'train@{TRANSFORMER}'"


# --- pure logic: the promotion rule and the lock -------------------------------------------------


def test_lock_is_exclusive_and_a_dead_holders_lock_is_cleared(tmp_path, caplog):
    path = tmp_path / "x.lock"
    with runlock.RunLock(path):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(runlock.LockHeld, match=f"pid {os.getpid()}"):
            runlock.RunLock(path).acquire()
    assert not path.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "x"}))
    with runlock.RunLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "clearing stale lock" in caplog.text and f"pid {dead.pid} is not running" in caplog.text
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(runlock.LockHeld, match="on elsewhere"):
        runlock.RunLock(path).acquire()  # another host's pid says nothing here: never cleared


def test_a_killed_child_group_left_as_zombies_does_not_hold_the_lock(tmp_path):
    """Killed, unreaped members (pid 1 of a container may never reap) are not a live group."""
    live = subprocess.Popen(["sleep", "60"], start_new_session=True)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.05)
        os.killpg(zombie.pid, 0)  # the kernel still counts the unreaped group as existing
        assert runlock.group_alive(live.pid) and not runlock.group_alive(zombie.pid)
        path = tmp_path / "x.lock"
        holder = {"pid": zombie.pid, "host": os.uname().nodename, "started": "x"}
        path.write_text(json.dumps(holder | {"child_pgid": live.pid}))
        with pytest.raises(runlock.LockHeld, match=f"child process group {live.pid}"):
            runlock.RunLock(path).acquire()  # its dvc repro is still running: not stale
        path.write_text(json.dumps(holder | {"child_pgid": zombie.pid}))
        with runlock.RunLock(path):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        live.kill()
        live.wait()
        zombie.wait()


# --- the scheduler's checkout --------------------------------------------------------------------


@dataclass
class Setup:
    author: Path  # publishes data versions and params changes
    deploy: Path  # the scheduler's checkout, where `nmt retrain` runs


def write_corpus(folder: Path, train_pairs: int) -> None:
    """The first `train_pairs` training pairs of Multi30k and small validation and test splits."""
    cut_corpus(folder, {"train": train_pairs, **SIZES})


def publish(setup: Setup, message: str) -> str:
    """Commit the author's changes, push data to the DVC remote and code to git; returns HEAD."""
    git(setup.author, "add", "-A")
    git(setup.author, "commit", "-qm", message)
    run(setup.author, "dvc", "push")
    git(setup.author, "push", "-q")
    return git(setup.author, "rev-parse", "HEAD").strip()


def edit_params(setup: Setup, **changes) -> None:
    path = setup.author / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    work = tmp_path_factory.mktemp("retrain")
    params = tiny_params(
        architectures=["transformer"],
        data={"max_train_pairs": 0, "test_splits": [SPLIT]},
        evaluate={"attention_examples": 0},
        train={"devices": 1, "strategy": "auto"},  # one process: DDP is test_ddp's business
        retrain={"margin_bleu": 0.5, "start": "cold"},
    )
    author = make_project_copy(work, params)
    write_corpus(author / "data" / "multi30k", train_pairs=300)
    run(author, "dvc", "remote", "add", "-d", "-f", "local", str(work / "dvc-remote"))
    run(author, "dvc", "add", "data/multi30k")
    origin = work / "origin.git"
    git(author, "add", "-A")
    git(author, "commit", "-qm", "corpus v1")
    run(author, "dvc", "push")
    git(work, "clone", "-q", "--bare", str(author), str(origin))
    git(author, "remote", "add", "origin", str(origin))
    git(author, "fetch", "-q", "origin")
    branch = git(author, "branch", "--show-current").strip()
    git(author, "branch", "-q", "-u", f"origin/{branch}")
    deploy = work / "deploy"
    git(work, "clone", "-q", str(origin), str(deploy))
    return Setup(author=author, deploy=deploy)


def nmt_retrain(repo: Path) -> subprocess.Popen:
    # One torch thread: on a busy shared CPU, tiny models decode up to 100x slower with two.
    env = project_env(repo) | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "retrain"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@dataclass
class Outcome:
    code: int
    output: str
    seconds: float


def retrain_once(repo: Path, timeout: float = 900) -> Outcome:
    start = time.monotonic()
    process = nmt_retrain(repo)
    output, _ = process.communicate(timeout=timeout)
    return Outcome(process.returncode, output, time.monotonic() - start)


def client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


def champion(repo: Path) -> str | None:
    if not (repo / "mlruns" / "mlflow.db").exists():  # do not create the store by looking
        return None
    return registry.champion_version(MODEL, client=client(repo))


def versions(repo: Path) -> list[str]:
    found = client(repo).search_model_versions(f"name = '{MODEL}'")
    return sorted(str(v.version) for v in found)


def records(repo: Path) -> list[dict]:
    folder = repo / "reports" / "retrain"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def repro_logs(repo: Path) -> list[Path]:
    return sorted((repo / "reports" / "retrain").glob("*.repro.log"))


def data_md5(repo: Path) -> str:
    return yaml.safe_load((repo / "data" / "multi30k.dvc").read_text())["outs"][0]["md5"]


def assert_consistent(repo: Path, record: dict, outcome: Outcome) -> None:
    """A decision record agrees with the exit code, the registry and the rule it states."""
    challenger, margin = record["challenger"], record["margin_bleu"]
    rival = record.get("champion")
    promoted = rival is None or round(challenger["bleu"] - rival["bleu"], 6) >= margin
    if rival is not None and challenger["version"] == rival["version"]:
        promoted = False
    assert record["outcome"] == ("promoted" if promoted else "not_promoted"), record
    assert outcome.code == (retrain.EXIT_PROMOTED if promoted else retrain.EXIT_NOT_PROMOTED)
    expected = challenger["version"] if promoted else record["champion_before"]
    assert record["champion_after"] == expected == champion(repo)
    # Promotion is scored on the validation split (the default): the test split only reports.
    assert record["split"] == "validation" and record["split_role"] == "validation"
    assert record["sentences"] == SIZES["validation"]
    assert record["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    tags = client(repo).get_model_version(MODEL, challenger["version"]).tags
    assert tags["retrain.outcome"] == record["outcome"]
    assert tags["retrain.challenger_bleu"] == str(challenger["bleu"])
    assert tags["retrain.signature"] == record["signature"]
    run_tags = client(repo).get_run(challenger["run_id"]).data.tags
    assert run_tags["retrain.outcome"] == record["outcome"]
    # Each side decoded with its own length penalty, chosen on validation among the tiny
    # profile's candidates; the challenger's settings are the ones it is registered with.
    candidates = load_params(repo / "params.yaml").evaluate.length_penalties()
    assert len(candidates) > 1
    assert record["decoding"] == challenger["decoding"]
    for side in ("challenger", "champion"):
        if side in record:
            assert record[side]["decoding"]["length_penalty"] in candidates
    assert json.loads(tags[registry.DECODING_TAG]) == record["decoding"]
    if rival is not None:  # the paired bootstrap of the two translations of the split
        significance = record["significance"]
        assert 0.0 <= significance["p_value"] <= 1.0
        assert "bs:1000|seed:12345" in significance["signature"]
        assert tags["retrain.p_value"] == str(significance["p_value"])


# --- the scenarios, in order ---------------------------------------------------------------------


def test_first_run_trains_registers_and_sets_the_champion(setup):
    assert champion(setup.deploy) is None
    outcome = retrain_once(setup.deploy)
    assert outcome.code == retrain.EXIT_PROMOTED, outcome.output
    [record] = records(setup.deploy)
    assert record["outcome"] == "promoted" and record["reason"] == "no champion yet"
    assert record["champion_before"] is None and "champion" not in record
    assert record["data"]["dvc_data_hash"] == data_md5(setup.author)
    assert_consistent(setup.deploy, record, outcome)
    log = repro_logs(setup.deploy)[-1].read_text()
    # `dvc repro evaluate`, the decision, then `dvc repro compare`: compare's own registration
    # finds the challenger registered (same weights, same settings) and already champion.
    assert TRAIN_STAGE in log and "Running stage 'compare'" in log
    assert log.index(TRAIN_STAGE) < log.index("Running stage 'compare'")
    assert "version 1: already champion" in log
    assert versions(setup.deploy) == ["1"]


def test_no_new_data_is_up_to_date_quickly(setup):
    logs_before = repro_logs(setup.deploy)
    outcome = retrain_once(setup.deploy)
    assert outcome.code == retrain.EXIT_UP_TO_DATE, outcome.output
    assert "up to date" in outcome.output and "Running stage" not in outcome.output
    assert outcome.seconds < 40, outcome.seconds  # a few dvc/git calls and one registry lookup
    assert repro_logs(setup.deploy) == logs_before and len(records(setup.deploy)) == 1


def test_a_new_data_version_retrains_and_records_both_scores(setup):
    write_corpus(setup.author / "data" / "multi30k", train_pairs=600)
    run(setup.author, "dvc", "add", "data/multi30k")
    head = publish(setup, "corpus v2: 300 more training pairs")
    before = champion(setup.deploy)
    outcome = retrain_once(setup.deploy)
    assert outcome.code in (retrain.EXIT_PROMOTED, retrain.EXIT_NOT_PROMOTED), outcome.output
    record = records(setup.deploy)[-1]
    assert record["champion_before"] == before and record["champion"]["version"] == before
    assert record["data"]["dvc_data_hash"] == data_md5(setup.author) == data_md5(setup.deploy)
    assert record["data"]["git_commit"] == head
    assert record["challenger"]["dvc_data_hash"] == data_md5(setup.author)
    assert record["champion"]["dvc_data_hash"] != record["challenger"]["dvc_data_hash"]
    for side in ("challenger", "champion"):
        assert 0.0 <= record[side]["bleu"] <= 100.0
    assert_consistent(setup.deploy, record, outcome)
    prepared = json.loads((setup.deploy / "metrics" / "prepare.json").read_text())
    assert prepared["splits"]["train"]["rows_out"] > 300


def test_a_worse_challenger_is_not_promoted(setup):
    edit_params(setup, models__transformer__optim__lr=1e-7)
    publish(setup, "a learning rate that learns nothing: a worse model")
    before, count = champion(setup.deploy), len(versions(setup.deploy))
    outcome = retrain_once(setup.deploy)
    assert outcome.code == retrain.EXIT_NOT_PROMOTED, outcome.output
    record = records(setup.deploy)[-1]
    assert record["outcome"] == "not_promoted" and champion(setup.deploy) == before
    assert record["challenger"]["bleu"] < record["champion"]["bleu"] + record["margin_bleu"]
    assert_consistent(setup.deploy, record, outcome)
    assert len(versions(setup.deploy)) == count + 1  # registered for the record, not promoted


def test_a_killed_retrain_leaves_the_champion_and_a_stale_lock(setup):
    edit_params(setup, models__transformer__optim__lr=0.001, retrain__start="warm")
    publish(setup, "back to full training, warm start")
    before, known = champion(setup.deploy), versions(setup.deploy)
    count, logs_before = len(records(setup.deploy)), repro_logs(setup.deploy)
    process = nmt_retrain(setup.deploy)
    lock_file = setup.deploy / ".nmt-retrain.lock"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        new = [p for p in repro_logs(setup.deploy) if p not in logs_before]
        text = new[0].read_text() if new else ""
        if f"{TRANSFORMER}: warm" in text or f"{TRANSFORMER}: cold" in text:
            break  # the train stage has loaded its start weights: it is fitting now
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.5)
    else:
        pytest.fail("dvc repro never reached the train stage")
    time.sleep(0.5)  # in the middle of fitting (or, on a fast machine, just after it)
    holder = json.loads(lock_file.read_text())
    kill_groups(process.pid, holder["child_pgid"])  # retrain and its dvc repro, as an OOM kill
    process.communicate()
    assert champion(setup.deploy) == before and versions(setup.deploy) == known
    assert len(records(setup.deploy)) == count  # a killed run writes nothing more
    assert json.loads(lock_file.read_text())["pid"] == process.pid  # left behind, stale


def test_two_retrains_at_once_one_trains_the_other_is_locked(setup):
    before, count = champion(setup.deploy), len(records(setup.deploy))
    first, second = nmt_retrain(setup.deploy), nmt_retrain(setup.deploy)
    outputs = {p.pid: p.communicate(timeout=900)[0] for p in (first, second)}
    codes = {p.pid: p.returncode for p in (first, second)}
    locked_ones = [pid for pid, code in codes.items() if code == retrain.EXIT_LOCKED]
    assert len(locked_ones) == 1, "\n\n".join(f"exit {codes[p]}:\n{outputs[p]}" for p in codes)
    [locked] = locked_ones
    [ran] = [pid for pid in codes if pid != locked]
    assert "another retrain is running" in outputs[locked] and TRAIN_STAGE not in outputs[locked]
    assert codes[ran] in (retrain.EXIT_PROMOTED, retrain.EXIT_NOT_PROMOTED), outputs[ran]
    # The run that got the lock cleared the killed run's stale lock and carried on.
    assert "clearing stale lock" in outputs[ran]
    assert not (setup.deploy / ".nmt-retrain.lock").exists()
    new = records(setup.deploy)[count:]
    assert len(new) == 1 and new[0]["champion_before"] == before
    assert TRAIN_STAGE in (setup.deploy / new[0]["repro_log"]).read_text()
    assert_consistent(setup.deploy, new[0], Outcome(codes[ran], outputs[ran], 0.0))
    start = client(setup.deploy).get_run(new[0]["challenger"]["run_id"]).data.tags["train.start"]
    assert start.startswith(("warm: fine-tuning champion-v", "cold: the vocabulary changed"))


def test_warm_start_takes_the_champions_weights_only_when_they_fit(setup, tmp_path):
    import mlflow
    import torch
    from safetensors.torch import load_file

    from models import build_model
    from pipelines.data.vocab import Tokenizers
    from pipelines.training.export import warm_start

    folder = setup.deploy / "artifacts" / TRANSFORMER  # trained on the current vocabulary
    config = json.loads((folder / "config.json").read_text())
    tokenizers = Tokenizers.load(setup.deploy / "data" / "tokenized")

    def fresh(model_config):
        return build_model(model_config, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)

    model = fresh(config["model"])
    assert warm_start(model, folder, tokenizers, config["model"]).startswith("warm: ")
    for key, value in load_file(folder / "model.safetensors").items():
        assert torch.equal(model.state_dict()[key], value), key
    wider = dict(config["model"], d_ff=2 * config["model"]["d_ff"])
    assert warm_start(fresh(wider), folder, tokenizers, wider).startswith("cold: ")
    # Version 1 was trained on corpus v1, whose subword vocabulary differs from today's.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{setup.deploy / 'mlruns' / 'mlflow.db'}")
    try:
        first = registry.download_model_folder(f"models:/{MODEL}/1", tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)
    model = fresh(config["model"])
    before = {key: value.clone() for key, value in model.state_dict().items()}
    start = warm_start(model, first, tokenizers, config["model"])
    assert start.startswith("cold: the vocabulary changed"), start
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_a_failed_retrain_changes_nothing_and_says_so(setup):
    edit_params(setup, evaluate__beam_size=3)
    publish(setup, "wider beam")
    params_file = setup.deploy / "params.yaml"
    params_file.write_text(params_file.read_text() + "# a local edit: git pull cannot go on\n")
    before, known = champion(setup.deploy), versions(setup.deploy)
    count = len(records(setup.deploy))
    try:
        outcome = retrain_once(setup.deploy)
    finally:
        git(setup.deploy, "checkout", "--", "params.yaml")
    assert outcome.code == retrain.EXIT_FAILED, outcome.output
    assert "retrain failed: `git pull --ff-only --quiet` failed" in outcome.output
    assert champion(setup.deploy) == before and versions(setup.deploy) == known
    assert not (setup.deploy / ".nmt-retrain.lock").exists()
    [record] = records(setup.deploy)[count:]
    assert record["outcome"] == "failed" and record["exit_code"] == retrain.EXIT_FAILED
    assert "git pull" in record["reason"]
