"""Lightning's per-step SIGTERM check under DDP, on the host instead of the GPU.

Since Lightning 2.5.2 (Lightning-AI/pytorch-lightning#20825) every training step of a DDP run
starts by broadcasting rank 0's "received SIGTERM" flag as a tensor on the training device and
reading it back with ``.item()``, so that all ranks stop at the same step. On CUDA that is a
host-device synchronisation per step (the reported cost: Lightning-AI/pytorch-lightning#21487):
the host waits for the GPU to finish all queued work, and the GPU then idles while the host
prepares the next step. Measured on two H200s (benchmarks/README.md): two
``cudaStreamSynchronize`` calls per step, and 22.8 ms a ``transformer_base`` step at 8k tokens
against 17.4 ms on one GPU.

`HostSigtermCheck` keeps the protocol and moves it to a process group of the gloo backend, over
CPU tensors: no GPU work, no synchronisation. Lightning's protocol has two halves that meet: the
per-step check on every rank, and the broadcast of a 1 that Lightning's SIGTERM handler makes
(on rank 0 it meets the other ranks' next check). Both halves move together, or neither does:
the check where Lightning's handler is the one installed, its handler replaced by the same
function over the gloo group.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

METHOD = "_broadcast_sigterm_tensor"  # Lightning's training epoch loop's per-step check


class HostSigtermCheck(pl.Callback):
    """Moves the training loop's per-step SIGTERM broadcast, and the one of Lightning's SIGTERM
    handler, to a gloo group, on every rank of a multi-process run on one machine. `checks`
    counts the per-step broadcasts (one per training batch)."""

    def __init__(self) -> None:
        self.checks = 0
        self._group: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # One machine only: across machines gloo needs its own network set-up (interfaces,
        # ports), which a run that works over NCCL may not have; there Lightning's check stays.
        several = trainer.world_size > 1 and dist.is_initialized()
        if stage == "fit" and several and trainer.num_nodes == 1:
            self._group = dist.new_group(backend="gloo")  # every rank runs setup, in step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._group is None:
            return
        loop = trainer.fit_loop.epoch_loop
        handler = signal.getsignal(signal.SIGTERM)
        notifier = trainer._signal_connector._sigterm_notifier_fn
        handlers = getattr(handler, "signal_handlers", [])
        if not hasattr(loop, METHOD) or notifier not in handlers:
            log.info("SIGTERM: Lightning's check left as it is (not the protocol this moves)")
            return
        handlers[handlers.index(notifier)] = lambda signum, frame: self._notify(trainer, signum)
        setattr(loop, METHOD, lambda: self._check(trainer))

    def _notify(self, trainer: pl.Trainer, signum: int) -> None:
        """Lightning's SIGTERM handler (``_SignalConnector._sigterm_notifier_fn``), over gloo."""
        connector = trainer._signal_connector
        log.info("rank %d: received SIGTERM (%d)", trainer.global_rank, signum)
        if not connector.received_sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        dist.broadcast(torch.tensor([1]), src=0, group=self._group)
        connector.received_sigterm = True

    def _check(self, trainer: pl.Trainer) -> None:
        """The loop's check (``_TrainingEpochLoop._broadcast_sigterm_tensor``), over gloo."""
        flag = torch.tensor([int(trainer.received_sigterm)])
        dist.broadcast(flag, src=0, group=self._group)
        self.checks += 1
        if flag.item() == 1:
            with contextlib.suppress(Exception):
                dist.barrier(group=self._group)
            raise SIGTERMException()
