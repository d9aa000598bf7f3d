"""`pipelines.training.phase_times.time_to_bleu`: when a run reached a validation BLEU, by phase."""

from __future__ import annotations

from pipelines.training.phase_times import time_to_bleu


def epoch(index: int, bleu: float | None, training: float, validation: float, other: float):
    return {
        "epoch": index,
        "training_s": training,
        "validation_s": validation,
        "other_s": other,
        "val_bleu": bleu,
        "val_bleu_at_s": 10.0 * index + training + validation,
    }


EPOCHS = [
    epoch(0, 0.5, 20.0, 9.0, 1.0),  # one-time costs: graph captures, the first validation
    epoch(1, 20.0, 0.5, 0.6, 0.4),
    epoch(2, None, 0.5, 0.5, 0.5),  # a validation without BLEU
    epoch(3, 38.2, 0.7, 0.5, 0.3),
    epoch(4, 39.0, 0.5, 0.5, 0.5),
]


def test_the_first_epoch_is_apart_and_the_later_ones_summed_up_to_the_one_that_reached_it():
    summary = time_to_bleu(EPOCHS, 38.0)
    assert summary["epoch"] == 3 and summary["seconds"] == EPOCHS[3]["val_bleu_at_s"]
    assert summary["first_epoch"] == {"training_s": 20.0, "validation_s": 9.0, "other_s": 1.0}
    assert summary["later_epochs"] == {"training_s": 1.7, "validation_s": 1.6, "other_s": 1.2}


def test_reached_at_the_first_epoch_has_no_later_epochs():
    summary = time_to_bleu(EPOCHS, 0.1)
    assert summary["epoch"] == 0
    assert summary["later_epochs"] == {"training_s": 0, "validation_s": 0, "other_s": 0}


def test_never_reached_is_none():
    assert time_to_bleu(EPOCHS, 40.0) is None
    assert time_to_bleu([], 1.0) is None
