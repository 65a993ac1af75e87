"""Queued ingestion with azure-kusto-ingest against the emulator and Azurite: the resources it
hands out (Azurite path-style SAS URLs, which the ingest client's URL parsing handles), the
queue it polls, the managed client's streaming/queued choice and its 429 fallback."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.data_format import DataFormat
from azure.kusto.ingest import (
    IngestionProperties,
    ManagedStreamingIngestClient,
    QueuedIngestClient,
)
from azure.kusto.ingest.status import KustoIngestStatusQueues
from azure.storage.queue import QueueClient

from tests.azurite import Azurite, start_azurite
from tests.emulator.conftest import EmulatorProcess, start_emulator
from tests.emulator.kusto_fixtures import (
    DATABASE,
    kusto,
    kusto_azurite,
    kusto_emulator,
    kusto_state,
    kusto_token,
    new_table,
    rows_of,
    set_kusto_faults,
)

__all__ = ["kusto", "kusto_azurite", "kusto_emulator"]


def kcsb(emulator: EmulatorProcess) -> KustoConnectionStringBuilder:
    token = kusto_token(emulator)
    return KustoConnectionStringBuilder.with_token_provider(emulator.base, lambda: token)


def properties(table: str) -> IngestionProperties:
    return IngestionProperties(
        DATABASE, table, data_format=DataFormat.JSON, ingestion_mapping_reference="m"
    )


def json_lines(count: int, pad: int = 0) -> io.BytesIO:
    """``count`` records; ``pad`` random hex characters each (random, so gzip cannot shrink
    them: the managed client decides on the compressed size)."""
    lines = [
        json.dumps({"id": i, "name": os.urandom(pad // 2).hex() if pad else f"n{i}"})
        for i in range(count)
    ]
    return io.BytesIO("\n".join(lines).encode())


def flush(emulator: EmulatorProcess) -> int:
    response = requests.post(f"{emulator.base}/_emulator/kusto/flush", timeout=60)
    assert response.status_code == 200, response.text
    rows: int = response.json()["rows"]
    return rows


def ready_queue_length(azurite: Azurite) -> int:
    queue = QueueClient.from_connection_string(
        azurite.connection_string, "readyforaggregation-secured"
    )
    count: int = queue.get_queue_properties().approximate_message_count
    return count


def test_queued_client_lands_rows_when_the_batch_is_sealed(
    kusto_emulator: EmulatorProcess, kusto_azurite: Azurite, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    with QueuedIngestClient(kcsb(kusto_emulator)) as ingest:
        ingest.ingest_from_stream(json_lines(25), properties(table))
    # Waiting in the batch (the fixture's batching delay is an hour): nothing landed yet.
    assert rows_of(kusto, f"{table} | count") == [[0]]
    assert kusto_state(kusto_emulator)["pending_messages"] >= 0
    assert flush(kusto_emulator) == 25
    assert rows_of(kusto, f"{table} | order by id asc | take 2") == [[0, "n0"], [1, "n1"]]
    assert ready_queue_length(kusto_azurite) == 0  # the message was removed


def test_ingestion_resources_are_five_azurite_sas_urls(
    kusto_emulator: EmulatorProcess, kusto_azurite: Azurite, kusto: KustoClient
) -> None:
    rows = kusto.execute_mgmt("NetDefaultDB", ".get ingestion resources").primary_results[0]
    resources = {r["ResourceTypeName"]: r["StorageRoot"] for r in rows}
    assert set(resources) == {
        "SecuredReadyForAggregationQueue",
        "FailedIngestionsQueue",
        "SuccessfulIngestionsQueue",
        "TempStorage",
        "IngestionsStatusTable",
    }
    assert resources["TempStorage"].startswith(f"{kusto_azurite.blob}/devstoreaccount1/")
    assert "sig=" in resources["SecuredReadyForAggregationQueue"]


def test_managed_client_streams_small_and_queues_large(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    before = kusto_state(kusto_emulator)["counters"]
    with ManagedStreamingIngestClient(kcsb(kusto_emulator)) as ingest:
        ingest.ingest_from_stream(json_lines(10), properties(table))
        middle = kusto_state(kusto_emulator)["counters"]
        assert middle["streaming_requests"] == before.get("streaming_requests", 0) + 1
        assert rows_of(kusto, f"{table} | count") == [[10]]  # streamed: there at once
        # Over 4 MiB after gzip (MAX_STREAMING_SIZE_IN_BYTES): queued, not streamed.
        ingest.ingest_from_stream(json_lines(4500, pad=2000), properties(table))
    after = kusto_state(kusto_emulator)["counters"]
    assert after["streaming_requests"] == middle["streaming_requests"]
    assert flush(kusto_emulator) == 4500
    assert rows_of(kusto, f"{table} | count") == [[4510]]
    assert kusto_state(kusto_emulator)["counters"]["queued_blobs"] > before.get("queued_blobs", 0)


def test_managed_client_falls_back_to_queued_on_throttling(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    set_kusto_faults(kusto_emulator, script=["throttle"] * 3)
    with ManagedStreamingIngestClient(kcsb(kusto_emulator)) as ingest:
        # No waits between the three attempts (the SDK's own tests set this too).
        ingest._set_retry_settings(max_seconds_per_retry=0)
        ingest.ingest_from_stream(json_lines(7), properties(table))
    state = kusto_state(kusto_emulator)
    assert state["counters"]["fault_throttle"] >= 3
    assert rows_of(kusto, f"{table} | count") == [[0]]
    assert flush(kusto_emulator) == 7
    assert rows_of(kusto, f"{table} | count") == [[7]]


def test_a_failed_blob_is_reported_on_the_failed_ingestions_queue(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    with QueuedIngestClient(kcsb(kusto_emulator)) as ingest:
        ingest.ingest_from_stream(io.BytesIO(b"not json at all\n"), properties(table))
        assert flush(kusto_emulator) == 0
        failures = KustoIngestStatusQueues(ingest).failure.pop(10)
    mine = [f for f in failures if f.Table == table]
    assert [f.ErrorCode for f in mine] == ["BadRequest_NoRecordsOrWrongFormat"]


def test_a_malformed_queue_message_is_removed_and_counted(
    kusto_emulator: EmulatorProcess, kusto_azurite: Azurite
) -> None:
    before = kusto_state(kusto_emulator)["counters"].get("failed_ingestions", 0)
    queue = QueueClient.from_connection_string(
        kusto_azurite.connection_string, "readyforaggregation-secured"
    )
    queue.send_message(base64.b64encode(b"{not json").decode())
    flush(kusto_emulator)
    assert kusto_state(kusto_emulator)["counters"]["failed_ingestions"] == before + 1


@pytest.fixture(scope="module")
def eager_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """An emulator that seals batches as soon as it sees them (batching delay 0), on an Azurite
    of its own (the module's emulator would otherwise take the messages off the shared queue)."""
    tmp: Path = tmp_path_factory.mktemp("kusto-eager")
    azurite = start_azurite()
    env = {**os.environ, "EMULATOR_KUSTO_STORAGE_CONNECTION": azurite.connection_string}
    process = start_emulator("--kusto-batch-seconds", "0", tmp=tmp, env=env)
    yield process
    process.stop()
    azurite.stop()


def test_the_worker_polls_the_queue_without_a_flush(eager_emulator: EmulatorProcess) -> None:
    """The background worker, not the admin flush, ingests: the rows land on their own."""
    token = kusto_token(eager_emulator)
    with KustoClient(
        KustoConnectionStringBuilder.with_token_provider(eager_emulator.base, lambda: token)
    ) as kusto:
        table = new_table(kusto)
        with QueuedIngestClient(kcsb(eager_emulator)) as ingest:
            ingest.ingest_from_stream(json_lines(3), properties(table))
        deadline = time.monotonic() + 60  # a bound on a hang, not a timing assertion
        while rows_of(kusto, f"{table} | count") != [[3]]:
            assert time.monotonic() < deadline, kusto_state(eager_emulator)
            time.sleep(0.1)


def test_managed_client_streams_a_small_blob_by_its_uri(
    kusto_emulator: EmulatorProcess, kusto_azurite: Azurite, kusto: KustoClient
) -> None:
    """ingest_from_blob with a blob under 4 MB: streaming with sourceKind=uri (§1.8)."""
    from azure.kusto.ingest import BlobDescriptor
    from azure.storage.blob import BlobServiceClient, generate_blob_sas

    from tests.azurite import ACCOUNT, KEY

    table = new_table(kusto)
    service = BlobServiceClient.from_connection_string(kusto_azurite.connection_string)
    container = service.get_container_client("source")
    if not container.exists():
        container.create_container()
    container.upload_blob("rows.json", json_lines(4).getvalue(), overwrite=True)
    sas = generate_blob_sas(
        ACCOUNT,
        "source",
        "rows.json",
        account_key=KEY,
        permission="r",
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    url = f"{container.url}/rows.json?{sas}"
    before = kusto_state(kusto_emulator)["counters"].get("streaming_requests", 0)
    with ManagedStreamingIngestClient(kcsb(kusto_emulator)) as ingest:
        ingest.ingest_from_blob(BlobDescriptor(url, 100), properties(table))
    assert kusto_state(kusto_emulator)["counters"]["streaming_requests"] == before + 1
    assert rows_of(kusto, f"{table} | count") == [[4]]
