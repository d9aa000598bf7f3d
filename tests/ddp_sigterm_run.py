"""Two-process Lightning DDP (CPU, gloo) for tests/test_sigterm.py: rank 0 sends itself SIGTERM
after training step `STEP`, as a scheduler or ``kill`` would; Lightning forwards it to the other
rank. With `host`, the per-step SIGTERM check runs through `HostSigtermCheck`; with `lightning`,
through Lightning's own. Every rank writes ``<out>/<mode>-rank<r>.json``: the step it stopped at,
the exception that stopped it and the checks `HostSigtermCheck` made.

    python -m tests.ddp_sigterm_run <out> <host|lightning>
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from pipelines.training.sigterm import HostSigtermCheck
from tests.training_helpers import quiet_trainer

STEP = 3


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.mse_loss(self.net(inputs), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SigtermAtStep(pl.Callback):
    def __init__(self, out: Path, mode: str, check: HostSigtermCheck | None) -> None:
        self.out, self.mode, self.check = out, mode, check

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == 0 and trainer.global_step == STEP:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception) -> None:
        record = {
            "step": trainer.global_step,
            "exception": type(exception).__name__,
            "checks": self.check.checks if self.check else None,
        }
        path = self.out / f"{self.mode}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def main(out: Path, mode: str) -> None:
    pl.seed_everything(7)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(800, 4), torch.randn(800, 1)), batch_size=4
    )
    check = HostSigtermCheck() if mode == "host" else None
    callbacks = [_SigtermAtStep(out, mode, check), *([check] if check else [])]
    trainer = quiet_trainer(
        callbacks, precision="32-true", accelerator="cpu", devices=2, strategy="ddp", max_epochs=1
    )
    trainer.fit(_Regression(), data)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
