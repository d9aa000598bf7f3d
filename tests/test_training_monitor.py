"""The train stage's steady throughput: the median logging window after the first epoch a
process trains (where CUDA graphs capture each batch shape and kernels are planned)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from models import PAD_ID
from pipelines.training.callbacks import TrainingMonitor, steady_rate


def test_the_first_epoch_s_windows_are_left_out_and_the_median_taken():
    rates = [10.0, 20.0, 300.0, 100.0, 200.0, 900.0]
    epochs = [0, 0, 1, 1, 2, 2]
    assert steady_rate(rates, epochs, first_epoch=0) == (200.0 + 300.0) / 2
    assert steady_rate(rates[:5], epochs[:5], first_epoch=0) == 200.0  # odd count: the middle


def test_a_resumed_process_counts_from_its_own_first_epoch():
    rates, epochs = [50.0, 400.0, 410.0, 420.0], [3, 3, 4, 4]  # resumed in epoch 3
    assert steady_rate(rates, epochs, first_epoch=3) == 415.0


def test_no_window_after_the_first_epoch_gives_none():
    assert steady_rate([10.0, 20.0], [0, 0], first_epoch=0) is None
    assert steady_rate([], [], first_epoch=0) is None


def test_an_epoch_shorter_than_the_logging_interval_still_gives_a_window(tmp_path):
    """Windows close every `log_every_n_steps` batches and at each epoch's last batch: 5 batches
    an epoch under an interval of 50 still give one rate per epoch, counting every token."""
    monitor = TrainingMonitor(tmp_path / "history.csv", log_every_n_steps=50)
    logged: list[float] = []
    module = SimpleNamespace(
        device=torch.device("cpu"), log=lambda _, rate, **__: logged.append(rate)
    )
    trainer = SimpleNamespace(
        num_training_batches=5,
        current_epoch=0,
        strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor),
    )
    batch = {"src": torch.tensor([[5, 6, PAD_ID]]), "tgt_out": torch.tensor([[7, PAD_ID, PAD_ID]])}
    for epoch in range(2):
        trainer.current_epoch = epoch
        before = time.perf_counter()
        monitor.on_train_epoch_start(trainer, module)
        started = time.perf_counter()
        for index in range(5):
            last_call = time.perf_counter()
            monitor.on_train_batch_end(trainer, module, None, batch, index)
        after = time.perf_counter()
    assert monitor.window_epochs == [0, 1]
    # 5 batches of 3 real tokens, in a window from the epoch's start into its last batch's hook.
    assert 15 / (after - before) <= monitor.tokens_per_sec[-1] <= 15 / (last_call - started)
    assert logged == monitor.tokens_per_sec
    assert monitor.steady_tokens_per_sec() is None  # no on_train_start: no first epoch known
