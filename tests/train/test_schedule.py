"""The learning-rate rules against the paper's numbers (sec. 3.4, 4.2)."""

from __future__ import annotations

import pytest

from resnetlab.train import LRSchedule


def test_cifar_multistep_is_the_papers():
    # Sec. 4.2: 0.1, divided by 10 at 32k and 48k iterations.
    s = LRSchedule(lr=0.1, milestones=(32000, 48000))
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(31999) == pytest.approx(0.1)
    assert s.lr(32000) == pytest.approx(0.01)
    assert s.lr(47999) == pytest.approx(0.01)
    assert s.lr(48000) == pytest.approx(0.001)
    assert s.lr(63999) == pytest.approx(0.001)


def test_warmup_until_training_error_below_80_then_same_schedule():
    # Sec. 4.2, 110 layers: 0.01 until the training error is below 80%, then 0.1 and the same schedule.
    s = LRSchedule(lr=0.1, milestones=(32000, 48000), warmup_lr=0.01, warmup_until_error=80.0)
    assert s.lr(0) == pytest.approx(0.01)
    s.observe_train_error(200, 85.0)
    assert s.lr(200) == pytest.approx(0.01)
    s.observe_train_error(400, 79.9)
    assert s.lr(400) == pytest.approx(0.1)
    assert s.warmup_ended_at == 400
    s.observe_train_error(450, 95.0)  # the warm-up never comes back
    assert s.lr(32000) == pytest.approx(0.01)


def test_plateau_divides_after_patience_evaluations_without_improvement():
    s = LRSchedule(lr=0.1, schedule="plateau", patience=2)
    for err in (50.0, 40.0, 41.0):
        s.observe_test_error(err)
    assert s.lr(10**6) == pytest.approx(0.1)  # one evaluation without improvement: not yet
    s.observe_test_error(40.0)  # equal is not an improvement
    assert s.lr(0) == pytest.approx(0.01)
    s.observe_test_error(39.0)
    s.observe_test_error(39.5)
    s.observe_test_error(39.5)
    assert s.lr(0) == pytest.approx(0.001)


def test_linear_scaling_applies_to_lr_and_warmup():
    s = LRSchedule(lr=0.1, milestones=(10,), warmup_lr=0.01, scale=1024 / 256)
    assert s.lr(0) == pytest.approx(0.04)
    s.observe_train_error(5, 10.0)
    assert s.lr(5) == pytest.approx(0.4)
    assert s.lr(10) == pytest.approx(0.04)


def test_state_round_trip():
    a = LRSchedule(lr=0.1, schedule="plateau", patience=1, warmup_lr=0.01)
    a.observe_train_error(7, 10.0)
    a.observe_test_error(30.0)
    a.observe_test_error(31.0)
    b = LRSchedule(lr=0.1, schedule="plateau", patience=1, warmup_lr=0.01)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b.lr(100) == a.lr(100) == pytest.approx(0.01)
