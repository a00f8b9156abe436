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


# ---- warm-up edge cases (sec. 4.2 says "until the training error is below 80%") ----------------


def test_warmup_ends_strictly_below_80_not_at_80():
    s = LRSchedule(lr=0.1, milestones=(32000, 48000), warmup_lr=0.01, warmup_until_error=80.0)
    s.observe_train_error(100, 80.0)  # "below 80%": 80.0 itself keeps warming up
    assert s.lr(100) == pytest.approx(0.01)
    s.observe_train_error(150, 79.99)
    assert s.lr(150) == pytest.approx(0.1) and s.warmup_ended_at == 150 and not s.warmup_capped
    assert s.end_warmup_if_due(32000) is None  # already over: nothing to warn about


def test_warmup_that_never_reaches_80_ends_at_the_first_milestone_with_a_warning():
    s = LRSchedule(lr=0.1, milestones=(32000, 48000), warmup_lr=0.01, warmup_until_error=80.0)
    for it in range(0, 32000, 50):
        assert s.end_warmup_if_due(it) is None
        s.observe_train_error(it, 90.0)  # never below 80%
        assert s.lr(it) == pytest.approx(0.01)
    warning = s.end_warmup_if_due(32000)
    assert warning and "32000" in warning and "80%" in warning
    assert s.warmup_ended_at == 32000 and s.warmup_capped and not s.warming_up
    # From here the paper's schedule as if no warm-up had happened: 0.1/10 at 32k, /100 at 48k.
    assert s.lr(32000) == pytest.approx(0.01)
    assert s.lr(47999) == pytest.approx(0.01)
    assert s.lr(48000) == pytest.approx(0.001)
    assert s.end_warmup_if_due(32001) is None  # warned once


def test_warmup_lr_is_not_used_past_the_first_milestone_even_before_the_loop_ends_it():
    s = LRSchedule(lr=0.1, milestones=(500, 800), warmup_lr=0.01)
    assert s.lr(499) == pytest.approx(0.01)
    assert s.lr(500) == pytest.approx(0.01)  # 0.1 / 10, the schedule's value
    assert s.lr(800) == pytest.approx(0.001)  # the old bug kept 0.01 here


def test_warmup_with_plateau_ends_at_the_first_division():
    s = LRSchedule(lr=0.1, schedule="plateau", patience=1, warmup_lr=0.01)
    s.observe_test_error(90.0)
    s.observe_test_error(90.0)  # one evaluation without improvement: the first division
    assert s.end_warmup_if_due(1000) is not None
    assert s.lr(1000) == pytest.approx(0.01)  # 0.1 / 10


def test_warmup_state_survives_a_checkpoint_and_older_checkpoints_load():
    a = LRSchedule(lr=0.1, milestones=(10,), warmup_lr=0.01)
    a.end_warmup_if_due(10)
    b = LRSchedule(lr=0.1, milestones=(10,), warmup_lr=0.01)
    b.load_state_dict(a.state_dict())
    assert b.warmup_capped and not b.warming_up
    old = {k: v for k, v in a.state_dict().items() if k != "warmup_capped"}
    c = LRSchedule(lr=0.1, milestones=(10,), warmup_lr=0.01)
    c.load_state_dict(old)
    assert c.warmup_capped is False


# ---- the plateau rule: threshold and cap (the paper leaves both open; docs/fidelity.md) ----------


def test_plateau_threshold_needs_a_real_improvement():
    s = LRSchedule(lr=0.1, schedule="plateau", patience=2, threshold=0.1)
    for err in (30.0, 29.95, 29.91):  # improvements of 0.05 and 0.09 points: below the threshold
        s.observe_test_error(err)
    assert s.lr(0) == pytest.approx(0.01)


def test_plateau_stops_dividing_after_max_drops():
    s = LRSchedule(lr=0.1, schedule="plateau", patience=1, max_drops=2)
    for _ in range(20):
        s.observe_test_error(50.0)  # a flat error forever
    assert s.decays == 2 and s.lr(0) == pytest.approx(0.001)
