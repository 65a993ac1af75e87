"""Coalescing: many small queue messages, few Add Rows calls.

The Functions host runs one invocation per message, many at once (up to ``batchSize`` +
``newBatchThreshold`` per instance, queue-trigger "Concurrency"). One POST per message would cap
a dataset at 120 messages a minute. Here, invocations for the same (workspace, dataset, table)
join one buffer. The first one in waits while messages keep arriving: until none has arrived
for ``linger`` seconds, or the buffer holds a full POST (10,000 rows), or ``max_wait`` has
passed since it opened; then it sends everything in the buffer through
:meth:`~shared.engine.ingest.Ingestor.push_parts`. Each invocation gets back the result for its own
rows only, and returns only once they are acknowledged by Power BI (or dead-lettered): a
message is never completed before its rows are safe.

The queue function is ``async``, so waiting invocations cost a coroutine each, not a thread:
the worker runs async functions on its event loop, and the blocking delivery runs once per
buffer on the loop's executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared import limits
from shared.contracts import PushResult, Target
from shared.engine.ingest import Ingestor, Part, PushIncomplete
from shared.engine.profile import TableProfile
from shared.engine.retry import Deadline, earliest
from shared.errors import TransientError

#: A buffer's key: workspace, dataset, table, the profile its rows are read under, and the
#: destinations they go to (None: the table's routing).
_Key = tuple[str | None, str, str, TableProfile | None, tuple[str, ...] | None]


async def wait_for_event(event: asyncio.Event, seconds: float) -> None:
    """Return when ``event`` is set or ``seconds`` have passed, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


@dataclass
class _Buffer:
    opened: float
    last_arrival: float
    full: asyncio.Event = field(default_factory=asyncio.Event)
    parts: list[Part] = field(default_factory=list)
    deadlines: list[Deadline] = field(default_factory=list)
    rows: int = 0
    results: asyncio.Future[list[PushResult]] | None = None


class Coalescer:
    """Joins concurrent pushes to the same table into shared Add Rows calls (one event loop)."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        linger: float = 0.2,
        max_wait: float = 5.0,
        max_rows: int = limits.MAX_ROWS_PER_POST,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[asyncio.Event, float], Awaitable[None]] = wait_for_event,
        threads: int = 64,
    ) -> None:
        """``clock`` and ``wait`` (:func:`wait_for_event` on that clock) are injected so that
        tests can run the linger and max-wait rules on a virtual clock. ``threads``: how many
        deliveries may run at once (see :meth:`_deliveries`)."""
        self.ingestor = ingestor
        self.linger = linger
        self.max_wait = max_wait
        self.max_rows = max_rows
        self._clock = clock
        self._wait = wait
        self._open: dict[_Key, _Buffer] = {}
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None
        #: Number of shared deliveries made, for logs and tests.
        self.flushes = 0

    async def push(
        self,
        target: Target,
        rows: Sequence[Any],
        *,
        source: str | None = None,
        deadline: Deadline | None = None,
        profile: TableProfile | None = None,
        destinations: Sequence[str] | None = None,
        refused_kept: bool = False,
    ) -> PushResult:
        """Deliver ``rows`` together with whatever else is waiting for the same table.

        Returns this caller's result; raises :class:`PushIncomplete` when its rows were not all
        delivered (a transient failure, at any of the table's destinations), so the caller can
        have them redelivered. The shared delivery keeps to the earliest ``deadline`` of the
        callers in it. ``destinations``: only these of the table's destinations;
        ``refused_kept``: a re-send whose refused rows were dead-lettered already (``Part``).
        """
        chosen = tuple(destinations) if destinations is not None else None
        # Rows under different profiles (a message's own override) are not delivered together.
        key = (
            target.workspace or self.ingestor.default_workspace,
            target.dataset,
            target.table,
            profile,
            chosen,
        )
        buffer = self._open.get(key)
        leader = buffer is None
        now = self._clock()
        if buffer is None:
            buffer = self._open[key] = _Buffer(now, now)
            buffer.results = asyncio.get_running_loop().create_future()
        buffer.last_arrival = now
        position = len(buffer.parts)
        buffer.parts.append(Part(rows, source, refused_kept))
        if deadline is not None:
            buffer.deadlines.append(deadline)
        buffer.rows += len(rows)
        if buffer.rows >= self.max_rows:
            self._close(key, buffer)  # full: later arrivals start a new buffer
        if leader:
            await self._lead(key, buffer, target, profile, chosen)
        assert buffer.results is not None
        result = (await asyncio.shield(buffer.results))[position]
        stopped = result.incomplete
        if stopped is not None and stopped.cause is not None:
            raise PushIncomplete(result, stopped.cause)
        return result

    def _deliveries(self) -> ThreadPoolExecutor:
        """The threads deliveries run on: their own, not the event loop's default executor,
        which has min(32, CPUs + 4) threads (6 on a 2-vCPU instance). A delivery spends most
        of its time asleep in the governor, waiting for its dataset's slot, so with 50 busy
        tables six threads made messages wait 74 s (bench figure 7); a sleeping thread costs
        little."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="coalesce")
        return self._executor

    def _close(self, key: _Key, buffer: _Buffer) -> None:
        if self._open.get(key) is buffer:
            del self._open[key]
        buffer.full.set()

    async def _until_slot(self, target: Target, buffer: _Buffer) -> None:
        """Keep the buffer open until the dataset's next POST may start (the governor's pacing,
        0.5 s between POSTs under load), so that callers arriving meanwhile ride this POST
        instead of waiting for the one after it. Only for a target already looked up (no
        request is made here), and never past the earliest caller's deadline."""
        resolved = self.ingestor.cached(target)
        if resolved is None or buffer.full.is_set():
            return
        wait = self.ingestor.governor.wait_needed(resolved.dataset_id, buffer.rows)
        deadline = earliest(buffer.deadlines)
        if deadline is not None:
            wait = min(wait, deadline.left() - 1.0)
        # One wait, at most max_wait: a long pause (a 429's Retry-After, the hourly row quota)
        # is the delivery's to wait out, not the buffer's.
        if wait > 0:
            await self._wait(buffer.full, min(wait, self.max_wait))

    async def _lead(
        self,
        key: _Key,
        buffer: _Buffer,
        target: Target,
        profile: TableProfile | None,
        destinations: tuple[str, ...] | None = None,
    ) -> None:
        """Wait for the buffer to fill or the linger to pass, then deliver it for everyone."""
        assert buffer.results is not None
        results = buffer.results
        try:
            while not buffer.full.is_set():
                now = self._clock()
                quiet = buffer.last_arrival + self.linger - now
                left = buffer.opened + self.max_wait - now
                if quiet <= 0 or left <= 0:
                    break
                await self._wait(buffer.full, min(quiet, left))
            await self._until_slot(target, buffer)
            self._close(key, buffer)
            delivered = await asyncio.get_running_loop().run_in_executor(
                self._deliveries(),
                lambda: (
                    self.ingestor.push_parts(
                        target,
                        buffer.parts,
                        deadline=earliest(buffer.deadlines),
                        profile=profile,
                    )
                    # Only a restricted delivery passes ``destinations``: the call is otherwise
                    # the one it always was.
                    if destinations is None
                    else self.ingestor.push_parts(
                        target,
                        buffer.parts,
                        deadline=earliest(buffer.deadlines),
                        profile=profile,
                        destinations=destinations,
                    )
                ),
            )
        except BaseException as error:  # every waiting invocation must learn of it
            self._close(key, buffer)
            if not results.done():
                results.set_exception(
                    error if isinstance(error, Exception) else TransientError("delivery cancelled")
                )
            if not isinstance(error, Exception):
                raise
        else:
            results.set_result(delivered)
        finally:
            self.flushes += 1
