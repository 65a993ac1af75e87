"""The emulator's state: workspaces, datasets, tables and rows, in SQLite.

SQLite gives one code path for both modes: ``:memory:`` by default, a file with ``--db`` so that
datasets and rows survive a restart. Metadata is small and also kept in memory; rows live only in
SQLite. The server runs on one event loop, so one connection is used from one thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from emulator.access import Member, TenantSetting

MY_WORKSPACE = ""  # workspace key of "My workspace"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS workspaces (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, workspace TEXT NOT NULL, name TEXT NOT NULL, retention TEXT NOT NULL,
    mode TEXT NOT NULL, created TEXT NOT NULL, definition TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tables (
    dataset TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL,
    definition TEXT NOT NULL, PRIMARY KEY (dataset, name));
CREATE TABLE IF NOT EXISTS rows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, tbl TEXT NOT NULL,
    received REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rows_by_table ON rows (dataset, tbl, seq);
CREATE TABLE IF NOT EXISTS members (
    workspace TEXT NOT NULL, identifier TEXT NOT NULL, principal_type TEXT NOT NULL,
    access_right TEXT NOT NULL, display_name TEXT, position INTEGER NOT NULL,
    PRIMARY KEY (workspace, identifier));
CREATE TABLE IF NOT EXISTS member_lists (workspace TEXT PRIMARY KEY);
"""


@dataclass
class Column:
    """A column: its name, canonical type, and the definition as the client sent it."""

    name: str
    data_type: str
    definition: dict[str, Any]


@dataclass
class Table:
    """A table of a push dataset, with its row count kept up to date."""

    name: str
    columns: list[Column]
    definition: dict[str, Any]
    row_count: int = 0

    def column_types(self) -> dict[str, str]:
        return {column.name: column.data_type for column in self.columns}

    def to_api(self) -> dict[str, Any]:
        """The table as Get Tables and Put Table return it: each column's ``dataType`` in the
        service's own spelling (``Int64``, ``Double``, ``Decimal``, ``Boolean``, ``DateTime``,
        ``String``, the names of the "Dataset properties" type table, see emulator/values.py),
        whatever alias or case the table was defined with, as Power BI normalises them."""
        body = {k: v for k, v in self.definition.items() if k not in ("rows", "columns")}
        body["name"] = self.name
        body["columns"] = [
            {**column.definition, "dataType": column.data_type} for column in self.columns
        ]
        return body


@dataclass
class Dataset:
    """A dataset in a workspace (``MY_WORKSPACE`` for My workspace)."""

    id: str
    workspace: str
    name: str
    retention: str
    mode: str
    created: str
    definition: dict[str, Any]
    tables: dict[str, Table] = field(default_factory=dict)

    @property
    def is_push(self) -> bool:
        return self.mode in ("Push", "PushStreaming")

    def to_api(self, base_url: str) -> dict[str, Any]:
        """The dataset as Get Dataset returns it (the properties a push dataset has)."""
        group = f"groups/{self.workspace}/" if self.workspace else ""
        return {
            "id": self.id,
            "name": self.name,
            "webUrl": f"{base_url}/{group}datasets/{self.id}",
            "addRowsAPIEnabled": self.is_push,
            "configuredBy": "emulator@contoso.com",
            "isRefreshable": False,
            "isEffectiveIdentityRequired": False,
            "isEffectiveIdentityRolesRequired": False,
            "isOnPremGatewayRequired": False,
            "targetStorageMode": "Abf",
            "createdDate": self.created,
        }


class Store:
    """All persistent state. ``path`` is a SQLite file, or ``:memory:``."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL" if path != ":memory:" else "PRAGMA temp_store=2")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.workspaces: dict[str, str] = dict(self._db.execute("SELECT id, name FROM workspaces"))
        self.datasets: dict[str, Dataset] = {}
        #: Per workspace, its members by lower-cased identifier (object id), in the order added.
        #: A workspace absent here never had a list set (an older --db file): the emulator gives
        #: it the default members at start.
        self.members: dict[str, dict[str, Member]] = {}
        self._load()

    def _load(self) -> None:
        for dataset_id, workspace, name, retention, mode, created, definition in self._db.execute(
            "SELECT id, workspace, name, retention, mode, created, definition FROM datasets"
        ):
            dataset = Dataset(
                dataset_id, workspace, name, retention, mode, created, json.loads(definition)
            )
            self.datasets[dataset.id] = dataset
        for dataset_id, definition in self._db.execute(
            "SELECT dataset, definition FROM tables ORDER BY dataset, position"
        ):
            table = _table_from_json(json.loads(definition))
            (table.row_count,) = self._db.execute(
                "SELECT COUNT(*) FROM rows WHERE dataset = ? AND tbl = ?", (dataset_id, table.name)
            ).fetchone()
            self.datasets[dataset_id].tables[table.name] = table
        for (workspace,) in self._db.execute("SELECT workspace FROM member_lists"):
            self.members[workspace] = {}
        for workspace, identifier, principal_type, right, display in self._db.execute(
            "SELECT workspace, identifier, principal_type, access_right, display_name "
            "FROM members ORDER BY workspace, position"
        ):
            member = Member(identifier, principal_type, right, display)
            self.members.setdefault(workspace, {})[identifier.lower()] = member

    # -- meta -----------------------------------------------------------------------------

    def secret(self, key: str, make: bytes) -> bytes:
        """Return the stored secret ``key``, storing ``make`` first if there is none."""
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, make))
        (value,) = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes(value)

    # -- workspaces -----------------------------------------------------------------------

    def add_workspace(self, name: str, workspace_id: str | None = None) -> str:
        """Create (or rename) a workspace and return its id."""
        workspace_id = str(uuid.UUID(workspace_id)) if workspace_id else str(uuid.uuid4())
        self._db.execute(
            "INSERT INTO workspaces (id, name) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            (workspace_id, name),
        )
        self.workspaces[workspace_id] = name
        return workspace_id

    # -- members and the tenant setting ---------------------------------------------------

    def set_members(self, workspace: str, members: list[Member]) -> None:
        """Replace a workspace's access list (an empty list: nobody may use it)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM members WHERE workspace = ?", (workspace,))
            self._db.execute(
                "INSERT OR IGNORE INTO member_lists (workspace) VALUES (?)", (workspace,)
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        workspace,
                        m.identifier,
                        m.principal_type,
                        m.access_right,
                        m.display_name,
                        position,
                    )
                    for position, m in enumerate(members)
                ],
            )
        self.members[workspace] = {m.identifier.lower(): m for m in members}

    def put_member(self, workspace: str, member: Member) -> None:
        """Add a member, or change an existing one's role (keeping its place)."""
        members = dict(self.members.get(workspace, {}))
        members[member.identifier.lower()] = member
        self.set_members(workspace, list(members.values()))

    def remove_member(self, workspace: str, identifier: str) -> None:
        members = dict(self.members.get(workspace, {}))
        members.pop(identifier.lower(), None)
        self.set_members(workspace, list(members.values()))

    def tenant(self) -> TenantSetting:
        """The stored tenant setting (the default one if none was stored)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'tenant'").fetchone()
        return TenantSetting.from_json(json.loads(row[0])) if row else TenantSetting()

    def set_tenant(self, tenant: TenantSetting) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('tenant', ?)",
            (json.dumps(tenant.to_json()).encode(),),
        )

    # -- datasets and tables --------------------------------------------------------------

    def create_dataset(
        self,
        workspace: str,
        name: str,
        retention: str,
        mode: str,
        tables: list[Table],
        definition: dict[str, Any],
    ) -> Dataset:
        """Store a new dataset (names need not be unique, as in the service)."""
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        dataset = Dataset(str(uuid.uuid4()), workspace, name, retention, mode, created, definition)
        self._db.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?)",
            (dataset.id, workspace, name, retention, mode, created, json.dumps(definition)),
        )
        for position, table in enumerate(tables):
            dataset.tables[table.name] = table
            self._save_table(dataset.id, table, position)
        self.datasets[dataset.id] = dataset
        return dataset

    def _save_table(self, dataset_id: str, table: Table, position: int) -> None:
        self._db.execute(
            "INSERT INTO tables (dataset, name, position, definition) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dataset, name) DO UPDATE SET definition = excluded.definition",
            (dataset_id, table.name, position, json.dumps(_table_to_json(table))),
        )

    def replace_table(self, dataset: Dataset, table: Table) -> None:
        """Replace a table's schema (Put Table); rows keep the columns that remain."""
        table.row_count = dataset.tables[table.name].row_count
        position = list(dataset.tables).index(table.name)
        dataset.tables[table.name] = table
        self._save_table(dataset.id, table, position)

    def delete_dataset(self, dataset: Dataset) -> None:
        self._db.execute("DELETE FROM rows WHERE dataset = ?", (dataset.id,))
        self._db.execute("DELETE FROM tables WHERE dataset = ?", (dataset.id,))
        self._db.execute("DELETE FROM datasets WHERE id = ?", (dataset.id,))
        del self.datasets[dataset.id]

    # -- rows -----------------------------------------------------------------------------

    def add_rows(self, dataset: Dataset, table: Table, rows: list[dict[str, Any]]) -> None:
        """Append rows in order. The caller has already checked and normalised them."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO rows (dataset, tbl, received, data) VALUES (?, ?, ?, ?)",
                [(dataset.id, table.name, now, json.dumps(row)) for row in rows],
            )
        table.row_count += len(rows)

    def trim_oldest(self, dataset: Dataset, table: Table, keep: int) -> int:
        """Drop the oldest rows so that ``keep`` remain; return how many were dropped."""
        excess = table.row_count - keep
        if excess <= 0:
            return 0
        self._db.execute(
            "DELETE FROM rows WHERE seq IN (SELECT seq FROM rows WHERE dataset = ? AND tbl = ? "
            "ORDER BY seq LIMIT ?)",
            (dataset.id, table.name, excess),
        )
        table.row_count -= excess
        return excess

    def delete_rows(self, dataset: Dataset, table: Table) -> None:
        self._db.execute("DELETE FROM rows WHERE dataset = ? AND tbl = ?", (dataset.id, table.name))
        table.row_count = 0

    def read_rows(
        self, dataset: Dataset, table: Table, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Rows in arrival order, oldest first."""
        cursor = self._db.execute(
            "SELECT data FROM rows WHERE dataset = ? AND tbl = ? ORDER BY seq LIMIT ? OFFSET ?",
            (dataset.id, table.name, -1 if limit is None else limit, offset),
        )
        return [json.loads(data) for (data,) in cursor]

    def newest_rows(self, dataset: Dataset, table: Table, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` newest rows, newest first."""
        cursor = self._db.execute(
            "SELECT data FROM rows WHERE dataset = ? AND tbl = ? ORDER BY seq DESC LIMIT ?",
            (dataset.id, table.name, limit),
        )
        return [json.loads(data) for (data,) in cursor]

    def close(self) -> None:
        self._db.close()


def _table_to_json(table: Table) -> dict[str, Any]:
    return {
        "name": table.name,
        "definition": table.definition,
        "columns": [[c.name, c.data_type, c.definition] for c in table.columns],
    }


def _table_from_json(data: dict[str, Any]) -> Table:
    return Table(
        name=data["name"],
        columns=[
            Column(name, data_type, definition) for name, data_type, definition in data["columns"]
        ],
        definition=data["definition"],
    )
