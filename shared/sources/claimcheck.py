"""Claim checks: a payload too big for a queue message waits in a blob, and the message carries
its name. A storage-queue message holds at most 64 KB, and base64 (the Functions default
encoding) takes a third of that (https://learn.microsoft.com/azure/storage/queues/storage-queues-introduction).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.errors import NotFoundError, TransientError, ValidationError
from shared.sources.envelope import Envelope
from shared.sources.messages import encode
from shared.stores.storage import blob_service

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

#: The largest message body, in bytes, that stays under 64 KB once base64-encoded (with room
#: for the queue's own envelope).
MAX_INLINE_MESSAGE_BYTES = 45_000

_lock = threading.Lock()
#: The process's stores, by (service client, container): see ClaimCheckStore.from_settings.
_stores: dict[tuple[object, str], ClaimCheckStore] = {}


class ClaimCheckStore:
    """Payloads parked in one blob container, named by date and a random id."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self._ready = False

    @classmethod
    def from_settings(
        cls, connection: str, container: str, env: Mapping[str, str]
    ) -> ClaimCheckStore:
        """The process's store for ``container`` of the connection ``connection``: one per
        process, however often it is asked for (an asynchronous HTTP request asks each time),
        over the process's one blob service client; it creates its container once."""
        service = blob_service(connection, env)
        with _lock:
            store = _stores.get((service, container))
            if store is None:
                store = _stores[(service, container)] = cls(service.get_container_client(container))
            return store

    @staticmethod
    def forget() -> None:
        """Drop the stores kept by :meth:`from_settings` (tests that change the environment)."""
        with _lock:
            _stores.clear()

    def put(self, payload: bytes) -> str:
        """Store ``payload``; return its reference, ``<container>/<name>``."""
        from azure.core.exceptions import AzureError, ResourceExistsError

        name = f"{datetime.now(UTC):%Y/%m/%d}/{uuid.uuid4().hex}.json"
        try:
            if not self._ready:
                with contextlib.suppress(ResourceExistsError):
                    self.container.create_container()
                self._ready = True
            self.container.upload_blob(name, payload)
        except AzureError as exc:
            raise TransientError(
                f"could not store a claim-check payload: {type(exc).__name__}"
            ) from exc
        return f"{self.container.container_name}/{name}"

    def get(self, reference: str) -> bytes:
        """The payload a reference names (raises NotFoundError when it is gone)."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        container, _, name = reference.partition("/")
        if container != self.container.container_name or not _usable_name(name):
            raise ValidationError(
                f"claim check {reference[:200]!r} is not a blob name in container "
                f"{self.container.container_name!r}"
            )
        try:
            return bytes(self.container.download_blob(name).readall())
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"claim-check payload {reference!r} does not exist") from exc
        except HttpResponseError as exc:
            if (
                exc.status_code is not None
                and 400 <= exc.status_code < 500
                and exc.status_code not in (408, 429)
            ):
                raise ValidationError(
                    f"claim check {reference[:200]!r} was refused: {exc.status_code}"
                ) from exc
            raise TransientError(
                f"could not read claim check {reference!r}: {type(exc).__name__}"
            ) from exc
        except ValueError as exc:  # e.g. a name the SDK cannot encode
            raise ValidationError(f"claim check {reference[:200]!r} is not a usable name") from exc
        except AzureError as exc:
            raise TransientError(
                f"could not read claim check {reference!r}: {type(exc).__name__}"
            ) from exc

    def delete(self, reference: str) -> None:
        """Remove a payload once its rows are safe (delivered or dead-lettered)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        _, _, name = reference.partition("/")
        try:
            self.container.delete_blob(name)
        except ResourceNotFoundError:
            pass  # already gone: a redelivered message whose first try got this far
        except AzureError as exc:
            raise TransientError(f"could not delete claim check {reference!r}") from exc


def _usable_name(name: str) -> bool:
    """A blob name this app could have written: no empty, '.' or '..' segment, no surrogate or
    control character, at most 1,024 characters."""
    if not name or len(name) > 1024:
        return False
    if any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 32 for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def queue_messages(
    found: Sequence[Envelope], claim_checks: Callable[[], ClaimCheckStore], *, encoded: bool = True
) -> list[str]:
    """The rows-queue messages for ``found``: each envelope as JSON (base64, as any Functions
    queue trigger reads it; plain JSON when not ``encoded``, as a plain message came), or a
    claim check naming the blob that holds a big one."""
    messages: list[str] = []
    for item in found:
        text = json.dumps(item.to_json(), ensure_ascii=False, separators=(",", ":"))
        if len(text.encode("utf-8")) > MAX_INLINE_MESSAGE_BYTES:
            reference = claim_checks().put(text.encode("utf-8"))
            text = json.dumps(
                Envelope(
                    item.target,
                    blob=reference,
                    profile=item.profile,
                    destinations=item.destinations,
                    resent=item.resent,
                ).to_json()
            )
        messages.append(encode(text) if encoded else text)
    return messages
