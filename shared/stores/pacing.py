"""The shared pacing ledger in Azure Table storage: one entity per dataset, ETag concurrency.

:class:`~shared.engine.shared_governor.SharedGovernor` decides; this module only reads and
writes its records, and translates the storage SDK's exceptions (in :func:`_translated`, the one
place) into :class:`~shared.errors.LedgerConflict` (someone wrote first) and
:class:`~shared.errors.LedgerUnavailable` (storage cannot be used now).

Why Table storage: each Add Rows call costs two small conditional writes (see the governor);
a table transaction is billed at a fraction of a blob write (Azure Storage pricing, "Table
storage: $0.00036 per 10,000 transactions" against "$0.05-0.065 per 10,000 write operations"
on hot blobs), and an entity's ETag gives the compare-and-swap needed
(https://learn.microsoft.com/rest/api/storageservices/update-entity2, If-Match). The entity is
``PartitionKey`` = dataset id, ``RowKey`` = ``pace``: one partition per dataset, so datasets
never contend with each other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import LedgerConflict, LedgerUnavailable

if TYPE_CHECKING:
    from azure.data.tables import TableClient

ROW_KEY = "pace"
#: Storage calls made while a POST waits for its slot: an account that cannot be reached
#: (refused, unresolvable: fast) falls back to the local share at once; a slow answer is
#: waited for a while, because a process on its local share beside others on the ledger may
#: exceed the quota they share (one retry; seconds to connect and to read: a 5 s read
#: timeout fell back under a loaded test machine's Azurite and met a "pending" 429).
CLIENT_OPTIONS: Mapping[str, Any] = {
    "retry_total": 1,
    "connection_timeout": 3,
    "read_timeout": 15,
}


class _Missing(Exception):
    """404: no such entity, or no such table."""


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """The SDK's exceptions as the ledger's: 412 and 409 are conflicts, 404 is missing, the
    rest is trouble."""
    from azure.core.exceptions import AzureError, HttpResponseError

    try:
        yield
    except HttpResponseError as exc:
        if exc.status_code == 404:
            raise _Missing(action) from None
        if exc.status_code in (409, 412):
            raise LedgerConflict(action) from None
        raise LedgerUnavailable(
            f"{action}: storage answered {exc.status_code} ({exc.reason or 'no reason'})"
        ) from None
    except AzureError as exc:
        raise LedgerUnavailable(f"{action}: {type(exc).__name__}") from None


class TableLedger:
    """Records in one table; the table is created on first write."""

    def __init__(self, client: Callable[[], TableClient]) -> None:
        """``client``: how to get the table's client (built once per process elsewhere; a
        missing setting raises ConfigError there, which is not storage trouble)."""
        self._client = client
        self._lock = threading.Lock()

    def read(self, dataset: str) -> tuple[dict[str, Any] | None, str | None]:
        """The dataset's record and its ETag; (None, None) when there is none yet."""
        client = self._client()
        try:
            with _translated(f"reading the pacing record of {dataset}"):
                entity = client.get_entity(dataset, ROW_KEY)
        except _Missing:
            return None, None
        return dict(entity), str(entity.metadata["etag"])

    def write(self, dataset: str, record: dict[str, Any], version: str | None) -> str:
        """Replace the record if its ETag is still ``version`` (None: insert, if absent)."""
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        client = self._client()
        entity = {"PartitionKey": dataset, "RowKey": ROW_KEY, **record}
        action = f"writing the pacing record of {dataset}"
        for _ in range(2):
            try:
                with _translated(action):
                    if version is None:
                        answer = client.create_entity(entity)
                    else:
                        answer = client.update_entity(
                            entity,
                            mode=UpdateMode.REPLACE,
                            etag=version,
                            match_condition=MatchConditions.IfNotModified,
                        )
                return str(answer["etag"])
            except _Missing:
                if version is not None:
                    raise LedgerConflict(action) from None  # deleted since it was read
                self._create_table(client)  # the first record of all: no table yet
        raise LedgerUnavailable(f"{action}: the table {client.table_name} could not be made")

    def _create_table(self, client: TableClient) -> None:
        # A 409 (made by another process meanwhile) is as good as made here.
        with (
            self._lock,
            contextlib.suppress(LedgerConflict),
            _translated(f"creating the table {client.table_name}"),
        ):
            client.create_table()
