"""Reward-hacking / format-collapse monitor on synthetic reward sequences."""

import pytest

from r1vflow.rl.monitor import RewardMonitor, window_rise


def feed(monitor, accuracy, formats, rm=None):
    """Feed per-step means; returns the list of statuses."""
    rm = rm or [None] * len(accuracy)
    steps = zip(accuracy, formats, rm, strict=True)
    return [monitor.update(i + 1, a, f, r) for i, (a, f, r) in enumerate(steps)]


def test_window_rise_hand_values():
    assert window_rise([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.0)  # 3.5 - 1.5
    assert window_rise([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(3.0)  # middle value unused
    assert window_rise([0.5, 0.5]) == 0.0
    with pytest.raises(ValueError, match=">= 2 values"):
        window_rise([1.0])


def test_rm_rising_while_accuracy_flat_flags_hacking_only_after_a_full_window():
    mon = RewardMonitor(window=4, rm_rise=0.2, format_drop=0.3)
    statuses = feed(mon, [0.5] * 5, [1.0] * 5, rm=[0.0, 0.2, 0.4, 0.6, 0.8])
    assert [s.flags["reward_hacking"] for s in statuses] == [False, False, False, True, True]
    # window [0, .2, .4, .6]: rise = 0.5 - 0.1 = 0.4
    assert statuses[3].metrics["rm_rise"] == pytest.approx(0.4)
    assert statuses[3].metrics["accuracy_rise"] == pytest.approx(0.0)
    assert statuses[3].metrics["reward_hacking"] == 1.0
    assert not any(s.stop for s in statuses)  # flags only: stop_on_flag is off
    assert "reward_hacking: reward-model score rose by 0.400" in statuses[3].messages[0]


def test_rm_rising_with_accuracy_rising_is_not_hacking():
    mon = RewardMonitor(window=4, rm_rise=0.2, format_drop=0.3)
    statuses = feed(mon, [0.1, 0.2, 0.3, 0.4], [1.0] * 4, rm=[0.0, 0.2, 0.4, 0.6])
    assert statuses[-1].flags["reward_hacking"] is False
    assert statuses[-1].metrics["accuracy_rise"] == pytest.approx(0.2)


def test_small_rm_rise_or_no_rm_is_not_hacking():
    mon = RewardMonitor(window=4, rm_rise=0.5, format_drop=0.3)
    assert not feed(mon, [0.5] * 4, [1.0] * 4, rm=[0.0, 0.2, 0.4, 0.6])[-1].flags["reward_hacking"]
    mon = RewardMonitor(window=2, rm_rise=0.0, format_drop=0.3)
    statuses = feed(mon, [0.5] * 4, [1.0] * 4)  # no reward model: the signal does not exist
    assert not any(s.flags["reward_hacking"] for s in statuses)
    assert "rm_rise" not in statuses[-1].metrics


def test_format_collapse_is_a_drop_from_the_best_window():
    mon = RewardMonitor(window=4, rm_rise=0.2, format_drop=0.3)
    statuses = feed(mon, [0.5] * 7, [1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.2])
    # window means: 1.0, 0.8, 0.6, 0.4 -> drops 0, 0.2, 0.4, 0.6
    assert [round(s.metrics.get("format_drop", -1), 6) for s in statuses] == [
        -1, -1, -1, 0.0, 0.2, 0.4, 0.6]
    assert [s.flags["format_collapse"] for s in statuses] == [False] * 5 + [True, True]


def test_format_rising_from_a_low_start_is_not_collapse():
    mon = RewardMonitor(window=2, rm_rise=0.2, format_drop=0.1)
    statuses = feed(mon, [0.0] * 5, [0.0, 0.1, 0.5, 0.9, 1.0])
    assert not any(s.flags["format_collapse"] for s in statuses)


def test_stop_after_patience_consecutive_flags_with_a_reason():
    mon = RewardMonitor(window=2, rm_rise=0.1, format_drop=0.3, stop_on_flag=True, patience=2)
    statuses = feed(mon, [0.5] * 4, [1.0] * 4, rm=[0.0, 0.5, 1.0, 1.5])
    assert [s.stop for s in statuses] == [False, False, True, True]
    reason = statuses[2].reason
    assert reason.startswith("step 3: stopped early on reward_hacking")
    assert "threshold 0.1" in reason


def test_streak_resets_when_the_flag_clears():
    mon = RewardMonitor(window=2, rm_rise=0.1, format_drop=0.3, stop_on_flag=True, patience=2)
    statuses = feed(mon, [0.5, 0.5, 0.5, 1.0, 1.0], [1.0] * 5, rm=[0.0, 0.5, 0.5, 1.0, 1.0])
    # step 2: hacking (rm +0.5, acc 0); step 3: rm flat -> clears; step 4: acc rises -> no flag
    assert [s.flags["reward_hacking"] for s in statuses] == [False, True, False, False, False]
    assert not any(s.stop for s in statuses)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"window": 1}, "window must be >= 2"), ({"patience": 0}, "patience must be >= 1"),
     ({"rm_rise": -0.1}, "must be >= 0")],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"window": 4, "rm_rise": 0.2, "format_drop": 0.3, **kwargs}
    with pytest.raises(ValueError, match=match):
        RewardMonitor(**args)


def test_rm_accuracy_gap_is_the_mpo_threshold():
    """Windowed mean RM score minus windowed accuracy above the threshold flags and stops."""
    monitor = RewardMonitor(window=2, rm_rise=10.0, format_drop=1.0, stop_on_flag=True,
                            patience=1, rm_accuracy_gap=0.3)
    first = monitor.update(1, accuracy=0.5, format_rate=1.0, rm_score=0.7)
    assert not first.flags["rm_accuracy_gap"]  # window not full yet
    ok = monitor.update(2, accuracy=0.5, format_rate=1.0, rm_score=0.8)
    assert ok.metrics["rm_accuracy_gap_value"] == pytest.approx(0.25)  # 0.75 - 0.5
    assert not ok.stop
    hacked = monitor.update(3, accuracy=0.3, format_rate=1.0, rm_score=0.9)
    assert hacked.metrics["rm_accuracy_gap_value"] == pytest.approx(0.45)  # 0.85 - 0.4
    assert hacked.flags["rm_accuracy_gap"] and hacked.stop
    assert "rm_accuracy_gap" in hacked.reason and "threshold 0.3" in hacked.reason


def test_rm_accuracy_gap_off_by_default():
    monitor = RewardMonitor(window=2, rm_rise=10.0, format_drop=1.0)
    for step in (1, 2, 3):
        status = monitor.update(step, accuracy=0.0, format_rate=1.0, rm_score=1.0)
    assert not status.flags["rm_accuracy_gap"]
    assert "rm_accuracy_gap_value" not in status.metrics
