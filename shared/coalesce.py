"""Coalescing: many small queue messages, few Add Rows calls.

The Functions host runs one invocation per message, several at once (``batchSize`` +
``newBatchThreshold`` per instance, queue-trigger "Concurrency"). One POST per message would cap
a dataset at 120 messages a minute. Here, invocations for the same (workspace, dataset, table)
join one buffer: the first one in waits a short ``linger`` (or until the buffer holds a full
POST, 10,000 rows), then sends everything in the buffer through
:meth:`~shared.ingest.Ingestor.push_parts`. Each invocation gets back the result for its own
rows only, and returns only once they are acknowledged by Power BI (or dead-lettered): a
message is never completed before its rows are safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import limits
from shared.contracts import PushResult, Target
from shared.ingest import Ingestor, Part, PushIncomplete


@dataclass
class _Entry:
    part: Part
    deadline: float | None
    done: threading.Event = field(default_factory=threading.Event)
    result: PushResult | None = None
    error: BaseException | None = None


@dataclass
class _Buffer:
    opened: float
    entries: list[_Entry] = field(default_factory=list)
    rows: int = 0


class Coalescer:
    """Joins concurrent pushes to the same table into shared Add Rows calls."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        linger: float = 0.2,
        max_rows: int = limits.MAX_ROWS_PER_POST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingestor = ingestor
        self.linger = linger
        self.max_rows = max_rows
        self._clock = clock
        self._changed = threading.Condition()
        self._open: dict[tuple[str | None, str, str], _Buffer] = {}
        #: Number of shared deliveries made, for logs and tests.
        self.flushes = 0

    def push(
        self,
        target: Target,
        rows: Sequence[Any],
        *,
        source: str | None = None,
        deadline: float | None = None,
    ) -> PushResult:
        """Deliver ``rows`` together with whatever else is waiting for the same table.

        Returns this caller's result; raises :class:`PushIncomplete` when its rows were not all
        delivered (a transient failure), so the caller can have them redelivered.
        """
        key = (target.workspace or self.ingestor.default_workspace, target.dataset, target.table)
        entry = _Entry(Part(rows, source), deadline)
        with self._changed:
            buffer = self._open.get(key)
            leader = buffer is None
            if buffer is None:
                buffer = self._open[key] = _Buffer(self._clock())
            buffer.entries.append(entry)
            buffer.rows += len(rows)
            if buffer.rows >= self.max_rows:
                del self._open[key]  # full: later arrivals start a new buffer
                self._changed.notify_all()
        if leader:
            self._lead(key, buffer, target)
        entry.done.wait()
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        if entry.result.stopped is not None and entry.result.cause is not None:
            raise PushIncomplete(entry.result, entry.result.cause)
        return entry.result

    def _lead(self, key: tuple[str | None, str, str], buffer: _Buffer, target: Target) -> None:
        """Wait for the buffer to fill or the linger to pass, then deliver it for everyone."""
        with self._changed:
            while self._open.get(key) is buffer:
                remaining = buffer.opened + self.linger - self._clock()
                if remaining <= 0:
                    del self._open[key]
                    break
                self._changed.wait(remaining)
        entries = buffer.entries
        deadlines = [e.deadline for e in entries if e.deadline is not None]
        try:
            results = self.ingestor.push_parts(
                target, [e.part for e in entries], deadline=min(deadlines, default=None)
            )
            for entry, result in zip(entries, results, strict=True):
                entry.result = result
        except BaseException as error:  # every waiting invocation must learn of it
            for entry in entries:
                entry.error = error
        finally:
            self.flushes += 1
            for entry in entries:
                entry.done.set()
