"""The Eventhouse destination's own pacing (shared/engine/kusto_pacing.py)."""

from __future__ import annotations

import pytest

from shared.contracts import PushResult, Target
from shared.engine.kusto_pacing import KustoPacing
from shared.engine.retry import Deadline
from shared.errors import TransientError
from tests.unit.fakes import FakeClock


def test_a_throttling_pause_is_waited_out_by_the_next_caller() -> None:
    clock = FakeClock(100.0)
    pacing = KustoPacing(clock=clock, sleep=clock.sleep)
    with pacing.slot() as waited:
        assert waited == 0.0
    pacing.pause(5.0)
    pacing.pause(2.0)  # a shorter pause never shortens a longer one
    with pacing.slot() as waited:
        assert waited == 5.0
    assert clock.sleeps == [5.0]


def test_a_pause_past_the_deadline_is_not_taken() -> None:
    clock = FakeClock()
    pacing = KustoPacing(clock=clock, sleep=clock.sleep)
    pacing.pause(30.0)
    with pytest.raises(TransientError) as caught, pacing.slot(Deadline.after(10.0, clock)):
        pass
    assert caught.value.retry_after == 30.0 and not caught.value.maybe_delivered
    assert clock.sleeps == []


def test_slots_are_capped_and_given_back() -> None:
    clock = FakeClock()
    pacing = KustoPacing(1, clock=clock, sleep=clock.sleep)
    with pacing.slot(), pytest.raises(TransientError), pacing.slot(Deadline.after(0.0, clock)):
        pass  # the one slot is held: a second caller with no time left is refused
    with pacing.slot() as waited:  # given back
        assert waited == 0.0


def test_a_result_lists_each_destination_without_repeating_the_target() -> None:
    target = Target("Sales", "Product")
    top = PushResult(target, received=3, sent=3)
    other = PushResult(target, received=3, sent=1, stopped="throttled")
    assert "destinations" not in top.to_json()  # one destination: today's answer, unchanged
    top.destinations = {"powerbi": top, "eventhouse": other}
    summary = top.to_json()
    assert summary["sent"] == 3
    assert summary["destinations"]["eventhouse"]["unsent"] == 2
    assert summary["destinations"]["eventhouse"]["stopped"] == "throttled"
    assert "target" not in summary["destinations"]["powerbi"]
