"""Blob Created events from other storage accounts: ingest the blob an event names, but only
from an allow-listed account.

An Event Grid subscription on another account delivers ``Microsoft.Storage.BlobCreated``
events (Event Grid or CloudEvents schema) whose ``data.url`` names the new blob. The handler
reads that blob with the managed identity, so it must never follow a URL to a host that is not
on ``BLOB_ALLOWED_HOSTS``: the token would go wherever an event says. Anything else is refused
and logged, with no request made.
(Event schema: https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage)

A host that is allowed but cannot be read (it does not speak TLS on an https URL, never
answers, or refuses this app with a 4xx) is dead-lettered with the reason, and the event is
answered: the clients that read these blobs have short connect and read timeouts and one retry
(:data:`CONNECT_TIMEOUT`, :data:`READ_TIMEOUT`, :data:`RETRIES`), so this takes seconds, not the
SDK defaults' minutes, and never ends in an untranslated exception (a 500 to Event Grid).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from shared.settings import clean_authority, is_loopback
from shared.sources.blob_ingest import UNTARGETED, BlobIngest, BlobOutcome
from shared.stores.deadletter import DeadLetter

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger(__name__)

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
#: APIs that mean a block blob is complete (Event Grid blob schema: filter on these).
COMPLETE_APIS = {"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"}

#: Seconds to open a connection to a blob's host, TLS handshake included (urllib3 applies the
#: connect timeout to both). A storage endpoint completes both in well under a second. The
#: SDK's defaults are 20 s to connect and 60 s per read (azure/storage/blob/_shared/
#: constants.py), with ExponentialRetry's 3 retries after 15, 18 and 24 s (+-3 s): against a
#: host without TLS every attempt fails at once, and the back-offs alone held one event 78 s.
CONNECT_TIMEOUT = 5
#: Seconds to wait for the next bytes of an answer (not for the whole 1 MiB range: the SDK
#: applies it per socket read). The service starts a range's answer in milliseconds; 20 s of
#: silence is a stalled host, not a slow one (the SDK's default is 60 s).
READ_TIMEOUT = 20
#: One retry, 1 s (+-1 s of jitter) after a failed attempt: enough for a dropped connection,
#: and bounded (a host that never answers costs 2 x CONNECT_TIMEOUT + about 1 s before the
#: event is dead-lettered). The SDK's own jitter, 3 s, would be longer than the back-off.
RETRIES = 1
RETRY_BACKOFF = 1
RETRY_JITTER = 1


def client_options() -> dict[str, Any]:
    """The SDK options for clients that read blobs named by events: timeouts and retries
    (always the same retry policy object, which keeps no state between requests, so that the
    storage module's one-client-per-options cache holds one client for them)."""
    return {
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        "retry_policy": _retry_policy(),
    }


@functools.cache
def _retry_policy() -> Any:
    from azure.storage.blob import ExponentialRetry

    return ExponentialRetry(
        initial_backoff=RETRY_BACKOFF,
        increment_base=RETRY_BACKOFF,
        retry_total=RETRIES,
        random_jitter_range=RETRY_JITTER,
    )


@dataclass(frozen=True)
class Refused:
    """Why an event was not acted on."""

    reason: str


def _host(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc or "").lower()


class BlobEvents:
    """Turns BlobCreated events into blob ingestion, within the allow-list."""

    def __init__(
        self,
        blobs: Callable[[], BlobIngest],
        allowed_hosts: tuple[str, ...],
        client_for: Callable[[str], BlobClient],
    ) -> None:
        self._blobs = blobs
        self.allowed = {h.lower() for h in allowed_hosts}
        self._client_for = client_for

    def check(self, event_type: str, data: Mapping[str, Any]) -> str | Refused:
        """The blob URL to read, or why the event is refused. Makes no request."""
        if event_type != BLOB_CREATED:
            return Refused(f"event type {event_type!r} is not {BLOB_CREATED}")
        api = data.get("api")
        if api is not None and api not in COMPLETE_APIS:
            return Refused(f"api {api!r} does not complete a blob")
        url = data.get("url")
        if not isinstance(url, str) or not url:
            return Refused("the event has no data.url")
        if not clean_authority(url):
            return Refused("the URL's host part is not a plain host[:port]")
        parts = urlsplit(url)
        host = _host(url)
        if host not in self.allowed and (parts.hostname or "").lower() not in self.allowed:
            return Refused(f"host {host!r} is not on BLOB_ALLOWED_HOSTS")
        if parts.scheme != "https" and not is_loopback(url):
            return Refused("blob URLs must be https (a token goes with the request)")
        segments = unquote(parts.path).lstrip("/").split("/")
        if len(segments) < 2:
            return Refused("the URL names no container and blob")
        return url

    def handle(self, event_type: str, data: Mapping[str, Any]) -> BlobOutcome | Refused:
        """Ingest the blob the event names, or refuse (logged) without touching the URL. A
        blob its host does not let us read is dead-lettered (outcome ``unreachable``); a 5xx
        or 408/429 answer raises, for Event Grid to deliver the event again."""
        from azure.core.exceptions import (
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        checked = self.check(event_type, data)
        if isinstance(checked, Refused):
            log.warning("BlobCreated event refused: %s", checked.reason)
            return checked
        ingest = self._blobs()
        try:
            return ingest.handle(self._client_for(checked))
        except ServiceRequestError as exc:  # no answer: refused, TLS failed, connect timeout
            reason = f"could not connect: {_first_line(exc)}"
        except ServiceResponseError as exc:  # asked, then no (complete) answer in time
            reason = f"no answer: {_first_line(exc)}"
        except HttpResponseError as exc:
            status = exc.status_code
            if status is None or not 400 <= status < 500 or status in (408, 429):
                raise
            reason = f"refused with {status} {exc.reason or ''}".rstrip()
        return self._unreachable(ingest, checked, reason)

    def _unreachable(self, ingest: BlobIngest, url: str, reason: str) -> BlobOutcome:
        source = urlsplit(url)._replace(query="", fragment="").geturl()
        ingest.dead_letters.write(
            UNTARGETED,
            [DeadLetter(f"{source}: {reason}", {"blob": source, "event": BLOB_CREATED})],
            source,
        )
        log.warning("BlobCreated event for %s dead-lettered: %s", source, reason)
        return BlobOutcome(source, "unreachable")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
