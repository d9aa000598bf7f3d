"""The study's fits: power laws recovered from timings, and where two cost curves cross."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.study.fits import (
    PowerLaw,
    crossing,
    fit_power_law,
    power_law_crossing,
    upper_half,
)

LENGTHS = [16, 32, 64, 128, 256, 512, 1024]


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0, 2.0, -0.3])
def test_fit_recovers_a_known_exponent_from_noisy_timings(exponent):
    rng = np.random.default_rng(7)
    noise = np.exp(rng.normal(0.0, 0.03, len(LENGTHS)))  # ±3% multiplicative timing noise
    timings = [2e-4 * n**exponent * k for n, k in zip(LENGTHS, noise, strict=True)]
    fitted = fit_power_law(LENGTHS, timings)
    assert fitted.exponent == pytest.approx(exponent, abs=0.03)
    assert fitted.coefficient == pytest.approx(2e-4, rel=0.2)


def test_fit_is_exact_on_exact_power_laws():
    fitted = fit_power_law(LENGTHS, [3.0 * n**1.7 for n in LENGTHS])
    assert fitted.exponent == pytest.approx(1.7, abs=1e-12)
    assert fitted.coefficient == pytest.approx(3.0, rel=1e-9)
    assert fitted(100) == pytest.approx(3.0 * 100**1.7, rel=1e-9)


def test_fit_of_a_quadratic_cost_tends_to_its_order_over_the_upper_half():
    """a·n + b·n² looks linear at short lengths and quadratic at long ones."""
    cost = [1000.0 * n + n * n for n in LENGTHS]
    top = upper_half(LENGTHS)
    assert [LENGTHS[i] for i in top] == [128, 256, 512, 1024]
    whole = fit_power_law(LENGTHS, cost).exponent
    upper = fit_power_law([LENGTHS[i] for i in top], [cost[i] for i in top]).exponent
    assert 1.0 < whole < upper < 2.0


@pytest.mark.parametrize(
    ("xs", "ys", "message"),
    [
        ([1, 2], [1.0], "2 x values but 1 y values"),
        ([4, 4], [1.0, 2.0], "two or more distinct x values"),
        ([1, 2], [1.0, 0.0], "positive values"),
    ],
)
def test_fit_rejects_what_it_cannot_fit(xs, ys, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(xs, ys)


def test_upper_half_keeps_the_two_largest_of_few_points():
    assert upper_half([64, 16]) == [0, 1]
    assert upper_half([16, 32, 64]) == [1, 2]


def test_crossing_is_interpolated_on_log_log_axes():
    xs = [16, 32, 64, 128]
    rising = [n**2 for n in xs]  # meets the constant 64² = 4096 exactly at n = 64
    assert crossing(xs, rising, [4096.0] * 4) == pytest.approx(64.0)
    # between points: n² = 2000 at n = √2000, between 32 and 64
    assert crossing(xs, rising, [2000.0] * 4) == pytest.approx(math.sqrt(2000), rel=1e-9)


def test_crossing_is_none_when_the_first_curve_never_rises_to_the_second():
    xs = [16, 32, 64]
    assert crossing(xs, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) is None
    assert crossing(xs, [3.0, 2.0, 1.0], [2.0, 2.0, 2.0]) is None  # falls, does not rise


def test_power_law_crossing():
    linear, constant = PowerLaw(1.0, 2.0), PowerLaw(0.0, 512.0)
    assert power_law_crossing(linear, constant) == pytest.approx(256.0)
    assert power_law_crossing(linear, PowerLaw(1.0, 5.0)) is None
    # Nearly equal exponents put the crossing beyond any float: no crossing, no OverflowError.
    assert power_law_crossing(PowerLaw(0.500001, 1.0), PowerLaw(0.5, 2.0)) is None
