"""The dead-letter store: rows that cannot be delivered, kept with the reason.

Each write is one JSON-lines blob,
``<container>/<yyyy>/<mm>/<dd>/<dataset>/<table>/<time>-<id>.jsonl``, one line per row: the
target, the source (file and line, message id...), the row's index, the column and reason, the
service's status and code when Power BI refused it, the destination that refused it (``powerbi``
or ``eventhouse``; null for a row refused before any destination, by validation: a replay
sends it to every destination of its table, and a letter with a destination only to that one),
the time, and the row itself as received.
Nothing is dropped silently: if the store cannot be written, the caller gets a
:class:`~shared.errors.TransientError` and must not acknowledge its input.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from shared.contracts import Target
from shared.errors import TransientError
from shared.stores.storage import blob_service

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient


@dataclass(frozen=True)
class DeadLetter:
    """One undeliverable row and why."""

    reason: str
    row: Any
    index: int | None = None
    column: str | None = None
    status: int | None = None
    code: str | None = None
    #: The destination that refused the row; None when it was refused before delivery.
    destination: str | None = None


class DeadLetterStore(Protocol):
    """Somewhere to keep undeliverable rows; returns where they went."""

    def write(self, target: Target, letters: Sequence[DeadLetter], source: str | None) -> str: ...


class BlobDeadLetterStore:
    """Dead letters as JSON-lines blobs in one container (created on first use)."""

    def __init__(
        self, container: ContainerClient, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.container = container
        self._clock = clock
        self._ready = False

    @classmethod
    def from_settings(
        cls, connection: str, container: str, env: Mapping[str, str]
    ) -> BlobDeadLetterStore:
        """Build from a Functions-style connection: the setting ``connection`` holds a
        connection string, or ``<connection>__blobServiceUri`` (``__serviceUri``) names the
        account for the managed identity (``<connection>__clientId`` for a user-assigned one)."""
        service = blob_service(connection, env)
        return cls(service.get_container_client(container))

    def write(self, target: Target, letters: Sequence[DeadLetter], source: str | None) -> str:
        """Store ``letters`` as one blob; return its name. Raises TransientError on failure."""
        from azure.core.exceptions import AzureError, ResourceExistsError

        now = self._clock()
        lines = [
            json.dumps(
                {
                    "target": target.to_json(),
                    "source": source,
                    "time": now.isoformat(),
                    "index": letter.index,
                    "column": letter.column,
                    "reason": letter.reason,
                    "status": letter.status,
                    "code": letter.code,
                    "destination": letter.destination,
                    "row": letter.row,
                },
                ensure_ascii=False,
                default=repr,
            )
            for letter in letters
        ]
        name = (
            f"{now:%Y/%m/%d}/{quote(target.dataset, safe='')}/{quote(target.table, safe='')}/"
            f"{now:%H%M%S}-{uuid.uuid4().hex}.jsonl"
        )
        try:
            if not self._ready:
                with contextlib.suppress(ResourceExistsError):
                    self.container.create_container()
                self._ready = True
            self.container.upload_blob(
                name,
                ("\n".join(lines) + "\n").encode("utf-8"),
                metadata={"rows": str(len(letters)), "replayed": "false"},
            )
        except AzureError as exc:
            raise TransientError(
                f"could not write {len(letters)} dead letters: {type(exc).__name__}"
            ) from exc
        return f"{self.container.container_name}/{name}"
