"""Shared pieces of the Kusto tests: an emulator with queued ingestion on Azurite, and the real
clients (azure-kusto-data / azure-kusto-ingest) pointed at it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from tests.azurite import Azurite, start_azurite
from tests.emulator.conftest import EmulatorProcess, start_emulator

KUSTO_RESOURCE = "https://kusto.kusto.windows.net"
DATABASE = "Sales"


def kusto_token(
    emulator: EmulatorProcess, audience: str = KUSTO_RESOURCE, app: str = "kusto-test-app"
) -> str:
    """An app token (``appid`` ``app``) from the emulator's admin call, for ``audience``."""
    response = requests.post(
        f"{emulator.base}/_emulator/token",
        json={"audience": audience, "identityType": "app", "subject": app},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def client(emulator: EmulatorProcess, token: str | None = None) -> KustoClient:
    """A KustoClient with a token provider (the engine and ingest URI are the emulator's)."""
    value = token or kusto_token(emulator)
    return KustoClient(
        KustoConnectionStringBuilder.with_token_provider(emulator.base, lambda: value)
    )


def new_table(kusto: KustoClient, columns: str = "id:long, name:string") -> str:
    """A fresh table with a JSON mapping ``m`` (each column from the property of its name)
    and the streaming policy on."""
    table = f"T{uuid.uuid4().hex[:8]}"
    kusto.execute_mgmt(DATABASE, f".create-merge table {table} ({columns})")
    names = [c.split(":")[0].strip() for c in columns.split(",")]
    mapping = ",".join(f'{{"column":"{n}","Properties":{{"Path":"$.{n}"}}}}' for n in names)
    kusto.execute_mgmt(
        DATABASE, f".create-or-alter table {table} ingestion json mapping \"m\" '[{mapping}]'"
    )
    kusto.execute_mgmt(DATABASE, f".alter table {table} policy streamingingestion enable")
    return table


def kusto_state(emulator: EmulatorProcess) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{emulator.base}/_emulator/kusto/state", timeout=10).json()
    return body


def set_kusto_faults(emulator: EmulatorProcess, **plan: Any) -> None:
    response = requests.put(f"{emulator.base}/_emulator/kusto/faults", json=plan, timeout=10)
    assert response.status_code == 200, response.text


def rows_of(kusto: KustoClient, query: str) -> list[list[Any]]:
    """The primary result's rows of a query, as lists."""
    result = kusto.execute_query(DATABASE, query).primary_results[0]
    return [list(row) for row in result]


def start_kusto_emulator(azurite: Azurite, tmp: Path, *args: str) -> EmulatorProcess:
    """An emulator (Power BI and Kusto) whose queued ingestion goes through ``azurite``."""
    env = {**os.environ, "EMULATOR_KUSTO_STORAGE_CONNECTION": azurite.connection_string}
    return start_emulator(*args, tmp=tmp, env=env)


@pytest.fixture(scope="module")
def kusto_azurite() -> Iterator[Azurite]:
    server = start_azurite()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kusto_emulator(
    kusto_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorProcess]:
    """An emulator whose queued ingestion uses Azurite; batches wait an hour unless flushed
    (``POST /_emulator/kusto/flush``), so tests decide when they land."""
    process = start_kusto_emulator(
        kusto_azurite, tmp_path_factory.mktemp("kusto"), "--kusto-batch-seconds", "3600"
    )
    yield process
    process.stop()


@pytest.fixture
def kusto(kusto_emulator: EmulatorProcess) -> Iterator[KustoClient]:
    """A client with a token provider; the fault plan is cleared afterwards."""
    with client(kusto_emulator) as kusto_client:
        yield kusto_client
    requests.delete(f"{kusto_emulator.base}/_emulator/kusto/faults", timeout=10)
