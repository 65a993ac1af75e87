"""Named mutual exclusion across processes and instances: one blob lease per name.

Functions scales out to several instances, each with one or more worker processes, so a lock
held in memory serialises one process only. :class:`BlobLeaseLock` serialises every process
that shares the app's storage account: holding the name ``n`` means holding the lease on the
small (empty) blob ``<LOCKS_CONTAINER>/n``, created with its container on first use. Blob
storage grants one lease per blob at a time
(https://learn.microsoft.com/rest/api/storageservices/lease-blob).

Bounds:

- **A holder that dies** (killed, its instance gone) stalls the others for at most
  :data:`LEASE_SECONDS` (15 s) plus one poll (:data:`MAX_POLL_SECONDS`): its lease is not
  renewed and lapses.
- **A live holder** renews its lease every :data:`RENEW_SECONDS` in a background thread, so
  work that takes longer than the lease keeps it; it releases it when done.
- **A waiter** polls with a growing back-off (:data:`FIRST_POLL_SECONDS` doubling up to
  :data:`MAX_POLL_SECONDS`), never past its deadline (a :class:`Budget`); past it,
  a :class:`~shared.errors.TransientError` with ``retry_after`` (the caller's input is
  redelivered). Without a deadline (the operator's command line) it waits until the lease is
  free, which a dead holder's lapse bounds.

**Fallback.** When the storage account cannot be reached (refused or timed-out connection,
an identity without access, no storage connection configured), the lock is *not* taken: a
warning is logged and the caller goes on without it (:meth:`BlobLeaseLock.hold` yields
False). The lock guards against duplicates, which the caller can live with (for datasets:
every process picks the smallest id of several of one name, so deliveries still agree); a
storage outage must not stop deliveries. The same goes for a renewal or a release that fails:
a warning, and the lease lapses on its own.

Azure exceptions are translated in one place, :func:`_translate`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar
from urllib.parse import quote

from shared.errors import ConfigError, TransientError
from shared.stores.storage import blob_service

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobLeaseClient, ContainerClient

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The lease's duration: the shortest Blob storage grants ("a non-infinite lease can be between
#: 15 and 60 seconds", Lease Blob), so that a dead holder stalls the others as little as possible.
LEASE_SECONDS: Final = 15
#: A third of the lease: a renewal that fails or is slow is followed by another before it lapses.
RENEW_SECONDS: Final = 5.0
#: The first wait of a waiter, doubled after each refused attempt...
FIRST_POLL_SECONDS: Final = 0.05
#: ... up to this: the work the lock guards is short (a dataset's creation is two Power BI
#: calls), and each poll costs one storage transaction.
MAX_POLL_SECONDS: Final = 1.0
#: The lock's storage client: no SDK retries (its default back-off starts at 15 s, longer than
#: the lease; a refused lease is retried here, and an unreachable account is a fallback, not a
#: wait) and short timeouts, so that an unreachable account costs seconds, not minutes.
CLIENT_OPTIONS: Final[Mapping[str, Any]] = {
    "retry_total": 0,
    "connection_timeout": 5,
    "read_timeout": 10,
}
#: Storage error codes (https://learn.microsoft.com/rest/api/storageservices/blob-service-error-codes).
_TAKEN: Final = frozenset({"LeaseAlreadyPresent"})
_MISSING: Final = frozenset({"ContainerNotFound", "BlobNotFound"})
#: What creating the container or the blob answers when it is already there (a leased blob
#: refuses a write without the lease id: it exists too).
_EXISTS: Final = frozenset(
    {"ContainerAlreadyExists", "BlobAlreadyExists", "LeaseIdMissing", "ConditionNotMet"}
)


class Budget(Protocol):
    """The time a caller has left: :class:`shared.engine.retry.Deadline` is one (the stores
    sit below the engine, so they name only what they use of it)."""

    def allows(self, wait: float) -> bool:
        """Whether a wait of ``wait`` seconds, starting now, ends within the budget."""
        ...


class CreationLock(Protocol):
    """Mutual exclusion by name across processes: ``with lock.hold(name, deadline) as held``.

    ``held`` is False when the lock could not be used (its storage unreachable) and the caller
    goes on without it; a wait past ``deadline`` raises :class:`TransientError`.
    """

    def hold(self, name: str, deadline: Budget | None = None) -> AbstractContextManager[bool]: ...


def dataset_lock_name(workspace_id: str | None, dataset: str) -> str:
    """The lock name for creating ``dataset`` in a workspace (None: My workspace), the same in
    every process and every caller (the engine's resolver and the Power BI surface's create)."""
    # Workspace ids are GUIDs, which callers may write in either case. Dataset names may hold
    # any character: quoted, dots too, since a blob name should not end with one
    # (https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata).
    workspace = (workspace_id or "me").lower()
    return f"datasets/{quote(workspace, safe='')}/{quote(dataset, safe='').replace('.', '%2E')}"


class _Taken(TransientError):
    """The lease is held by someone else."""


class _Missing(TransientError):
    """The container or the blob does not exist yet."""


class _Exists(TransientError):
    """The container or the blob exists already."""


def _translate(what: str, call: Callable[[], _T]) -> _T:
    """``call()``, with every Azure exception translated: the one place that knows them.

    Storage trouble of any kind is a :class:`TransientError` (its message names the operation
    and the exception's type, never a URL or a key); three answers the lock acts on are private
    subclasses of it.
    """
    from azure.core.exceptions import AzureError

    try:
        return call()
    except AzureError as exc:
        code = getattr(exc, "error_code", None)
        kind = (
            _Taken
            if code in _TAKEN
            else _Missing
            if code in _MISSING
            else _Exists
            if code in _EXISTS
            else TransientError
        )
        raise kind(
            f"lock storage: could not {what}: {type(exc).__name__}"
            + (f" ({code})" if code else ""),
            status=getattr(exc, "status_code", None),
            code=code,
        ) from exc


class BlobLeaseLock:
    """:class:`CreationLock` by blob leases in one container (see the module's docstring)."""

    def __init__(
        self,
        connect: Callable[[], ContainerClient],
        *,
        duration: int = LEASE_SECONDS,
        renew_every: float = RENEW_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``connect`` gives the container's client; it is called at each acquisition (the
        storage module keeps one client per process), so a connection that is not configured
        or malformed is met when the lock is needed, and fallen back from, not when the process
        starts."""
        if not 15 <= duration <= 60:
            raise ValueError("a blob lease lasts 15 to 60 seconds")
        self._connect = connect
        self.duration = duration
        self.renew_every = renew_every
        self._sleep = sleep
        self._rand = rand

    @classmethod
    def from_settings(
        cls,
        connection: str,
        container: str,
        env: Mapping[str, str],
        *,
        renew_every: float = RENEW_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> BlobLeaseLock:
        """The lock in ``container`` of the storage connection ``connection`` (a connection
        string, or ``<connection>__blobServiceUri`` for the managed identity, as in
        :func:`~shared.stores.storage.blob_service`)."""
        return cls(
            lambda: blob_service(connection, env, **CLIENT_OPTIONS).get_container_client(container),
            renew_every=renew_every,
            sleep=sleep,
        )

    @contextlib.contextmanager
    def hold(self, name: str, deadline: Budget | None = None) -> Iterator[bool]:
        """Hold ``name`` for the ``with`` block; yields whether the lease is held (False: the
        storage could not be reached, and the block runs without the lock).

        Raises :class:`TransientError` (with ``retry_after``) when another holder keeps it past
        ``deadline``.
        """
        lease = self._acquire(name, deadline)
        if lease is None:
            yield False
            return
        stop = threading.Event()
        keeper = threading.Thread(
            target=self._keep, args=(lease, name, stop), name=f"lease {name}", daemon=True
        )
        keeper.start()
        try:
            yield True
        finally:
            stop.set()
            keeper.join()
            try:
                _translate(f"release the lease on {name}", lease.release)
            except TransientError as exc:
                log.warning("%s; it lapses within %d s", exc.message, self.duration)

    def _acquire(self, name: str, deadline: Budget | None) -> BlobLeaseClient | None:
        """The lease on ``name``'s blob, waiting for it; None when storage is unreachable."""
        try:
            blob = self._connect().get_blob_client(name)
        except ConfigError as exc:
            log.warning("%s: going on without the lock on %s", exc, name)
            return None
        created = False
        polls = 0
        while True:
            try:
                return _translate(
                    f"lease {name}", lambda: blob.acquire_lease(lease_duration=self.duration)
                )
            except _Taken:
                pass
            except _Missing as exc:
                if created:  # made a moment ago, and gone: not a store to rely on
                    self._fall_back(name, exc)
                    return None
                try:
                    self._create(blob)
                except TransientError as failed:
                    self._fall_back(name, failed)
                    return None
                created = True
                continue
            except TransientError as exc:
                self._fall_back(name, exc)
                return None
            polls += 1
            wait = self._backoff(polls)
            if deadline is not None and not deadline.allows(wait):
                raise TransientError(
                    f"{name}: locked by another process when the time budget ran out",
                    # By then its holder is done, or, if it died, its lease has lapsed.
                    retry_after=float(self.duration),
                )
            self._sleep(wait)

    def _create(self, blob: BlobClient) -> None:
        """Create the container and the empty blob to lease (either may exist already);
        TransientError when the storage fails."""
        container = self._connect()
        with contextlib.suppress(_Exists):
            _translate(
                f"create the container {container.container_name}", container.create_container
            )
        with contextlib.suppress(_Exists):
            _translate(
                f"create the blob {blob.blob_name}", lambda: blob.upload_blob(b"", overwrite=False)
            )

    def _keep(self, lease: BlobLeaseClient, name: str, stop: threading.Event) -> None:
        """Renew ``lease`` every ``renew_every`` seconds until ``stop`` is set."""
        while not stop.wait(self.renew_every):
            try:
                _translate(f"renew the lease on {name}", lease.renew)
            except TransientError as exc:
                log.warning(
                    "%s: another process may take it within %d s and do the same work "
                    "(which the caller tolerates)",
                    exc.message,
                    self.duration,
                )

    def _backoff(self, polls: int) -> float:
        """The wait after refused attempt number ``polls``: doubling up to the cap, less up to a
        quarter at random so that waiters do not poll in step."""
        wait = min(MAX_POLL_SECONDS, FIRST_POLL_SECONDS * 2.0 ** min(polls - 1, 16))
        return wait * (1 - 0.25 * self._rand())

    @staticmethod
    def _fall_back(name: str, exc: TransientError) -> None:
        log.warning(
            "%s: going on without the lock on %s (a storage outage must not stop deliveries; "
            "a duplicate it lets through is tolerated)",
            exc.message,
            name,
        )
