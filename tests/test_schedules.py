"""Learning-rate schedules: the published shapes, point by point."""

from __future__ import annotations

import math

import pytest

from w2vtools.train.schedules import make_schedule


def test_polynomial_warmup_then_linear_decay():
    s = make_schedule("polynomial", lr=5e-4, warmup_updates=32_000, total_updates=400_000)
    assert s(0) == 0.0
    assert s(16_000) == pytest.approx(2.5e-4)
    assert s(32_000) == pytest.approx(5e-4)
    # half-way through the decay: half the peak (power 1)
    assert s(32_000 + 184_000) == pytest.approx(2.5e-4)
    assert s(400_000) == 0.0
    assert s(500_000) == 0.0
    values = [s(n) for n in range(32_000, 400_001, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_polynomial_power_and_end_lr():
    s = make_schedule("polynomial", lr=1.0, warmup_updates=0, total_updates=100, power=2.0, end_lr=0.1)
    assert s(0) == pytest.approx(1.0)
    assert s(50) == pytest.approx(0.9 * 0.25 + 0.1)
    assert s(100) == pytest.approx(0.1)


def test_tri_stage_phases():
    peak, total = 3e-5, 20_000
    s = make_schedule("tri_stage", lr=peak, total_updates=total)
    assert s(0) == pytest.approx(0.01 * peak)
    assert s(1000) == pytest.approx(0.01 * peak + (peak - 0.01 * peak) * 0.5)  # half-way up the warm-up
    assert s(2000) == pytest.approx(peak)  # 10 % warm-up
    assert s(5000) == pytest.approx(peak)
    assert s(9999) == pytest.approx(peak)  # 40 % hold ends at 50 %
    # exponential decay: geometric mean of start and end at the half-way point
    assert s(15_000) == pytest.approx(peak * math.sqrt(0.05), rel=1e-6)
    assert s(20_000) == pytest.approx(0.05 * peak)
    assert s(30_000) == pytest.approx(0.05 * peak)


def test_fixed_and_cosine():
    f = make_schedule("fixed", lr=2e-5, warmup_updates=10, total_updates=1000)
    assert f(0) == 0.0 and f(5) == pytest.approx(1e-5) and f(10) == f(999) == pytest.approx(2e-5)
    c = make_schedule("cosine", lr=5e-3, warmup_updates=500, warmup_init_lr=1e-7, end_lr=1e-6, total_updates=400_500)
    assert c(0) == pytest.approx(1e-7)
    assert c(500) == pytest.approx(5e-3)
    assert c(500 + 200_000) == pytest.approx((5e-3 + 1e-6) / 2)
    assert c(400_500) == pytest.approx(1e-6)


def test_bad_schedules_rejected():
    with pytest.raises(ValueError, match="unknown lr schedule"):
        make_schedule("linear", lr=1.0, total_updates=10)
    with pytest.raises(ValueError, match="warmup_updates"):
        make_schedule("polynomial", lr=1.0, total_updates=10, warmup_updates=10)
    with pytest.raises(ValueError, match="phase_ratio"):
        make_schedule("tri_stage", lr=1.0, total_updates=10, phase_ratio=(0.5, 0.5, 0.5))
