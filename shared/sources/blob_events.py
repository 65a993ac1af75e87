"""Blob Created events from other storage accounts: ingest the blob an event names, but only
from an allow-listed account.

An Event Grid subscription on another account delivers ``Microsoft.Storage.BlobCreated``
events (Event Grid or CloudEvents schema) whose ``data.url`` names the new blob. The handler
reads that blob with the managed identity, so it must never follow a URL to a host that is not
on ``BLOB_ALLOWED_HOSTS``: the token would go wherever an event says. Anything else is refused
and logged, with no request made.
(Event schema: https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from shared.settings import clean_authority, is_loopback
from shared.sources.blob_ingest import BlobIngest, BlobOutcome

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger(__name__)

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
#: APIs that mean a block blob is complete (Event Grid blob schema: filter on these).
COMPLETE_APIS = {"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"}


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
        """Ingest the blob the event names, or refuse (logged) without touching the URL."""
        checked = self.check(event_type, data)
        if isinstance(checked, Refused):
            log.warning("BlobCreated event refused: %s", checked.reason)
            return checked
        return self._blobs().handle(self._client_for(checked))
