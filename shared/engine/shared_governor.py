"""Pacing shared by every process and instance: one ledger record per dataset in Azure Storage.

Azure Functions runs the app on as many instances as load calls for, each with one or more
worker processes; Power BI counts its quotas per dataset, whoever sends. A :class:`Governor`
alone would let each process believe it has the whole 120 POSTs a minute. :class:`SharedGovernor`
keeps the same rules (the windows, the even spacing, the pending count, the service's pause, the
large-table switch) but on one :class:`PaceRecord` per dataset, read and written through a
:class:`Ledger` with optimistic concurrency (an ETag: a write succeeds only on the version it
read, so two processes never both take the same slot).

Design: slot claims, not polling
--------------------------------
A caller *claims* a slot: it computes, from the record, the earliest time ``T`` at which its
POST fits every window (the same computation as the local governor's), writes the claim (the
POST stamped at ``T``, its rows, and a pending entry with an expiry) with If-Match, and then
sleeps until ``T`` locally. Later callers see the claim and take the slot after it, so callers
on different instances queue up without polling the ledger. When the POST ends the caller
writes again: the pending entry goes and the POST is re-stamped at its end (as the local
governor does, see :meth:`Governor._restamp`). Two POSTs a minute are kept in hand
(:data:`LATE_MARGIN`): a claim written after its start is sent later than stamped. Cost per Add
Rows: two conditional writes; a
write that finds the record changed costs one read and one write more (the record is cached
with its ETag, so an uncontended caller reads nothing). ``bench`` figures 3i-3j and 7f-7g
measure it.

Crash bound: a pending entry carries an expiry, ``claim_ttl`` seconds after its start (the
Power BI request timeout plus a margin). A process that dies holding claims keeps at most
those slots "pending" until then; its POST stamps stay counted (the service counted them too,
if they were sent). Claims are at most ``max_pending`` (5) at a time per dataset, so the worst
case is a dataset held for ``claim_ttl`` seconds, and only if the dead process held all five.

Storage trouble: when the ledger cannot be reached, the governor paces alone on a
conservative share of every quota (``1 / fallback_share``, ``PACING_FALLBACK_PROCESSES``)
for ``retry_after`` seconds, with a warning, then tries the ledger again. Pacing never decides
whether rows are sent or re-sent, so no row is lost or pushed twice because of it.

Clocks: records hold wall-clock times (``time.time``), the one clock instances share; Azure
hosts keep it NTP-synchronised (well under a second apart, against windows of a minute and an
hour with 0.5 s spacing).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from shared import limits
from shared.engine.governor import (
    Governor,
    Quotas,
    _DatasetPace,
    frees_up_too_late,
    looks_large,
    pause_too_long,
)
from shared.engine.retry import Deadline
from shared.errors import LedgerConflict, LedgerUnavailable, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Ledger(Protocol):
    """Where the records live: one per dataset, each with an opaque version (ETag)."""

    def read(self, dataset: str) -> tuple[dict[str, Any] | None, str | None]:
        """The dataset's record as plain values and its version; (None, None) if none yet."""
        ...

    def write(self, dataset: str, record: dict[str, Any], version: str | None) -> str:
        """Store ``record`` if the stored version is still ``version`` (None: create it, only
        if there is none). Returns the new version; raises :class:`LedgerConflict` otherwise."""
        ...


@dataclass
class Claim:
    """One POST's place in a dataset's record."""

    start: float
    rows: int
    expires: float


@dataclass
class PaceRecord:
    """A dataset's shared pacing state (wall-clock seconds)."""

    #: Stamps of the latest POSTs (at most the largest count a window checks), sorted.
    posts: list[float] = field(default_factory=list)
    #: Rows per time bucket in the last hour, as (bucket end, rows), sorted; bucket ends are
    #: whole multiples of the bucket width (see :meth:`add_rows`).
    rows: list[tuple[float, int]] = field(default_factory=list)
    #: Pending POSTs by claim id (started or about to start, not finished).
    claims: dict[str, Claim] = field(default_factory=dict)
    paused_until: float = 0.0
    large: bool = False
    #: Rows sent to each table through the bundle (the large-table switch is at 250,000).
    table_rows: dict[str, int] = field(default_factory=dict)
    #: The rows buckets' width in seconds.
    width: float = 3.0

    def to_plain(self) -> dict[str, Any]:
        """The record as properties of a storage entity (strings of JSON and numbers)."""
        return {
            # Full precision (JSON keeps a float exactly): a stamp rounded down would end a
            # window early, and a release must find its claim's stamp again.
            "Posts": json.dumps(self.posts),
            # Bucket ends are whole multiples of the width: stored as bucket numbers.
            "Rows": json.dumps([[round(t / self.width), n] for t, n in self.rows]),
            "Width": self.width,
            "Claims": json.dumps(
                {
                    k: [round(c.start, 3), c.rows, round(c.expires, 3)]
                    for k, c in self.claims.items()
                }
            ),
            "PausedUntil": float(self.paused_until),
            "Large": bool(self.large),
            "TableRows": json.dumps(self.table_rows),
        }

    @classmethod
    def from_plain(cls, plain: dict[str, Any] | None) -> PaceRecord:
        """The record stored as :meth:`to_plain` made it (an empty one for None)."""
        if not plain:
            return cls()
        width = float(plain.get("Width") or 3.0)
        claims = {
            str(k): Claim(float(v[0]), int(v[1]), float(v[2]))
            for k, v in json.loads(plain.get("Claims") or "{}").items()
        }
        return cls(
            posts=sorted(float(t) for t in json.loads(plain.get("Posts") or "[]")),
            rows=sorted((int(k) * width, int(n)) for k, n in json.loads(plain.get("Rows") or "[]")),
            width=width,
            claims=claims,
            paused_until=float(plain.get("PausedUntil") or 0.0),
            large=bool(plain.get("Large") or False),
            table_rows={
                str(k): int(v) for k, v in json.loads(plain.get("TableRows") or "{}").items()
            },
        )

    def copy(self) -> PaceRecord:
        return replace(
            self,
            posts=list(self.posts),
            rows=list(self.rows),
            claims={k: replace(c) for k, c in self.claims.items()},
            table_rows=dict(self.table_rows),
        )

    def live_claims(self, now: float) -> int:
        return sum(1 for c in self.claims.values() if c.expires > now)

    def prune(self, now: float, quotas: Quotas) -> None:
        """Drop what no window can count any more (and expired claims)."""
        horizon = now - quotas.hour
        keep = max(quotas.posts_per_minute, quotas.posts_per_hour_large_table)
        self.posts = [t for t in self.posts if t > horizon][-keep:]
        self.rows = [(t, n) for t, n in self.rows if t > horizon and n > 0]
        self.claims = {k: c for k, c in self.claims.items() if c.expires > now}

    def pace(self, now: float) -> _DatasetPace:
        """The record as the local governor's state, so both decide with the same code."""
        return _DatasetPace(
            posts=deque(self.posts),
            rows=deque(self.rows),
            rows_in_hour=sum(n for _, n in self.rows),
            pending=self.live_claims(now),
            paused_until=self.paused_until,
            large_table=self.large,
            last_start=self.posts[-1] if self.posts else float("-inf"),
        )

    def add_rows(self, stamp: float, rows: int) -> None:
        """Count ``rows`` in the bucket that ends at or after ``stamp``: they leave the hour at
        most one bucket late (stricter, never looser), and the record stays small."""
        end = math.ceil(stamp / self.width) * self.width
        for i, (t, n) in enumerate(self.rows):
            if t == end:
                self.rows[i] = (t, n + rows)
                return
        bisect.insort(self.rows, (end, rows))

    def remove_rows(self, stamp: float, rows: int) -> None:
        end = math.ceil(stamp / self.width) * self.width
        for i, (t, n) in enumerate(self.rows):
            if t == end:
                self.rows[i] = (t, max(0, n - rows))
                return


@dataclass
class _Cached:
    record: PaceRecord
    version: str | None
    fresh: bool  # read (or written) by this very operation
    seen: float = 0.0  # when it was read or written (the governor's clock)


class _NoWrite(Exception):
    """Raised inside a change: decided from the record, nothing to store."""

    def __init__(self, result: Any) -> None:
        self.result = result


@dataclass(frozen=True)
class _Wait:
    """A claim could not be made now: look again after ``seconds``."""

    seconds: float


#: Rows buckets per hour window (3 s each at real quota time): rows leave the hour up to a
#: bucket late; with 240 (15 s, 0.25 s at --time-scale 60) one process used 88-94% of the
#: hourly row quota in bench figure 3c, with 2,400 99.6%. Stored as bucket numbers, 1,200
#: buckets stay well inside an entity string's 32K characters.
_BUCKETS_PER_HOUR = 1200
#: POSTs a minute kept in hand for claims sent late (see SharedGovernor.__init__).
LATE_MARGIN = 2
#: Writes tried in a row on a record others keep changing before giving up for this call.
_MAX_CONFLICTS = 50


class SharedGovernor(Governor):
    """A :class:`Governor` whose state is one shared record per dataset (see the module)."""

    def __init__(
        self,
        ledger: Ledger,
        quotas: Quotas | None = None,
        *,
        claim_ttl: float = 35.0,
        fallback_share: int = 4,
        retry_after: float = 30.0,
        poll: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(quotas, clock=clock, sleep=sleep)
        self.ledger = ledger
        self.claim_ttl = claim_ttl
        self.retry_after = retry_after
        self.poll = poll
        self._wall = wall
        q = self.quotas
        share = self.fallback_share = max(1, fallback_share)
        #: Paces this process alone while the ledger cannot be reached.
        self.fallback = Governor(
            replace(
                q,
                posts_per_minute=max(1, q.posts_per_minute // share),
                posts_per_hour_large_table=max(1, q.posts_per_hour_large_table // share),
                max_pending=max(1, q.max_pending // share),
                rows_per_hour=max(limits.MAX_ROWS_PER_POST, q.rows_per_hour // share),
            ),
            clock=clock,
            sleep=sleep,
        )
        # Two POSTs a minute in hand: a claim written late (after its start, when storage is
        # slow or processes contend) is sent later than stamped, so POSTs claimed after it
        # may reach the service within the same minute. With 3 processes and ledger calls at
        # p99 1.2 s, 10 of 3,223 POSTs met the per-minute limit (bench figure 7c) without it.
        self.quotas = replace(q, posts_per_minute=q.posts_per_minute - LATE_MARGIN)
        self._records: dict[str, _Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._down_until = float("-inf")
        #: Ledger operations made, for the benchmark: reads, writes, conflicts.
        self.reads = 0
        self.writes = 0
        self.conflicts = 0

    # -- the ledger ------------------------------------------------------------------------

    def _lock_for(self, dataset: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(dataset, threading.Lock())

    def _shared(self) -> bool:
        return self._clock() >= self._down_until

    def _unavailable(self, error: LedgerUnavailable) -> None:
        if self._shared():
            log.warning(
                "shared pacing ledger unavailable (%s): pacing on this process's share "
                "(1/%d of each quota) for %.0f s",
                error.message,
                self.fallback_share,
                self.retry_after,
            )
        self._down_until = self._clock() + self.retry_after

    def _read(self, dataset: str) -> _Cached:
        plain, version = self.ledger.read(dataset)
        self.reads += 1
        cached = _Cached(PaceRecord.from_plain(plain), version, fresh=True, seen=self._clock())
        self._records[dataset] = cached
        return cached

    def _update(self, dataset: str, change: Callable[[PaceRecord, float], T]) -> T:
        """Apply ``change`` to the dataset's record and store it, retrying on conflicts.

        ``change`` edits the record it is given and returns a result, or raises
        :class:`_NoWrite` (nothing to store; decided on a record read for this call, never on a
        stale cached one). Raises :class:`LedgerUnavailable` when storage fails."""
        with self._lock_for(dataset):
            cached = self._records.get(dataset)
            if cached is not None:
                cached = replace(cached, fresh=False)
            for attempt in range(_MAX_CONFLICTS):
                if cached is None:
                    cached = self._read(dataset)
                record = cached.record.copy()
                record.width = self.quotas.hour / _BUCKETS_PER_HOUR
                now = self._wall()
                record.prune(now, self.quotas)
                try:
                    result = change(record, now)
                except (_NoWrite, TransientError) as decided:
                    if not cached.fresh:
                        cached = None  # decided on what may be old: read and decide again
                        continue
                    if isinstance(decided, _NoWrite):
                        return decided.result  # type: ignore[no-any-return]
                    raise
                try:
                    version = self.ledger.write(dataset, record.to_plain(), cached.version)
                except LedgerConflict:
                    self.conflicts += 1
                    self._records.pop(dataset, None)
                    cached = None
                    # Many processes at once: spread the next tries (a few ms, growing).
                    self._sleep(random.uniform(0.0, 0.002 * min(attempt + 1, 10)))
                    continue
                self.writes += 1
                self._records[dataset] = _Cached(record, version, fresh=True, seen=self._clock())
                return result
            raise TransientError(
                f"dataset {dataset}: its pacing record kept changing under {_MAX_CONFLICTS} "
                "writes in a row",
                retry_after=1.0,
            )

    # -- the governor's interface ----------------------------------------------------------

    def wait_needed(self, dataset: str, rows: int) -> float:
        """Seconds until a POST of ``rows`` rows fits, from the record as seen at most one
        POST interval ago (a hint for the coalescer, which keeps its buffer open that long;
        :meth:`slot` decides on the current record). Costs a read when the record seen here
        is older than that: other processes take slots meanwhile."""
        if not self._shared():
            return self.fallback.wait_needed(dataset, rows)
        cached = self._records.get(dataset)
        interval = self.quotas.minute / self.quotas.posts_per_minute
        if cached is None or self._clock() - cached.seen > interval:
            try:
                with self._lock_for(dataset):
                    cached = self._read(dataset)
            except LedgerUnavailable as error:
                self._unavailable(error)
                return self.fallback.wait_needed(dataset, rows)
        now = self._wall()
        record = cached.record.copy()
        record.prune(now, self.quotas)
        return self._wait_needed(record.pace(now), rows, now)

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
        """Hold one of the dataset's POST slots, shared with every process (see
        :meth:`Governor.slot` for the contract). ``table``: the POST's table, whose rows sent
        are counted for the large-table switch when the body ends without an exception."""
        if not self._shared():
            with self.fallback.slot(
                dataset, rows, deadline, max_pause=max_pause, table=table
            ) as waited:
                yield waited
            return
        started = self._clock()
        try:
            claim_id, start = self._claim(dataset, rows, deadline, max_pause)
        except LedgerUnavailable as error:
            self._unavailable(error)
            with self.fallback.slot(
                dataset, rows, deadline, max_pause=max_pause, table=table
            ) as waited:
                yield waited
            return
        wait = start - self._wall()
        if wait > 0:
            self.waited += wait
            self._sleep(wait)
        ok = False
        try:
            yield self._clock() - started
            ok = True
        finally:
            # The POST ended now, not when the release is written: the window must not carry
            # the ledger's own latency (at --time-scale 60, 20 ms a POST cost 3% of the hour).
            self._finish(dataset, claim_id, table if ok else None, self._wall())

    def _claim(
        self, dataset: str, rows: int, deadline: Deadline | None, max_pause: float | None
    ) -> tuple[str, float]:
        claim_id = uuid.uuid4().hex[:12]
        q = self.quotas

        def change(record: PaceRecord, now: float) -> tuple[str, float] | _Wait:
            paused = record.paused_until - now
            if max_pause is not None and paused > max_pause:
                raise pause_too_long(dataset, paused, max_pause)
            if record.live_claims(now) >= q.max_pending:
                # Five POSTs pending or about to start: look again when one may have ended.
                raise _NoWrite(_Wait(self.poll))
            wait = self._wait_needed(record.pace(now), rows, now)
            if deadline is not None and not deadline.allows(wait):
                raise frees_up_too_late(dataset, wait)
            start = now + wait
            record.claims[claim_id] = Claim(start, rows, start + self.claim_ttl)
            bisect.insort(record.posts, start)
            record.add_rows(start, rows)
            return claim_id, start

        while True:
            outcome = self._update(dataset, change)
            if not isinstance(outcome, _Wait):
                return outcome
            if deadline is not None and deadline.left() <= outcome.seconds:
                raise TransientError(
                    f"dataset {dataset}: {q.max_pending} POSTs already pending",
                    retry_after=1.0,
                )
            self.waited += outcome.seconds
            self._sleep(outcome.seconds)

    def _finish(self, dataset: str, claim_id: str, table: str | None, ended: float) -> None:
        """The POST ended: it is no longer pending, and counts from its end (see
        :meth:`Governor._restamp`); a successful one counts its rows for its table."""

        def change(record: PaceRecord, now: float) -> None:
            claim = record.claims.pop(claim_id, None)
            if claim is None:
                return  # expired and pruned meanwhile: its stamps age out as they are
            end = max(ended, claim.start)
            index = bisect.bisect_left(record.posts, claim.start)
            if index < len(record.posts) and record.posts[index] == claim.start:
                del record.posts[index]
                bisect.insort(record.posts, end)
            record.remove_rows(claim.start, claim.rows)
            record.add_rows(end, claim.rows)
            if table is not None:
                sent = record.table_rows.get(table, 0) + claim.rows
                record.table_rows[table] = sent
                if sent >= limits.LARGE_TABLE_ROWS and not record.large:
                    record.large = True
                    log.info(
                        "dataset %s: %s has been sent %d rows; 120 POSTs per hour from now",
                        dataset,
                        table,
                        sent,
                    )

        try:
            self._update(dataset, change)
        except (LedgerUnavailable, TransientError) as error:
            # The claim expires by itself (claim_ttl); the POST's outcome is not affected.
            log.warning("dataset %s: could not release its pacing claim: %s", dataset, error)

    def pause(self, dataset: str, seconds: float) -> None:
        """Every caller of the dataset, in every process, waits ``seconds`` (a 429's
        ``Retry-After``); a pause longer than the minute window can explain while this
        dataset's rows in the hour are under the quota means a large table (learned from
        the service, kept in the record)."""
        self.fallback.pause(dataset, seconds)
        if not self._shared():
            return
        q = self.quotas

        def change(record: PaceRecord, now: float) -> None:
            until = now + seconds
            learned = not record.large and looks_large(seconds, sum(n for _, n in record.rows), q)
            if until <= record.paused_until and not learned:
                raise _NoWrite(None)
            record.paused_until = max(record.paused_until, until)
            if learned:
                record.large = True
                log.warning(
                    "dataset %s: Power BI asked for a %.0f s pause, which only the hourly "
                    "limits explain, and its rows this hour are under quota: a table holds "
                    "250,000 rows or more; 120 POSTs per hour from now",
                    dataset,
                    seconds,
                )

        try:
            self._update(dataset, change)
        except LedgerUnavailable as error:
            self._unavailable(error)

    def mark_large_table(self, dataset: str) -> None:
        """A table of this dataset holds 250,000 rows or more, for every process."""
        self.fallback.mark_large_table(dataset)
        if not self._shared():
            return

        def change(record: PaceRecord, now: float) -> None:
            if record.large:
                raise _NoWrite(None)
            record.large = True

        try:
            self._update(dataset, change)
        except LedgerUnavailable as error:
            self._unavailable(error)
