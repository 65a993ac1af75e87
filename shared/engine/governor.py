"""Per-dataset pacing, so that a dataset's quotas are not exceeded by this process.

Power BI counts per dataset: 120 POST rows requests per rolling minute (120 per hour once a
table holds 250,000 rows), 5 pending POSTs, 1,000,000 rows per hour (limits page:
https://learn.microsoft.com/en-us/power-bi/developer/embedded/push-datasets-limitations).
The Functions Python worker runs invocations on a thread pool, so every caller for a dataset
goes through one :class:`Governor` that makes it wait for its turn: a POST starts only when it
fits every window, and a 429's ``Retry-After`` pauses every caller of that dataset.

Windows are rolling (stricter than fixed ones). The clock and the sleep are injected, so tests
run on a fake clock with no real waiting.

The governor decides nothing about retries: :class:`~shared.engine.retry.RetryPolicy` does, and
hands a service's ``Retry-After`` to :meth:`Governor.pause`; the governor only makes callers
wait for their turn, never past their :class:`~shared.engine.retry.Deadline`, and never for a
service pause longer than the policy's cap (``max_pause``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from shared import limits
from shared.engine.retry import Deadline
from shared.errors import TransientError

log = logging.getLogger(__name__)


@dataclass
class _DatasetPace:
    posts: deque[float] = field(default_factory=deque)
    rows: deque[tuple[float, int]] = field(default_factory=deque)
    rows_in_hour: int = 0
    pending: int = 0
    paused_until: float = 0.0
    large_table: bool = False
    last_start: float = float("-inf")  # when the latest POST took its slot
    #: Rows sent to each table (successful POSTs): the large-table switch is at 250,000.
    table_rows: dict[str, int] = field(default_factory=dict)
    #: The latest start a caller asleep in slot() is waiting for (the coalescer's hint).
    queued_until: float = float("-inf")


@dataclass(frozen=True)
class Quotas:
    """The numbers a governor enforces. ``time_scale`` shrinks the windows (emulator only)."""

    posts_per_minute: int = limits.MAX_POSTS_PER_MINUTE
    posts_per_hour_large_table: int = limits.MAX_POSTS_PER_HOUR_LARGE_TABLE
    max_pending: int = limits.MAX_PENDING_POSTS
    rows_per_hour: int = limits.MAX_ROWS_PER_HOUR
    time_scale: float = 1.0
    #: Spread a dataset's POSTs evenly (at most one every minute / posts_per_minute, 0.5 s)
    #: instead of letting 120 go at once and then stalling for the rest of the minute: the
    #: same rate over a minute, but under sustained load every caller waits at most one
    #: interval, which is what concurrent requests sharing POSTs (group commit) need.
    even: bool = False

    @property
    def minute(self) -> float:
        return limits.MINUTE / self.time_scale

    @property
    def hour(self) -> float:
        return limits.HOUR / self.time_scale


class SlotRefused(TransientError):
    """A slot refused because a wait the service or the quotas ask for ends after the caller
    can wait: a pause to wait out, not a failure (a queue message is handed back for it)."""


def pause_too_long(dataset: str, paused: float, max_pause: float) -> TransientError:
    """The refusal of a slot while the service's pause has longer to run than is waited."""
    return SlotRefused(
        f"dataset {dataset}: Power BI asked to wait {paused:.0f} s, longer than "
        f"{max_pause:.0f} s (POWERBI_MAX_RETRY_AFTER_SECONDS)",
        retry_after=paused,
    )


def frees_up_too_late(dataset: str, wait: float) -> TransientError:
    """The refusal of a slot that frees up only after the caller's deadline."""
    return SlotRefused(
        f"dataset {dataset}: its quota frees up in {wait:.1f} s, after the deadline",
        retry_after=wait,
    )


def looks_large(pause: float, rows_in_hour: int, quotas: Quotas) -> bool:
    """Whether a service pause of ``pause`` seconds means a large table: longer than the
    minute window explains (5% margin for the service's rounding), so an hourly limit, and
    not the rows-per-hour one, which this dataset's rows in the hour are under by a POST's
    worth."""
    return (
        pause > quotas.minute * 1.05
        and rows_in_hour + limits.MAX_ROWS_PER_POST <= quotas.rows_per_hour
    )


class Governor:
    """Makes callers wait until a POST of ``rows`` rows fits the dataset's quotas."""

    def __init__(
        self,
        quotas: Quotas | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.quotas = quotas or Quotas()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._datasets: dict[str, _DatasetPace] = {}
        #: Total seconds callers were made to wait, for PushResult and logs.
        self.waited = 0.0

    def _pace(self, dataset: str) -> _DatasetPace:
        return self._datasets.setdefault(dataset, _DatasetPace())

    def wait_needed(self, dataset: str, rows: int) -> float:
        """Seconds until a POST of ``rows`` rows fits every time window (0 when it fits now),
        and, with even spacing, after the callers already asleep waiting for a slot: a
        coalescer keeps its buffer open that long, so a POST queued behind others carries
        what arrived meanwhile instead of leaving with one message (bench figure 7a)."""
        with self._lock:
            pace = self._pace(dataset)
            now = self._clock()
            wait = self._wait_needed(pace, rows, now)
            if self.quotas.even:
                interval = self.quotas.minute / self.quotas.posts_per_minute
                wait = max(wait, pace.queued_until + interval - now)
            return wait

    def _wait_needed(self, pace: _DatasetPace, rows: int, now: float) -> float:
        q = self.quotas
        while pace.posts and pace.posts[0] <= now - q.hour:
            pace.posts.popleft()
        while pace.rows and pace.rows[0][0] <= now - q.hour:
            pace.rows_in_hour -= pace.rows.popleft()[1]
        waits = [pace.paused_until - now]
        if q.even:
            waits.append(pace.last_start + q.minute / q.posts_per_minute - now)
        in_minute = [t for t in pace.posts if t > now - q.minute]
        if len(in_minute) >= q.posts_per_minute:
            waits.append(in_minute[-q.posts_per_minute] + q.minute - now)
        if pace.large_table and len(pace.posts) >= q.posts_per_hour_large_table:
            waits.append(pace.posts[-q.posts_per_hour_large_table] + q.hour - now)
        excess = pace.rows_in_hour + rows - q.rows_per_hour
        if excess > 0:
            freed = 0
            for stamp, count in pace.rows:
                freed += count
                if freed >= excess:
                    waits.append(stamp + q.hour - now)
                    break
        return max(0.0, *waits)

    @contextmanager
    def slot(
        self,
        dataset: str,
        rows: int,
        deadline: Deadline | None = None,
        *,
        max_pause: float | None = None,
        table: str | None = None,
    ) -> Iterator[float]:
        """Hold one of the dataset's POST slots for the body of the ``with`` block, which is
        given the seconds it waited for the slot. ``table``: the POST's table, whose rows are
        counted toward the large-table switch when the body ends without an exception.

        Waits (sleeping on the injected clock) until the POST fits; raises
        :class:`TransientError` with ``retry_after`` when that would pass ``deadline``, or when
        the service's pause (:meth:`pause`) has more than ``max_pause`` seconds to run. The
        POST is counted when the slot is taken and stamped again when it is released (see
        :meth:`_restamp`), whatever its outcome, because the service counts requests, not
        successes.
        """
        with self._lock:
            pace = self._pace(dataset)
            started = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_needed(pace, rows, now)
                if wait <= 0 and pace.pending < self.quotas.max_pending:
                    pace.pending += 1
                    pace.last_start = now
                    pace.posts.append(now)
                    pace.rows.append((now, rows))
                    pace.rows_in_hour += rows
                    break
                paused = pace.paused_until - now
                if max_pause is not None and paused > max_pause:
                    raise pause_too_long(dataset, paused, max_pause)
                if wait <= 0:
                    # Only the pending limit is in the way: wait for a slot to be released.
                    if deadline is not None and deadline.left() <= 0:
                        raise TransientError(
                            f"dataset {dataset}: {self.quotas.max_pending} POSTs already pending",
                            retry_after=1.0,
                        )
                    self._freed.wait(None if deadline is None else deadline.left())
                    continue
            if deadline is not None and not deadline.allows(wait):
                raise frees_up_too_late(dataset, wait)
            with self._lock:
                pace.queued_until = max(pace.queued_until, now + wait)
            self.waited += wait
            self._sleep(wait)
        ok = False
        try:
            yield now - started
            ok = True
        finally:
            with self._lock:
                pace.pending -= 1
                self._restamp(pace, now, rows)
                if ok and table is not None:
                    self._count_rows(pace, table, rows)
                self._freed.notify()

    @staticmethod
    def _count_rows(pace: _DatasetPace, table: str, rows: int) -> None:
        """Counted from what was sent: once a table may hold 250,000 rows, the service allows
        only 120 POSTs per hour (stricter, never looser)."""
        pace.table_rows[table] = pace.table_rows.get(table, 0) + rows
        if pace.table_rows[table] >= limits.LARGE_TABLE_ROWS:
            pace.large_table = True

    def _restamp(self, pace: _DatasetPace, sent: float, rows: int) -> None:
        """Move a finished POST's stamp from when it was sent to now. The service counts a
        POST once it has stored the rows, a moment after it arrived (0.2-0.3 s for 10,000 rows
        in the emulator); windows counted from the send run ahead of the service's, and the
        benchmark met one 429 at the quota's edge that way. (Still counted, whatever the
        outcome: the service counts requests, not successes.)"""
        end = self._clock()
        try:
            pace.posts.remove(sent)
        except ValueError:
            return  # already older than every window
        pace.posts.append(end)
        try:
            pace.rows.remove((sent, rows))
        except ValueError:
            return
        pace.rows.append((end, rows))

    def pause(self, dataset: str, seconds: float) -> None:
        """The service said "retry after ``seconds``": hold every caller of this dataset.

        A pause longer than the minute window can explain comes from an hourly limit; when this
        dataset's rows in the hour are under the row quota, it is the large-table one (a table
        holds 250,000 rows, perhaps sent before this process started): learned here."""
        with self._lock:
            pace = self._pace(dataset)
            now = self._clock()
            pace.paused_until = max(pace.paused_until, now + seconds)
            if looks_large(seconds, pace.rows_in_hour, self.quotas) and not pace.large_table:
                pace.large_table = True
                log.warning(
                    "dataset %s: Power BI asked for a %.0f s pause, which only the hourly "
                    "limits explain, with this hour's rows under quota: a table holds 250,000 "
                    "rows or more; 120 POSTs per hour from now",
                    dataset,
                    seconds,
                )

    def mark_large_table(self, dataset: str) -> None:
        """A table of this dataset holds 250,000 rows or more: 120 POSTs per hour from now."""
        with self._lock:
            self._pace(dataset).large_table = True
