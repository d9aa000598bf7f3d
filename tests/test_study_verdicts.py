"""Verdicts follow from the numbers by their rules, and a claim whose models learned nothing is
not judged."""

from __future__ import annotations

import pytest

from pipelines.study.claims import verdict_of_checks, verdict_of_margin
from pipelines.study.path import bottleneck_claim, path_claim

CHANCE = 1 / 16


@pytest.mark.parametrize(
    ("passed", "total", "verdict"),
    [(3, 3, "supported"), (0, 3, "not supported"), (1, 3, "mixed"), (0, 0, "not measured")],
)
def test_verdict_of_checks(passed, total, verdict):
    assert verdict_of_checks(passed, total) == verdict


@pytest.mark.parametrize(
    ("difference", "verdict"),
    [(0.3, "supported"), (0.1, "supported"), (0.05, "mixed"), (0.0, "not supported"),
     (-0.2, "not supported")],
)  # fmt: skip
def test_verdict_of_margin(difference, verdict):
    assert verdict_of_margin(difference, 0.1) == verdict


def ends(lstm_none, lstm_additive, transformer, convs2s=(1.0, 1.0)):
    """(nearest, farthest) accuracy per family."""
    return {
        "lstm_none": lstm_none,
        "lstm_additive": lstm_additive,
        "convs2s": convs2s,
        "transformer": transformer,
    }


def test_an_lstm_that_forgets_distant_tokens_supports_both_path_claims():
    measured = ends(lstm_none=(0.9, 0.2), lstm_additive=(0.95, 0.9), transformer=(0.99, 0.97))
    claim = path_claim(measured, CHANCE)
    assert claim.verdict == "supported"
    assert "LSTM, no attention 0.90 → 0.20" in claim.measured
    assert bottleneck_claim(measured, "84–99", CHANCE).verdict == "supported"


def test_when_distance_costs_every_model_alike_the_claims_are_not_supported():
    measured = ends(lstm_none=(0.9, 0.5), lstm_additive=(0.9, 0.5), transformer=(0.9, 0.5))
    assert path_claim(measured, CHANCE).verdict == "not supported"
    assert bottleneck_claim(measured, "84–99", CHANCE).verdict == "not supported"


def test_models_at_chance_even_nearby_leave_the_claims_unjudged():
    measured = ends(lstm_none=(0.06, 0.0), lstm_additive=(0.07, 0.0), transformer=(0.28, 0.26))
    claim = path_claim(measured, CHANCE)
    assert claim.verdict == "not measured"
    assert claim.measured.endswith(
        "— LSTM, no attention at chance (0.06) even at the nearest distances: too few "
        "study.steps to judge"
    )
    assert bottleneck_claim(measured, "84–99", CHANCE).verdict == "not measured"
