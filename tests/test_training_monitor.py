"""The train stage's steady throughput: the median logging window after the first epoch a
process trains (where CUDA graphs capture each batch shape and kernels are planned)."""

from __future__ import annotations

from pipelines.training.callbacks import steady_rate


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
