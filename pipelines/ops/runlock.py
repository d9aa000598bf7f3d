"""A one-run-at-a-time lock file: created with ``O_CREAT | O_EXCL``, the holder's details inside.

The file holds the holder's pid, host, process start time and start date (JSON). A lock whose
holder is gone (same host, pid not running, or the pid now belongs to another process) is stale:
it is cleared, with a log line, and taken. Checking and clearing happen under ``flock`` on the
lock's folder, so two processes that find the same stale lock cannot both take it. A lock held on
another host is never cleared automatically: its pid means nothing here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_write_text

log = logging.getLogger("nmt.lock")


class LockHeld(Exception):
    """Another live process holds the lock; the message says who and since when."""


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and brackets: split after its closing bracket.
    return stat.rsplit(")", 1)[1].split()


def process_start_ticks(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to detect pid reuse."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _running(fields: list[str]) -> bool:
    return fields[0] not in ("Z", "X")  # a zombie is dead, merely not yet reaped


def process_alive(pid: int) -> bool:
    """Whether `pid` runs; a killed process that nobody has reaped yet (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    fields = _stat_fields(pid)
    return fields is None or _running(fields)


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a running member; zombies do not count.

    A killed group whose members were orphaned stays visible to ``killpg`` as zombies until
    someone reaps them, and in a container whose pid 1 does not reap, that is never.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # cannot look closer: assume alive
    for entry in proc.iterdir():
        fields = _stat_fields(entry.name) if entry.name.isdigit() else None
        if fields and int(fields[2]) == pgid and _running(fields):
            return True
    return False


def stale_reason(holder: dict[str, Any] | None) -> str | None:
    """Why the lock of `holder` is stale, or None when it may be alive (or cannot be told)."""
    if holder is None:
        return "the lock file is empty or unreadable (its writer died while creating it)"
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", 0))
    if pid <= 0 or not process_alive(pid):
        reason = f"pid {pid} is not running on {holder.get('host')}"
    elif holder.get("pid_start") and process_start_ticks(pid) not in (None, holder["pid_start"]):
        reason = f"pid {pid} now belongs to another process"
    else:
        return None
    # A child process group (e.g. `dvc repro`) that outlived its parent still owns the workspace.
    child = holder.get("child_pgid")
    if child and group_alive(int(child)):
        return None
    return reason


def describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process"
    text = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    if holder.get("child_pgid"):
        text += f", child process group {holder['child_pgid']}"
    return text


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """Serialise lock takeovers between cooperating processes (flock on the folder itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class RunLock:
    """``with RunLock(path):`` holds the lock for the block; raises :class:`LockHeld` if taken."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self.holder: dict[str, Any] = {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.holder = {
            "pid": pid,
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pid_start": process_start_ticks(pid),
        }
        with _folder_locked(self.path.parent):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                reason = stale_reason(holder)
                if reason is None:
                    raise LockHeld(f"{self.path} is held by {describe(holder)}") from None
                log.warning("clearing stale lock %s (%s): %s", self.path, describe(holder), reason)
                self.path.unlink()
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.holder, handle)
                handle.flush()
                os.fsync(handle.fileno())

    def update(self, **fields: Any) -> None:
        """Add details to the held lock (e.g. a child's process group); replaced atomically."""
        self.holder.update(fields)
        atomic_write_text(self.path, json.dumps(self.holder))

    def release(self) -> None:
        """Remove the lock file, but only while it is still ours."""
        with _folder_locked(self.path.parent):
            holder = read_holder(self.path)
            if holder and holder.get("pid") == self.holder.get("pid"):
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
