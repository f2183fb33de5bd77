"""Cosine schedule with linear warmup to a floor, including its edge cases."""
from __future__ import annotations

import math

import pytest

from wikigpt_core.train.schedule import CosineSchedule


def test_warmup_is_linear_and_never_zero():
    s = CosineSchedule(lr=1.0, warmup_steps=10, max_steps=100, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1)
    assert s(4) == pytest.approx(0.5)
    assert s(9) == pytest.approx(1.0)


def test_peak_midpoint_and_floor():
    s = CosineSchedule(lr=6e-4, warmup_steps=10, max_steps=110, min_ratio=0.1)
    assert s(10) == pytest.approx(6e-4)  # decay starts at the peak
    assert s(60) == pytest.approx(6e-5 + (6e-4 - 6e-5) * 0.5)  # halfway: mean of peak and floor
    assert s(110) == pytest.approx(6e-5)
    assert s(10_000) == pytest.approx(6e-5)  # past the end: stays at the floor
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_no_warmup_and_zero_floor():
    s = CosineSchedule(lr=2.0, warmup_steps=0, max_steps=4, min_ratio=0.0)
    assert [round(s(i), 6) for i in range(5)] == [2.0, round(1 + math.cos(math.pi / 4), 6), 1.0,
                                                   round(1 + math.cos(3 * math.pi / 4), 6), 0.0]


def test_warmup_longer_than_run_is_clamped_with_warning():
    with pytest.warns(UserWarning, match="clamping warmup"):
        s = CosineSchedule(lr=1.0, warmup_steps=50, max_steps=5)
    assert s.warmup_steps == 5
    assert s(4) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs", [dict(max_steps=0), dict(warmup_steps=-1), dict(min_ratio=1.5)])
def test_invalid_values_raise(kwargs):
    base = dict(lr=1.0, warmup_steps=1, max_steps=10, min_ratio=0.1) | kwargs
    with pytest.raises(ValueError):
        CosineSchedule(**base)
