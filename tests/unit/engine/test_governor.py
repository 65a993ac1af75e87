"""Unit tests for shared.engine.governor: per-dataset pacing under Power BI's push quotas."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from shared.engine.governor import Governor, Quotas
from shared.engine.retry import Deadline
from shared.errors import TransientError
from tests.unit.fakes import FakeClock


def make_governor(quotas: Quotas | None = None) -> tuple[Governor, FakeClock]:
    clock = FakeClock()
    return Governor(quotas, clock=clock, sleep=clock.sleep), clock


def take(governor: Governor, dataset: str, rows: int = 1, deadline: Deadline | None = None) -> None:
    """Take one slot and release it at once (one POST that completes immediately)."""
    with governor.slot(dataset, rows, deadline=deadline):
        pass


def test_quota_defaults_are_the_documented_limits() -> None:
    """Quotas default to 120/min, 120/h for large tables, 5 pending, 1,000,000 rows/h."""
    quotas = Quotas()

    assert quotas.posts_per_minute == 120
    assert quotas.posts_per_hour_large_table == 120
    assert quotas.max_pending == 5
    assert quotas.rows_per_hour == 1_000_000
    assert (quotas.minute, quotas.hour) == (60.0, 3600.0)


# --- posts per minute -------------------------------------------------------------------------


def test_a_post_is_counted_from_when_its_answer_came() -> None:
    """The service counts a POST once it has stored the rows, after it arrived; so a window is
    counted from the answer, and the 121st POST waits for the first one's answer + 60 s."""
    governor, clock = make_governor()
    with governor.slot("ds", 10_000):
        clock.now += 0.3  # the service takes 0.3 s to store the rows and answer
    for _ in range(119):
        take(governor, "ds")

    # Now is 0.3 s: the first POST counts from 0.3 s, not 0 s, so 60 s more (not 59.7).
    assert governor.wait_needed("ds", 1) == pytest.approx(60.0)
    clock.now = 61.0  # the minute has passed; the hour's rows (10,119 so far) count from 0.3 s
    assert governor.wait_needed("ds", 989_881) == pytest.approx(0.0)
    assert governor.wait_needed("ds", 989_882) == pytest.approx(3539.3)


def test_120_posts_in_a_minute_do_not_wait() -> None:
    """120 POSTs in the same instant fit the per-minute quota with no wait."""
    governor, clock = make_governor()

    for _ in range(120):
        take(governor, "ds")

    assert clock.sleeps == []
    assert governor.waited == 0.0


def test_121st_post_waits_until_the_first_leaves_the_minute() -> None:
    """The 121st POST waits exactly until the oldest of the last 120 is 60 s old."""
    governor, clock = make_governor()
    take(governor, "ds")  # t = 0
    clock.now = 10.0
    for _ in range(119):
        take(governor, "ds")  # t = 10
    assert clock.sleeps == []

    assert governor.wait_needed("ds", 1) == 50.0
    take(governor, "ds")

    assert clock.sleeps == [50.0]
    assert clock.now == 60.0


def test_minute_window_is_rolling() -> None:
    """After the 121st POST, the 122nd waits for the next-oldest POST to leave the minute."""
    governor, clock = make_governor()
    take(governor, "ds")  # t = 0
    clock.now = 10.0
    for _ in range(119):
        take(governor, "ds")  # t = 10
    take(governor, "ds")  # waits to t = 60

    take(governor, "ds")  # the 119 POSTs of t = 10 plus the one of t = 60 fill the minute

    assert clock.sleeps == [50.0, 10.0]
    assert clock.now == 70.0


def test_time_scale_shrinks_the_minute() -> None:
    """With time_scale=60 the minute is 1 s, so the 121st POST waits 1 s."""
    governor, clock = make_governor(Quotas(time_scale=60))
    assert governor.quotas.minute == 1.0

    for _ in range(120):
        take(governor, "ds")
    take(governor, "ds")

    assert clock.sleeps == [1.0]


# --- large tables: posts per hour -------------------------------------------------------------


def _120_posts_ten_seconds_apart(governor: Governor, clock: FakeClock, dataset: str) -> None:
    for i in range(120):
        clock.now = 10.0 * i  # t = 0, 10, ..., 1190: never 120 in one minute
        take(governor, dataset)
    clock.now = 1200.0


def test_large_table_121st_post_in_an_hour_waits_for_the_hour() -> None:
    """Once marked large, the 121st POST within an hour waits until the first is an hour old."""
    governor, clock = make_governor()
    governor.mark_large_table("ds")
    _120_posts_ten_seconds_apart(governor, clock, "ds")
    assert clock.sleeps == []

    take(governor, "ds")

    assert clock.sleeps == [2400.0]
    assert clock.now == 3600.0


def test_hourly_post_limit_applies_only_to_large_tables() -> None:
    """Without mark_large_table, 121 POSTs spread over 20 minutes do not wait."""
    governor, clock = make_governor()
    _120_posts_ten_seconds_apart(governor, clock, "ds")

    take(governor, "ds")

    assert clock.sleeps == []


def test_mark_large_table_is_per_dataset() -> None:
    """Marking one dataset large leaves another dataset on the per-minute quota only."""
    governor, clock = make_governor()
    governor.mark_large_table("big")
    _120_posts_ten_seconds_apart(governor, clock, "small")

    take(governor, "small")

    assert clock.sleeps == []


# --- rows per hour ----------------------------------------------------------------------------


def test_one_million_rows_in_an_hour_do_not_wait() -> None:
    """100 POSTs of 10,000 rows (exactly 1,000,000) fit the hourly row quota."""
    governor, clock = make_governor()

    for _ in range(100):
        take(governor, "ds", rows=10_000)

    assert clock.sleeps == []
    assert governor.wait_needed("ds", 0) == 0.0


def test_one_row_past_a_million_waits_for_the_hour() -> None:
    """After 1,000,000 rows at t=0, one more row at t=100 waits until t=3600."""
    governor, clock = make_governor()
    for _ in range(100):
        take(governor, "ds", rows=10_000)
    clock.now = 100.0

    take(governor, "ds", rows=1)

    assert clock.sleeps == [3500.0]
    assert clock.now == 3600.0


@pytest.mark.parametrize(
    ("rows", "wait"), [(400_000, 3400.0), (600_000, 3400.0), (600_001, 3500.0)]
)
def test_row_quota_waits_only_until_enough_rows_free(rows: int, wait: float) -> None:
    """A POST waits for the oldest POSTs whose rows, once out of the hour, make room for it."""
    governor, clock = make_governor()
    take(governor, "ds", rows=600_000)  # t = 0
    clock.now = 100.0
    take(governor, "ds", rows=400_000)  # t = 100
    clock.now = 200.0

    assert governor.wait_needed("ds", rows) == wait
    take(governor, "ds", rows=rows)

    assert clock.sleeps == [wait]


# --- pause (Retry-After) ----------------------------------------------------------------------


def test_pause_makes_the_next_post_wait() -> None:
    """pause(ds, 30) makes the next POST to ds wait 30 s."""
    governor, clock = make_governor()
    governor.pause("ds", 30)

    take(governor, "ds")

    assert clock.sleeps == [30.0]


def test_pause_does_not_affect_other_datasets() -> None:
    """A pause of one dataset leaves every other dataset free to post."""
    governor, clock = make_governor()
    governor.pause("ds", 30)

    take(governor, "other")

    assert clock.sleeps == []
    assert governor.wait_needed("ds", 1) == 30.0
    assert governor.wait_needed("other", 1) == 0.0


def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    """pause() only ever extends the hold: 30 s then 10 s still waits 30 s."""
    governor, clock = make_governor()
    governor.pause("ds", 30)
    governor.pause("ds", 10)

    take(governor, "ds")

    assert clock.sleeps == [30.0]


# --- deadline ---------------------------------------------------------------------------------


def test_slot_past_the_deadline_raises_with_the_wait_as_retry_after() -> None:
    """A POST that would wait past the deadline raises TransientError(retry_after=wait)."""
    governor, clock = make_governor()
    governor.pause("ds", 30)

    with pytest.raises(TransientError) as caught:
        take(governor, "ds", deadline=Deadline(29.9, clock))

    assert caught.value.retry_after == 30.0
    assert clock.sleeps == []
    assert governor.waited == 0.0


def test_refused_slot_is_not_counted() -> None:
    """A slot refused for its deadline does not count as a POST or as rows."""
    governor, clock = make_governor()
    for _ in range(100):
        take(governor, "ds", rows=10_000)
    clock.now = 100.0
    with pytest.raises(TransientError) as caught:
        take(governor, "ds", rows=1, deadline=Deadline(200.0, clock))
    assert caught.value.retry_after == 3500.0

    clock.now = 3600.0
    assert governor.wait_needed("ds", 1_000_000) == 0.0


def test_slot_waiting_exactly_until_the_deadline_is_allowed() -> None:
    """A wait ending exactly at the deadline is taken."""
    governor, clock = make_governor()
    governor.pause("ds", 30)

    take(governor, "ds", deadline=Deadline(30.0, clock))

    assert clock.sleeps == [30.0]


def test_slot_that_fits_now_ignores_a_passed_deadline() -> None:
    """A POST that needs no wait is allowed even when the deadline is already past."""
    governor, clock = make_governor()
    clock.now = 50.0

    take(governor, "ds", deadline=Deadline(10.0, clock))

    assert clock.sleeps == []


def test_waited_accumulates_the_sleeps() -> None:
    """governor.waited is the total of every wait the governor imposed."""
    governor, clock = make_governor()
    governor.pause("ds", 30)
    take(governor, "ds")
    governor.pause("ds", 12.5)
    take(governor, "ds")
    take(governor, "other")

    assert clock.sleeps == [30.0, 12.5]
    assert governor.waited == 42.5


# --- pending (real threads) -------------------------------------------------------------------


def test_sixth_pending_post_waits_for_a_release() -> None:
    """With 5 POSTs in flight a 6th waits until one ends, and fails fast past its deadline."""

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"the pending limit must not sleep ({seconds} s)")

    governor = Governor(clock=time.monotonic, sleep=no_sleep)
    bound = Deadline.after(30.0)
    entered = [threading.Event() for _ in range(5)]
    release = [threading.Event() for _ in range(5)]
    sixth_entered = threading.Event()
    order: list[str] = []
    errors: list[BaseException] = []

    def hold(i: int) -> None:
        try:
            with governor.slot("ds", 1, deadline=bound):
                entered[i].set()
                release[i].wait(30.0)
                order.append(f"release {i}")
        except BaseException as exc:
            errors.append(exc)

    def sixth() -> None:
        try:
            with governor.slot("ds", 1, deadline=bound):
                order.append("sixth")
                sixth_entered.set()
        except BaseException as exc:
            errors.append(exc)

    holders = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(5)]
    waiter = threading.Thread(target=sixth, daemon=True)
    try:
        for thread in holders:
            thread.start()
        for event in entered:
            assert event.wait(10.0)

        # Five slots are taken: one with an already-passed deadline fails at once.
        with (
            pytest.raises(TransientError) as caught,
            governor.slot("ds", 1, deadline=Deadline.after(-1.0)),
        ):
            pytest.fail("a sixth slot was granted while five were pending")
        assert caught.value.retry_after is not None

        waiter.start()
        assert not sixth_entered.wait(0.2)

        release[2].set()
        assert sixth_entered.wait(10.0)
        assert order == ["release 2", "sixth"]
    finally:
        for event in release:
            event.set()
        for thread in [*holders, waiter]:
            if thread.is_alive() or thread.ident is not None:
                thread.join(10.0)

    assert errors == []
    assert governor.waited == 0.0


def test_pending_slots_are_per_dataset() -> None:
    """Five POSTs in flight for one dataset do not block another dataset."""
    governor, clock = make_governor()

    with (
        governor.slot("ds", 1),
        governor.slot("ds", 1),
        governor.slot("ds", 1),
        governor.slot("ds", 1),
        governor.slot("ds", 1),
    ):
        take(governor, "other", deadline=Deadline(clock.now, clock))
        with pytest.raises(TransientError):
            take(governor, "ds", deadline=Deadline(clock.now, clock))

    take(governor, "ds", deadline=Deadline(clock.now, clock))
    assert clock.sleeps == []


def test_slot_is_released_when_the_body_raises() -> None:
    """A POST that fails still frees its pending slot (and still counts as a request)."""
    governor, clock = make_governor(Quotas(max_pending=1))

    with pytest.raises(RuntimeError), governor.slot("ds", 1):
        raise RuntimeError("POST failed")

    take(governor, "ds", deadline=Deadline(clock.now, clock))
    assert clock.sleeps == []


# --- the cap on a service's pause (POWERBI_MAX_RETRY_AFTER_SECONDS) ---------------------------


def test_a_pause_longer_than_max_pause_fails_at_once_without_a_deadline() -> None:
    """A service pause of an hour is not slept, even with no deadline: the slot raises with
    what is left of the pause as retry_after, and counts no POST."""
    governor, clock = make_governor()
    governor.pause("ds", 3600)
    clock.now = 100.0

    with pytest.raises(TransientError) as caught, governor.slot("ds", 1, max_pause=300.0):
        pytest.fail("a slot was granted during the pause")

    assert caught.value.retry_after == 3500.0
    assert clock.sleeps == []
    assert governor.wait_needed("ds", 1) == 3500.0  # the pause still holds for everyone


def test_a_pause_within_max_pause_is_waited() -> None:
    """A pause up to the cap is waited out as before."""
    governor, clock = make_governor()
    governor.pause("ds", 300)

    with governor.slot("ds", 1, max_pause=300.0):
        pass

    assert clock.sleeps == [300.0]


def test_max_pause_does_not_cap_the_quota_windows() -> None:
    """The cap is for waits the service asked for; the governor's own hourly row quota still
    makes a POST wait (the deadline, not the cap, bounds that)."""
    governor, clock = make_governor()
    for _ in range(100):
        take(governor, "ds", rows=10_000)
    clock.now = 100.0

    with governor.slot("ds", 1, max_pause=300.0):
        pass

    assert clock.sleeps == [3500.0]


def test_even_pacing_spreads_posts_instead_of_bursting() -> None:
    """With ``even``, POSTs of a dataset start at most one per minute/120 (0.5 s): the first
    goes at once, the next ones each wait their interval, and a minute still holds 120 of
    them; without it 120 go at once and the 121st waits for the minute to roll."""
    for even in (True, False):
        clock = FakeClock()
        governor = Governor(Quotas(even=even), clock=clock, sleep=clock.sleep)
        starts = []
        for _ in range(121):
            with governor.slot("d", 1):
                starts.append(clock())
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        if even:
            assert starts[0] == 0.0
            assert all(abs(gap - 0.5) < 1e-9 for gap in gaps)
            assert starts[120] == 60.0
        else:
            assert starts[119] == 0.0  # 120 at once
            assert starts[120] >= 60.0  # then the minute has to roll
