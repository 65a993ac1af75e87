"""Unit tests for the shared pacing record (shared.engine.shared_governor.PaceRecord)."""

from __future__ import annotations

import bisect

from shared.engine.governor import Governor, Quotas
from shared.engine.shared_governor import Claim, PaceRecord


def test_a_record_round_trips_through_its_stored_form() -> None:
    record = PaceRecord(
        posts=[1.25, 3.5],
        rows=[(15.0, 200), (30.0, 7)],
        width=15.0,
        claims={"a1": Claim(3.5, 7, 38.5)},
        paused_until=99.0,
        large=True,
        table_rows={"Events": 207},
    )
    assert PaceRecord.from_plain(record.to_plain()) == record
    assert PaceRecord.from_plain(None) == PaceRecord()


def test_a_record_stays_small_under_a_full_hour_at_full_rate() -> None:
    """An hour at 2 POSTs a second (7,200 POSTs of 100 rows) leaves a record of a few
    kilobytes: an entity property holds at most 64 KiB, an entity 1 MiB."""
    quotas = Quotas()
    record = PaceRecord(width=quotas.hour / 1200)
    now = 1_800_000_000.0
    for _ in range(7200):
        now += 0.5
        record.prune(now, quotas)
        bisect.insort(record.posts, now)
        record.add_rows(now, 100)
    sizes = {k: len(str(v)) for k, v in record.to_plain().items()}
    assert max(sizes.values()) < 32_000 * 0.75, sizes  # a string property: 32K characters
    # ... and still says what the windows need: 120 POSTs in the last minute, 720,000 rows.
    pace = record.pace(now)
    assert sum(1 for t in pace.posts if t > now - 60) == 120
    assert pace.rows_in_hour >= 7200 * 100 - 100 * 6  # at most one bucket (6 POSTs) early
    # The minute is full: the next POST goes when the oldest of them leaves it, 0.5 s on.
    assert Governor(quotas)._wait_needed(pace, 1, now) == 0.5


def test_rows_are_counted_late_never_early() -> None:
    """Rows go in the bucket ending at or after their stamp: they leave the hour up to one
    bucket late (stricter), never before the hour has passed."""
    record = PaceRecord(width=15.0)
    record.add_rows(100.2, 5)
    assert record.rows == [(105.0, 5)]
    record.remove_rows(100.2, 5)
    record.add_rows(101.0, 5)
    assert record.rows == [(105.0, 5)]
