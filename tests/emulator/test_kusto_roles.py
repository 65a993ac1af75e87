"""Database roles on the Kusto surface, with azure-kusto-data: who may query, ingest, create
tables and set policies ([DXD] access-control/role-based-access-control and each command's
"Permissions"). Without principals configured everyone may do everything (the other tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
from azure.kusto.data import KustoClient
from azure.kusto.data.exceptions import KustoServiceError

from tests.emulator.conftest import EmulatorProcess
from tests.emulator.kusto_fixtures import (
    DATABASE,
    client,
    kusto_azurite,
    kusto_emulator,
    kusto_token,
    rows_of,
)
from tests.emulator.test_kusto import streaming_ingest

__all__ = ["kusto_azurite", "kusto_emulator"]


@pytest.fixture
def roles(kusto_emulator: EmulatorProcess) -> Iterator[str]:
    """admin-app: admin; user-app: user; writer-app: ingestor + viewer; reader-app: viewer;
    others: nothing. Yields the emulator's base URL; the principals are cleared afterwards."""
    base = kusto_emulator.base
    principals = {
        "admin-app": ["admin"],
        "user-app": ["user"],
        "writer-app": ["ingestor", "viewer"],
        "reader-app": ["viewer"],
    }
    response = requests.put(f"{base}/_emulator/kusto/principals", json=principals, timeout=10)
    assert response.status_code == 200, response.text
    yield base
    requests.delete(f"{base}/_emulator/kusto/principals", timeout=10).raise_for_status()


def as_app(emulator: EmulatorProcess, app: str) -> KustoClient:
    return client(emulator, kusto_token(emulator, app=app))


def refused(call: object) -> str:
    """The 403's text, from a zero-argument call that must be refused."""
    assert callable(call)
    with pytest.raises(KustoServiceError) as error:
        call()
    assert "403" in str(error.value) or "not authorized" in str(error.value), error.value
    return str(error.value)


def test_each_role_does_what_the_documentation_says(
    kusto_emulator: EmulatorProcess, roles: str
) -> None:
    table = f"T{uuid.uuid4().hex[:8]}"
    create = f".create-merge table {table} (id:long, name:string)"
    mapping = (
        f'.create-or-alter table {table} ingestion json mapping "m" '
        '\'[{"column":"id","Properties":{"Path":"$.id"}},'
        '{"column":"name","Properties":{"Path":"$.name"}}]\''
    )
    policy = f".alter table {table} policy streamingingestion enable"
    with (
        as_app(kusto_emulator, "writer-app") as writer,
        as_app(kusto_emulator, "reader-app") as reader,
        as_app(kusto_emulator, "user-app") as user,
        as_app(kusto_emulator, "admin-app") as admin,
        as_app(kusto_emulator, "stranger-app") as stranger,
    ):
        # Database User creates tables; Ingestor and Viewer may not.
        text = refused(lambda: writer.execute_mgmt(DATABASE, create))
        assert "writer-app" in text and "user role" in text
        refused(lambda: reader.execute_mgmt(DATABASE, create))
        user.execute_mgmt(DATABASE, create)
        # The table's creator is its Table Admin: it may set the policy; an ingestor may not.
        refused(lambda: writer.execute_mgmt(DATABASE, policy))
        user.execute_mgmt(DATABASE, policy)
        # A table mapping needs Table Ingestor; a viewer may not make one.
        refused(lambda: reader.execute_mgmt(DATABASE, mapping))
        writer.execute_mgmt(DATABASE, mapping)
        # Ingestor streams rows; a viewer may not; the ingestor cannot query them.
        streaming_ingest(writer, table, [{"id": 1, "name": "a"}])
        refused(lambda: streaming_ingest(reader, table, [{"id": 2, "name": "b"}]))
        assert rows_of(reader, f"{table} | count") == [[1]]
        assert writer.execute_mgmt(DATABASE, ".show tables").primary_results[0]  # + viewer
        # A principal with no role is refused everything; an admin does anything.
        refused(lambda: stranger.execute_mgmt(DATABASE, ".show version"))
        refused(lambda: rows_of(stranger, f"{table} | count"))
        other = f"T{uuid.uuid4().hex[:8]}"
        admin.execute_mgmt(DATABASE, f".create-merge table {other} (id:long)")
        refused(lambda: user.execute_mgmt(DATABASE, f".drop table {other}"))  # not its table
        admin.execute_mgmt(DATABASE, f".drop table {other}")
        user.execute_mgmt(DATABASE, f".drop table {table}")  # its own: it is the Table Admin


def test_principals_are_checked_and_cleared(kusto_emulator: EmulatorProcess) -> None:
    base = kusto_emulator.base
    bad = requests.put(f"{base}/_emulator/kusto/principals", json={"x": ["owner"]}, timeout=10)
    assert bad.status_code == 400 and "roles among" in bad.json()["error"]
    requests.put(f"{base}/_emulator/kusto/principals", json={"x": ["viewer"]}, timeout=10)
    assert requests.get(f"{base}/_emulator/kusto/principals", timeout=10).json() == {
        "x": ["viewer"]
    }
    requests.delete(f"{base}/_emulator/kusto/principals", timeout=10).raise_for_status()
    with as_app(kusto_emulator, "anyone") as anyone:  # open again
        assert anyone.execute_mgmt(DATABASE, ".show version").primary_results[0]
