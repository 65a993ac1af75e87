"""The Eventhouse client against the emulator's Kusto surface and Azurite, with the real
azure-kusto-data/ingest clients: tables and mappings from datasets/SalesMarketing.json,
streaming and queued ingestion, read-back, throttling, a permanent refusal.

The emulator's identity endpoint gives the managed identity its token (audience
https://kusto.kusto.windows.net, the one the client asks for); queued ingestion goes through the
storage the emulator names in ``.get ingestion resources`` (Azurite), and ``/_emulator/kusto/
flush`` ingests the queue at once instead of waiting for the batching delay.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.destinations.eventhouse import EventhouseClient
from shared.engine.schema import DatasetDefinition, load_definitions
from shared.errors import NotFoundError, PermanentError, TransientError, ValidationError
from shared.settings import Settings
from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, REPO, EmulatorProcess
from tests.emulator.kusto_fixtures import start_kusto_emulator

DATABASE = "Sales"


@pytest.fixture(scope="module")
def kusto(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    emulator = start_kusto_emulator(
        azurite, tmp_path_factory.mktemp("kusto"), "--kusto-database", DATABASE
    )
    yield emulator
    emulator.stop()


@pytest.fixture
def client(kusto: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[EventhouseClient]:
    requests.post(f"{kusto.base}/_emulator/kusto/reset", timeout=10).raise_for_status()
    requests.delete(f"{kusto.base}/_emulator/kusto/faults", timeout=10).raise_for_status()
    # azure-identity's ManagedIdentityCredential reads these (App Service's variables).
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{kusto.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    settings = Settings.from_env({"EVENTHOUSE_URI": kusto.base, "EVENTHOUSE_DATABASE": DATABASE})
    with EventhouseClient.from_settings(settings) as built:
        yield built


@pytest.fixture(scope="module")
def sales() -> DatasetDefinition:
    return load_definitions(REPO / "datasets")["SalesMarketing"]


def products(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "ProductID": i,
            "Manufacturer": "Contoso",
            "Category": "Urban",
            "Segment": "Moderation",
            "Product": f"P{i}",
            "IsCompete": i % 2 == 0,
        }
        for i in range(start, start + count)
    ]


def flush(kusto: EmulatorProcess) -> None:
    requests.post(f"{kusto.base}/_emulator/kusto/flush", timeout=60).raise_for_status()


def test_ping_and_ensure_table_twice(client: EventhouseClient, sales: DatasetDefinition) -> None:
    assert client.ping()
    first = client.ensure_table(sales, "Product")
    # A second process (or a cold start) runs the same commands: all idempotent.
    client._ready.clear()
    assert client.ensure_table(sales, "Product") == first
    assert client.count("Product") == 0


def test_streaming_rows_are_read_back(client: EventhouseClient, sales: DatasetDefinition) -> None:
    client.ensure_table(sales, "Product")
    outcome = client.ingest("Product", products(0, 100))
    assert (outcome.method, outcome.rows) == ("streaming", 100)
    assert client.count("Product") == 100
    back = sorted(client.rows("Product", 1000), key=lambda r: r["ProductID"])
    assert back == products(0, 100)


def test_a_large_ndjson_file_is_queued(
    client: EventhouseClient, sales: DatasetDefinition, kusto: EmulatorProcess, tmp_path: Path
) -> None:
    client.ensure_table(sales, "Product")
    path = tmp_path / "products.ndjson"
    with path.open("w", encoding="utf-8") as out:
        for row in products(0, 50_000):
            out.write(json.dumps(row) + "\n")
    outcome = client.ingest_file("Product", path)
    assert outcome.method == "queued" and outcome.body_bytes == path.stat().st_size
    flush(kusto)
    assert client.count("Product") == 50_000


def test_a_stream_already_gzipped_is_queued_as_it_is(
    client: EventhouseClient, sales: DatasetDefinition, kusto: EmulatorProcess
) -> None:
    import gzip

    client.ensure_table(sales, "Product")
    body = b"".join(json.dumps(r).encode() + b"\n" for r in products(0, 10))
    client.ingest_file("Product", io.BytesIO(gzip.compress(body)), compressed=True)
    flush(kusto)
    assert client.count("Product") == 10


def test_throttled_streaming_falls_back_to_queued(
    client: EventhouseClient, sales: DatasetDefinition, kusto: EmulatorProcess
) -> None:
    client.ensure_table(sales, "Product")
    requests.put(
        f"{kusto.base}/_emulator/kusto/faults", json={"script": ["throttle"]}, timeout=10
    ).raise_for_status()
    outcome = client.ingest("Product", products(0, 20))
    assert outcome.method == "queued"
    flush(kusto)
    assert client.count("Product") == 20


def test_a_throttled_command_is_transient(
    client: EventhouseClient, sales: DatasetDefinition, kusto: EmulatorProcess
) -> None:
    client.ensure_table(sales, "Product")
    requests.put(
        f"{kusto.base}/_emulator/kusto/faults",
        json={"script": ["throttle"], "all_operations": True},
        timeout=10,
    ).raise_for_status()
    with pytest.raises(TransientError) as caught:
        client.count("Product")
    assert caught.value.status == 429 and not caught.value.maybe_delivered
    assert client.count("Product") == 0  # the script is spent: the next call goes through


def test_rows_into_a_missing_table_name_the_cause(client: EventhouseClient) -> None:
    with pytest.raises(PermanentError) as caught:
        client.ingest("NoSuchTable", products(0, 1))
    assert isinstance(caught.value, NotFoundError | ValidationError)
    assert "NoSuchTable" in str(caught.value)


def test_a_column_retyped_in_the_definition_is_refused_with_the_cause(
    client: EventhouseClient, sales: DatasetDefinition
) -> None:
    client.ensure_table(sales, "Product")
    body = json.loads(json.dumps(sales.body))
    body["tables"][0]["columns"][0]["dataType"] = "String"  # ProductID was Int64 -> long
    with pytest.raises(PermanentError) as caught:
        client.ensure_table(DatasetDefinition.from_body(body), "Product")
    assert "ProductID" in str(caught.value)


def test_an_unanswered_call_gives_up_after_eventhouse_timeout_seconds(
    kusto: EmulatorProcess, client: EventhouseClient, sales: DatasetDefinition
) -> None:
    """The clients' own defaults would wait 10 minutes (streaming) to an hour (commands) for
    an answer; ``EVENTHOUSE_TIMEOUT_SECONDS`` bounds every call, streaming and queued
    ingestion's resource lookup too, and the stall is a transient failure."""
    client.ensure_table(sales, "Product")
    settings = Settings.from_env(
        {
            "EVENTHOUSE_URI": kusto.base,
            "EVENTHOUSE_DATABASE": DATABASE,
            "EVENTHOUSE_TIMEOUT_SECONDS": "1",
        }
    )
    assert settings.require_eventhouse().timeout == 1.0
    # Every Kusto request is answered 8 s late: past 1 s plus the client's 1 s margin.
    requests.put(
        f"{kusto.base}/_emulator/kusto/faults",
        json={"latency_ms": 8000, "latency_rate": 1.0, "all_operations": True},
        timeout=10,
    ).raise_for_status()
    with EventhouseClient.from_settings(settings) as impatient:
        with pytest.raises(TransientError) as stalled:
            impatient.ping()
        assert "timed out" in str(stalled.value).lower() or "timeout" in str(stalled.value).lower()
        with pytest.raises(TransientError):
            impatient.ingest("Product", products(0, 3))
    requests.delete(f"{kusto.base}/_emulator/kusto/faults", timeout=10).raise_for_status()
    assert client.ping()  # a client with the default timeout still answers


def test_least_privilege_an_ingestor_and_viewer_uses_the_table_migrate_made(
    kusto: EmulatorProcess, client: EventhouseClient, sales: DatasetDefinition
) -> None:
    """An identity given Database Ingestor and Viewer only (no Database User, so no
    ``.create-merge``) uses a table an operator made with every column, makes its mapping and
    ingests; a table that lacks a column is refused with the cause."""
    from shared.destinations.auth import StaticTokenProvider
    from tests.emulator.kusto_fixtures import kusto_token

    def as_app(app: str) -> EventhouseClient:
        token = kusto_token(kusto, app=app)
        return EventhouseClient(
            uri=kusto.base,
            ingest_uri=kusto.base,
            tokens=StaticTokenProvider(token),
            database=DATABASE,
        )

    principals = {"operator-app": ["user"], "writer-app": ["ingestor", "viewer"]}
    requests.put(
        f"{kusto.base}/_emulator/kusto/principals", json=principals, timeout=10
    ).raise_for_status()
    try:
        with as_app("writer-app") as writer, as_app("operator-app") as operator:
            with pytest.raises(PermanentError) as missing:  # no table yet: not its to create
                writer.ensure_table(sales, "Product")
            assert missing.value.status == 403 and "user role" in str(missing.value)
            operator.ensure_table(sales, "Product")  # what `migrate` runs
        with as_app("writer-app") as writer:  # a fresh process: nothing cached
            writer.ensure_table(sales, "Product")
            outcome = writer.ingest("Product", products(0, 5))
            assert outcome.rows == 5
            body = json.loads(json.dumps(sales.body))
            body["tables"][0]["columns"].append({"name": "Margin", "dataType": "Double"})
            wider = DatasetDefinition.from_body(body)
            with pytest.raises(PermanentError) as lacking:
                writer.ensure_table(wider, "Product")
            assert lacking.value.status == 403
    finally:
        requests.delete(f"{kusto.base}/_emulator/kusto/principals", timeout=10).raise_for_status()
    flush(kusto)
    assert client.count("Product") == 5
