"""The commands a retraining pass runs: short ones (git, dvc) with their output checked, and the
long `dvc repro` logged to a file in its own process group, stopped as a whole on any failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipelines.ops.runlock import RunLock

TAIL_LINES = 30


class RetrainError(Exception):
    """A step of the retraining pass failed; the message says which and why."""


def command(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a short command (git, dvc) in `root`; a failure is a RetrainError with its output."""
    argv = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True)
    if check and done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RetrainError(f"`{' '.join(args)}` failed: " + " / ".join(output))
    return done


def run_logged(
    root: Path, argv: list[str], log_file: Path, env: dict[str, str], lock: RunLock
) -> None:
    """Run a long command with its output in `log_file`, in its own process group.

    The group is recorded in the lock, so a later run can tell an orphaned pipeline from a dead
    one; on any exception here (a signal included) the whole group is stopped.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        lock.update(child_pgid=process.pid)
        try:
            returncode = process.wait()
        except BaseException:
            stop_group(process)
            raise
    if returncode != 0:
        lines = log_file.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        raise RetrainError(
            f"`{' '.join(argv[2:])}` failed with exit code {returncode}; see {log_file}:\n"
            + "\n".join(lines)
        )


def stop_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the process group of `process`; SIGKILL if it is not gone after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def git_has_upstream(root: Path) -> bool:
    done = command(root, "git", "rev-parse", "--abbrev-ref", "@{upstream}", check=False)
    return done.returncode == 0
