"""Real servers in tests: start one on a free loopback port, wait for it, stop it by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop the server and everything it started (its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_server(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    ready_url: str,
    log_file: Path,
    timeout_s: float = 120,
) -> Iterator[subprocess.Popen]:
    """Run `command` in a session of its own until `ready_url` answers 200; stop it on exit."""
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not answers(ready_url):
            if process.poll() is not None:
                pytest.fail(
                    f"{' '.join(command)} exited {process.returncode}:\n{log_file.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{ready_url}: no answer in {timeout_s:g} s:\n{log_file.read_text()}")
            time.sleep(1)
        yield process
    finally:
        stop(process)
