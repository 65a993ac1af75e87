"""Pacing of the Eventhouse destination: its own, apart from Power BI's governor.

A KQL database has none of Power BI's push quotas (rows per hour, POSTs per minute per
dataset), so the :class:`~shared.engine.governor.Governor` does not apply. What Kusto has is
capacity, and it says so when it is short: a 429 throttling answer
(https://learn.microsoft.com/kusto/api/rest/response-codes: "429 Too many requests ... the
request was denied due to throttling"), which the managed streaming client turns into a queued
ingestion by itself and which a management command raises. So this pacing is two things:

- a cap on this process's ingestions in flight (``max_concurrent``), so that a burst of
  invocations does not open unbounded requests to one cluster;
- a pause every caller of the cluster honours after a throttling answer, for the
  ``Retry-After`` the service sent (the retry policy hands it here, as it does to the governor).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.engine.retry import Deadline
from shared.errors import TransientError

#: Ingestions in flight per process. Not a documented service quota (Kusto documents none for
#: streaming requests); a bound chosen so one worker cannot flood a cluster, as the Functions
#: host's own concurrency bounds invocations (host.json maxConcurrentRequests, batchSize).
DEFAULT_MAX_CONCURRENT = 4


class KustoPacing:
    """One cluster's pacing in this process: a concurrency cap and a shared pause."""

    def __init__(
        self,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``clock`` and ``sleep`` are injectable so that tests wait for nothing."""
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        """The service asked every caller to wait ``seconds`` (a throttling answer)."""
        with self._lock:
            self._until = max(self._until, self._clock() + seconds)

    @contextmanager
    def slot(self, deadline: Deadline | None = None) -> Iterator[float]:
        """Wait out a pause, then hold one of the in-flight slots; yields the seconds waited.
        A wait that would pass ``deadline`` is not taken: a :class:`TransientError` instead
        (nothing was sent)."""
        waited = 0.0
        with self._lock:
            wait = self._until - self._clock()
        if wait > 0:
            if deadline is not None and wait > deadline.left():
                raise TransientError(
                    f"Eventhouse asked to wait {wait:.1f} s, past the time budget",
                    retry_after=wait,
                    maybe_delivered=False,
                )
            self._sleep(wait)
            waited += wait
        timeout = -1.0 if deadline is None else max(0.0, deadline.left())
        if not self._slots.acquire(timeout=timeout):
            raise TransientError(
                "no Eventhouse ingestion slot free before the time budget ran out",
                maybe_delivered=False,
            )
        try:
            yield waited
        finally:
            self._slots.release()
