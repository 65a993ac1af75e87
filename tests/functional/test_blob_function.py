"""The blob path under a pause far longer than its invocation: the rest of the file is handed on
as a continuation message due after the pause, and the invocation succeeds (a failed one would
spend the blob's retries). Blob ingestion as the runtime builds it, against the emulator and
Azurite."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from shared import runtime
from shared.engine.ingest import Ingestor
from shared.engine.retry import Deadline
from shared.errors import TransientError
from shared.stores.checkpoint import Checkpoint, CheckpointStore
from shared.stores.storage import blob_service
from tests.azurite import Azurite
from tests.emulator.conftest import WORKSPACE_ID, Api
from tests.functional.test_http_functions import PRODUCT_COLUMNS, rows, settings

__all__ = ["settings"]

#: Power BI's answer once the hourly row quota is spent (the queue tests use the same).
LONG_PAUSE = 3540


class LookupsRefused:
    """The Power BI client against the emulator, except that looking datasets up is refused
    for an hour, as the client raises it (429, ``retry_after`` beyond what it waits out). The
    emulator injects faults into Add Rows only, so this one call is stood in for."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def get_datasets(
        self, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        self.refused += 1
        raise TransientError(
            "Power BI answered 429 TooManyRequests", status=429, retry_after=float(LONG_PAUSE)
        )


def refusing_lookups() -> tuple[Ingestor, LookupsRefused]:
    """The process's ingestor as the runtime builds it, its dataset lookups refused."""
    ingestor = runtime.build_ingestor(runtime.get_settings())
    refused = LookupsRefused(ingestor.client)
    ingestor.client = refused
    return ingestor, refused


@pytest.fixture
def storage(
    azurite: Azurite, settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ContainerClient, QueueClient]]:
    """A fresh ingest container and rows queue (where continuations go)."""
    suffix = uuid.uuid4().hex[:10]
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    ingest = service.create_container(f"ingest-{suffix}")
    queue = QueueClient.from_connection_string(azurite.connection_string, f"rows{suffix}")
    queue.create_queue()
    monkeypatch.setenv("INGEST_CONTAINER", ingest.container_name)
    monkeypatch.setenv("CHECKPOINT_CONTAINER", f"cp-{suffix}")
    monkeypatch.setenv("DEADLETTER_CONTAINER", f"dl-{suffix}")
    monkeypatch.setenv("ROWS_QUEUE", queue.queue_name)
    runtime.reset()
    yield ingest, queue
    runtime.reset()


@pytest.fixture
def dataset(api: Api, settings: dict[str, str]) -> tuple[str, str]:
    name = f"Files-{uuid.uuid4().hex[:8]}"
    dataset_id = api.create_dataset(
        [{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name
    )
    return name, dataset_id


def upload(ingest: ContainerClient, dataset: str, count: int) -> str:
    name = f"{dataset}/Product/{uuid.uuid4().hex[:6]}.ndjson"
    ingest.upload_blob(name, "".join(json.dumps(r) + "\n" for r in rows(count)).encode())
    return name


def handed_on(queue: QueueClient, log: pytest.LogCaptureFixture) -> int:
    """Continuation messages waiting on the rows queue, none of them visible yet, each due
    after the pause by the log."""
    assert list(queue.peek_messages()) == []
    assert f"the rest is handed on, due in {LONG_PAUSE} s" in log.text
    return int(queue.get_queue_properties().approximate_message_count)


def test_a_long_pause_before_any_row_is_sent_hands_the_file_on(
    api: Api,
    dataset: tuple[str, str],
    storage: tuple[ContainerClient, QueueClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Add Rows refused for 3540 s at the file's first POST: the invocation returns
    "continued" (it does not fail, which would spend a blob retry), one continuation waits on
    the rows queue, invisible, and the file's checkpoint is still at row 0, not done."""
    name, dataset_id = dataset
    ingest, queue = storage
    blob_name = upload(ingest, name, 20)
    api.set_faults(throttle=1.0, retry_after=LONG_PAUSE)

    outcome = runtime.get_blob_ingest().handle(ingest.get_blob_client(blob_name))

    assert outcome.status == "continued" and outcome.result is not None
    assert (outcome.result.sent, outcome.result.unsent) == (0, 20)
    assert handed_on(queue, caplog) == 1
    assert api.stored_rows(dataset_id, "Product") == []
    assert api.state(dataset_id)["counters"]["injected_throttle"] == 1
    checkpoint = checkpoint_of(ingest, blob_name)
    assert (checkpoint.next_row, checkpoint.done) == (0, False)


def test_a_long_pause_on_the_lookup_before_the_push_hands_the_file_on(
    dataset: tuple[str, str],
    storage: tuple[ContainerClient, QueueClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Looking the dataset up (the ALLOWED_TARGETS check, before any row is read) refused for
    3540 s: the file is handed on as for a pause of Add Rows, and the invocation returns."""
    name, _ = dataset
    ingest, queue = storage
    blob_name = upload(ingest, name, 5)
    ingestor, refused = refusing_lookups()
    files = runtime.build_blob_ingest(runtime.get_settings(), ingestor)

    outcome = files.handle(ingest.get_blob_client(blob_name))

    assert outcome.status == "continued" and refused.refused == 1
    assert handed_on(queue, caplog) == 1
    checkpoint = checkpoint_of(ingest, blob_name)
    assert (checkpoint.next_row, checkpoint.done) == (0, False)


def checkpoint_of(ingest: ContainerClient, blob_name: str) -> Checkpoint:
    """The blob's checkpoint as the ingester keeps it (CHECKPOINT_CONTAINER)."""
    settings = runtime.get_settings()
    service = blob_service(settings.storage_connection, os.environ)
    store = CheckpointStore(service.get_container_client(settings.checkpoint_container))
    blob = ingest.get_blob_client(blob_name)
    etag = str(blob.get_blob_properties().etag)
    return store.load(f"{blob.account_name}/{ingest.container_name}/{blob_name}", etag)
