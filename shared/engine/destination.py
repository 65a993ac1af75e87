"""The engine's own view of where rows go: the calls :class:`~shared.engine.ingest.Ingestor`
makes, and nothing else.

The engine never imports a concrete client; :class:`shared.destinations.powerbi.PowerBIClient`
implements this protocol (checked by mypy wherever one is passed to an ``Ingestor``), and a
test or benchmark can pass any object that does. The shape is Power BI's push model (a
workspace holds datasets, a dataset holds tables, rows are added in batches), which is the
model the engine validates and paces for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from shared.engine.retry import Deadline

if TYPE_CHECKING:
    from shared.engine.schema import DatasetDefinition


class Destination(Protocol):
    """A push-dataset service: workspaces, datasets, tables, and Add Rows.

    ``deadline`` (the trigger's time budget) bounds a call's retries and its request timeouts.
    """

    def ping(self) -> None:
        """One quick authenticated call, not retried (health checks)."""
        ...

    def group_id(self, name: str, *, deadline: Deadline | None = None) -> str:
        """The id of the workspace called ``name``."""
        ...

    def get_datasets(
        self, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        """The datasets of a workspace (``None``: the default one), each with ``id`` and
        ``name``."""
        ...

    def create_dataset(
        self,
        definition: dict[str, Any],
        workspace: str | None = None,
        retention: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """Create a dataset from its definition (``retention``: Power BI's
        ``defaultRetentionPolicy``, None or basicFIFO); the answer carries its ``id``."""
        ...

    def get_tables(
        self, dataset_id: str, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        """A dataset's tables, each with ``name`` and ``columns``."""
        ...

    def put_table(
        self,
        dataset_id: str,
        table: dict[str, Any],
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """Replace a table's schema (used only to add columns)."""
        ...

    def post_rows(
        self,
        dataset_id: str,
        table: str,
        body: bytes,
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> None:
        """Send one ready-made ``{"rows": [...]}`` body, once. An expired token is dropped
        before the error is raised, so that the retry policy's one re-send gets a fresh one."""
        ...


class TableStore(Protocol):
    """A KQL database cluster (an Eventhouse, Azure Data Explorer): tables made from a dataset
    definition, and batches of validated rows ingested into them.
    :class:`shared.destinations.eventhouse.EventhouseClient` implements it."""

    def ensure_table(
        self,
        definition: DatasetDefinition,
        table: str,
        *,
        database: str | None = None,
        name: str | None = None,
    ) -> Any:
        """Create or extend ``table`` of ``definition`` (as ``name``) and its ingestion mapping;
        idempotent."""
        ...

    def ingest(
        self,
        table: str,
        rows: Iterable[Mapping[str, Any]],
        database: str | None = None,
        *,
        queued: bool = False,
    ) -> Any:
        """Ingest one batch of rows into ``table``, once (not idempotent: a
        :class:`~shared.errors.TransientError` with ``maybe_delivered`` may have stored them);
        ``queued``: by queued (bulk) ingestion, not streaming."""
        ...
