"""The real train stage (``pipelines.stages.train``) with a wall-clock budget, for benchmark sessions.

Lightning's ``Timer`` callback is added to the stage's own Trainer: when the budget is spent,
training stops at the end of the current epoch and the stage goes on as usual (best checkpoint by
validation BLEU, optional checkpoint averaging, export, summary). Everything else is the stage
unchanged, so ``python -m benchmarks.train_budget --budget-s 300 --arch X --params P`` trains
exactly what ``python -m pipelines.stages.train --arch X --params P`` trains, only possibly shorter.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from lightning.pytorch.callbacks import Timer

from pipelines.stages import train as stage


def with_budget(seconds: float):
    """A replacement for ``pipelines.stages.train.build_trainer`` that adds a Timer of `seconds`."""
    original = stage.build_trainer

    def build_trainer(*args, **kwargs):
        trainer, monitor, checkpoint = original(*args, **kwargs)
        trainer.callbacks.append(Timer(duration=timedelta(seconds=seconds), interval="epoch"))
        return trainer, monitor, checkpoint

    return build_trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_budget",
        description="pipelines.stages.train with a wall-clock budget; other arguments go to the stage.",
    )
    parser.add_argument("--budget-s", type=float, required=True, help="training seconds")
    args, rest = parser.parse_known_args(argv)
    stage.build_trainer = with_budget(args.budget_s)
    stage.main(rest)


if __name__ == "__main__":
    main()
