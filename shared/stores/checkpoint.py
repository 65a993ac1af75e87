"""Blob progress: how far into a blob version the rows are safely delivered.

One small JSON blob per ingested blob, ``<checkpoint container>/<container>/<name>.json``,
holding the source blob's ETag, the position of the next row to send, and whether the blob is
done. It lives apart from the source blob because writing the source's metadata would change
its ETag. A re-run of the same version resumes at ``next_row``; a changed blob (new ETag) starts
over; a finished one is not pushed again.

A table delivered to several destinations (issue 18) also keeps ``positions``: each
destination's own next row, so that a re-run sends each one only what it lacks (``next_row``
is then the least of them).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.errors import TransientError

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient


@dataclass(frozen=True)
class Checkpoint:
    etag: str
    next_row: int = 0
    done: bool = False
    sent: int = 0
    rejected: int = 0
    updated: str = ""
    #: Each destination's next row, when there are several (empty otherwise).
    positions: dict[str, int] = field(default_factory=dict)


class CheckpointStore:
    """Checkpoints as JSON blobs in one container (created on first use)."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self._ready = False

    def load(self, source: str, etag: str) -> Checkpoint:
        """The checkpoint of ``source`` (``container/name``) for this ETag, or a fresh one."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            text = self.container.download_blob(f"{source}.json").readall()
        except ResourceNotFoundError:
            return Checkpoint(etag)
        except AzureError as exc:
            raise TransientError(f"could not read the checkpoint of {source}") from exc
        saved = Checkpoint(**json.loads(text))
        return saved if saved.etag == etag else Checkpoint(etag)

    def save(self, source: str, checkpoint: Checkpoint) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError

        stamped = Checkpoint(
            **{**asdict(checkpoint), "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        )
        try:
            if not self._ready:
                with contextlib.suppress(ResourceExistsError):
                    self.container.create_container()
                self._ready = True
            self.container.upload_blob(
                f"{source}.json", json.dumps(_record(stamped)).encode(), overwrite=True
            )
        except AzureError as exc:
            raise TransientError(f"could not write the checkpoint of {source}") from exc


def _record(checkpoint: Checkpoint) -> dict[str, object]:
    """The stored form: ``positions`` only when there are several destinations, so that a
    single destination's checkpoint is written exactly as before."""
    record = asdict(checkpoint)
    if not checkpoint.positions:
        del record["positions"]
    return record
