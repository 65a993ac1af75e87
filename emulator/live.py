"""What the live dashboard watches: change notices, rows per minute, and the dead-letter store.

Nothing here knows about HTTP. :class:`LiveFeed` tells open dashboard streams that something
changed (they coalesce, so a 10,000-row burst is a handful of updates, not 10,000);
:class:`ArrivalHistory` keeps a bounded count of rows per minute per table on the emulator's
quota clock; :class:`DeadLetterWatch` polls the app's dead-letter container, when the emulator
is told where it is (the emulator itself never writes there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

from emulator.clock import ScaledClock

if TYPE_CHECKING:
    from azure.storage.blob.aio import ContainerClient

log = logging.getLogger("emulator.live")

#: Rows-per-minute history kept per table (the dashboard's chart spans this many minutes).
HISTORY_MINUTES = 60


class LiveFeed:
    """Change notices for the dashboard's event streams, on the server's one event loop.

    A stream subscribes an :class:`asyncio.Event`; :meth:`changed` sets every one. The stream
    then renders once for however many changes happened meanwhile, which is the coalescing.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()
        self.closed = False

    def subscribe(self) -> asyncio.Event:
        """A new event that is set on every change (and on close)."""
        event = asyncio.Event()
        if self.closed:
            event.set()
        self._waiters.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)

    @property
    def subscribers(self) -> int:
        return len(self._waiters)

    def changed(self) -> None:
        """Something the dashboard shows has changed."""
        for event in self._waiters:
            event.set()

    def close(self) -> None:
        """The server is shutting down: wake every stream so that it ends now.

        Without this an open stream would hold the server's graceful shutdown for its whole
        timeout (60 s in aiohttp), and Ctrl-C on ``make run`` would seem to hang.
        """
        self.closed = True
        self.changed()


class ArrivalHistory:
    """Rows accepted per minute for each table, the last :data:`HISTORY_MINUTES` minutes.

    Minutes are the emulator's quota clock (so ``--time-scale 60`` draws a minute per real
    second, like the quota windows). Memory is bounded: at most ``minutes`` buckets per table,
    and a dataset's buckets go when it is deleted.
    """

    def __init__(self, clock: ScaledClock, minutes: int = HISTORY_MINUTES) -> None:
        self.clock = clock
        self.minutes = minutes
        self._buckets: dict[tuple[str, str], deque[list[int]]] = {}
        self._latest: tuple[str, str] | None = None

    def _minute(self) -> int:
        return math.floor(self.clock.now() / 60.0)

    def record(self, dataset_id: str, table: str, rows: int) -> None:
        """Count ``rows`` accepted into ``dataset_id``/``table`` now."""
        minute = self._minute()
        buckets = self._buckets.setdefault((dataset_id, table), deque(maxlen=self.minutes))
        if buckets and buckets[-1][0] == minute:
            buckets[-1][1] += rows
        else:
            buckets.append([minute, rows])
        self._latest = (dataset_id, table)

    def series(self, dataset_id: str, table: str) -> list[int]:
        """Rows per minute, oldest first, ending with the current minute (zeros included)."""
        now = self._minute()
        counts = [0] * self.minutes
        for minute, rows in self._buckets.get((dataset_id, table), ()):
            age = now - minute
            if 0 <= age < self.minutes:
                counts[self.minutes - 1 - age] += rows
        return counts

    @property
    def latest(self) -> tuple[str, str] | None:
        """The (dataset id, table) that last received rows, if any did."""
        return self._latest

    def forget(self, dataset_id: str, table: str | None = None) -> None:
        """Drop the history of a dataset (or one of its tables)."""
        for key in [k for k in self._buckets if k[0] == dataset_id and table in (None, k[1])]:
            del self._buckets[key]
        if self._latest is not None and self._latest not in self._buckets:
            self._latest = None


# -- dead letters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterTarget:
    """Dead letters waiting for one dataset/table (names as the app wrote them)."""

    dataset: str
    table: str
    blobs: int
    rows: int
    newest: str


@dataclass(frozen=True)
class DeadLetterSummary:
    """What the dead-letter container holds, as of the last look.

    ``error`` is set (and the counts are those of the last good look, or zero) when the
    container could not be read; ``checked`` is False until the first look has finished.
    """

    container: str
    endpoint: str
    checked: bool = False
    error: str | None = None
    waiting_blobs: int = 0
    waiting_rows: int = 0
    replayed_blobs: int = 0
    truncated: bool = False
    targets: tuple[DeadLetterTarget, ...] = field(default_factory=tuple)


class DeadLetterWatch:
    """Polls the app's dead-letter container (blob metadata only; no blob is downloaded).

    The app writes one JSON-lines blob per batch, named
    ``<yyyy>/<mm>/<dd>/<dataset>/<table>/<time>-<id>.jsonl`` with metadata ``rows`` and
    ``replayed`` (see ``shared/stores/deadletter.py``); replay sets ``replayed=true``. A blob
    not yet replayed is "waiting". At most :attr:`max_blobs` blobs are listed per look, so a huge
    container costs a bounded amount of work (the summary then says it is truncated).
    """

    def __init__(
        self,
        connection_string: str,
        container: str,
        on_change: Callable[[], None],
        interval: float = 3.0,
        max_blobs: int = 10_000,
    ) -> None:
        self.container_name = container
        self.interval = interval
        self.max_blobs = max_blobs
        self._connection_string = connection_string
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.summary = DeadLetterSummary(container, blob_endpoint(connection_string))

    async def start(self) -> None:
        """Begin polling in the background (call on the server's loop)."""
        self._task = asyncio.create_task(self._run(), name="dead-letter-watch")

    async def stop(self) -> None:
        """Stop polling; a look in progress is cancelled, not awaited."""
        if self._task is not None:
            self._task.cancel()
            # Whatever ended the task, shutting down goes on (the store must still be closed).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        from azure.storage.blob.aio import BlobServiceClient

        # No SDK retries (the storage policy would back off for 15 s first) and short timeouts:
        # the next look, a few seconds on, is the retry, and the panel says what failed meanwhile.
        try:
            service = BlobServiceClient.from_connection_string(
                self._connection_string, retry_total=0, connection_timeout=3, read_timeout=10
            )
        except ValueError as exc:  # the type only: the string carries the account key
            self.summary = DeadLetterSummary(
                self.container_name,
                self.summary.endpoint,
                checked=True,
                error=f"the connection string is not usable ({type(exc).__name__})",
            )
            self._on_change()
            return
        async with service:
            container = service.get_container_client(self.container_name)
            while True:
                summary = await self.look(container)
                if summary != self.summary:
                    self.summary = summary
                    self._on_change()
                await asyncio.sleep(self.interval)

    async def look(self, container: ContainerClient) -> DeadLetterSummary:
        """One listing of the container, summarised."""
        from azure.core.exceptions import ResourceNotFoundError

        base = DeadLetterSummary(self.container_name, self.summary.endpoint, checked=True)
        targets: dict[tuple[str, str], list[int | str]] = {}
        waiting_blobs = waiting_rows = replayed = seen = 0
        try:
            async for blob in container.list_blobs(include=["metadata"]):
                seen += 1
                if seen > self.max_blobs:
                    break
                metadata = blob.metadata or {}
                if metadata.get("replayed") == "true":
                    replayed += 1
                    continue
                rows = _int(metadata.get("rows"))
                waiting_blobs += 1
                waiting_rows += rows
                dataset, table = _target_of(blob.name)
                modified = blob.last_modified.strftime("%Y-%m-%d %H:%M:%S UTC")
                entry = targets.setdefault((dataset, table), [0, 0, ""])
                entry[0] = int(entry[0]) + 1
                entry[1] = int(entry[1]) + rows
                entry[2] = max(str(entry[2]), modified)
        except ResourceNotFoundError:
            return base  # no container yet: the app creates it on its first dead letter
        except Exception as exc:  # AzureError mostly; whatever it is, polling goes on
            # The type only: messages can carry URLs with SAS tokens.
            return DeadLetterSummary(
                self.container_name,
                self.summary.endpoint,
                checked=True,
                error=f"cannot list the container ({type(exc).__name__})",
                waiting_blobs=self.summary.waiting_blobs,
                waiting_rows=self.summary.waiting_rows,
                replayed_blobs=self.summary.replayed_blobs,
                targets=self.summary.targets,
            )
        return DeadLetterSummary(
            self.container_name,
            self.summary.endpoint,
            checked=True,
            waiting_blobs=waiting_blobs,
            waiting_rows=waiting_rows,
            replayed_blobs=replayed,
            truncated=seen > self.max_blobs,
            targets=tuple(
                DeadLetterTarget(dataset, table, int(blobs), int(rows), str(newest))
                for (dataset, table), (blobs, rows, newest) in sorted(targets.items())
            ),
        )


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def _target_of(name: str) -> tuple[str, str]:
    """``yyyy/mm/dd/<dataset>/<table>/<file>`` -> (dataset, table), names unquoted."""
    parts = name.split("/")
    if len(parts) >= 6:
        return unquote(parts[3]), unquote(parts[4])
    return "?", "?"


def blob_endpoint(connection_string: str) -> str:
    """The blob endpoint a connection string names (never its key), for display."""
    fields = dict(
        part.split("=", 1) for part in connection_string.split(";") if "=" in part and part.strip()
    )
    if "BlobEndpoint" in fields:
        return fields["BlobEndpoint"]
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    account = fields.get("AccountName", "?")
    suffix = fields.get("EndpointSuffix", "core.windows.net")
    return f"{fields.get('DefaultEndpointsProtocol', 'https')}://{account}.blob.{suffix}"
