"""When one process of a multi-process run dies, the others stop too, soon and with one clear
line, and the run stays resumable (``dvc repro`` or the same command continues from
``last.ckpt``).

Lightning's launcher already watches the ranks it starts: when one exits with an error, it kills
the others within about 5 s. Two cases remain, and this module covers them:

- The launching process (rank 0) dies. The ranks it started would wait in their next collective
  until the backend's timeout (NCCL: 10 minutes). `watch_parent` makes each of them notice
  within a second that its parent is gone, say so, and exit.
- A peer vanishes while a rank is inside a collective. The backend raises (gloo: "Connection
  reset by peer"; NCCL: a ``DistBackendError``); `peer_lost` recognises it, so the stage reports
  one line instead of a traceback from deep inside the backward pass.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import torch.distributed as dist

EXIT_PEER_LOST = 3
_GLOO_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def peer_lost(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another rank is gone."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _GLOO_PEER_GONE)


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message (backend errors run to many lines)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def watch_parent(rank: int, resume_hint: str, period_s: float = 1.0) -> threading.Thread:
    """Exit this process (status 3) with one line on stderr as soon as its parent is gone.

    For ranks started by another process (Lightning's launcher, torchrun, srun): a rank whose
    launcher died is re-parented, so its parent process id changes. Returns the daemon thread.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period_s)
        sys.stderr.write(
            f"error: rank {rank}: the process that launched it (pid {parent}) is gone; "
            f"stopping. {resume_hint}\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_PEER_LOST)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread
