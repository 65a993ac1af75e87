"""The queue function called directly with queue messages, against the emulator and Azurite."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import BlobServiceClient

from functions.queue import ingest_queue
from shared import runtime
from shared.errors import TransientError
from shared.sources.claimcheck import ClaimCheckStore
from tests.azurite import Azurite
from tests.emulator.conftest import WORKSPACE_ID, Api
from tests.functional.test_http_functions import PRODUCT_COLUMNS, rows, settings

__all__ = ["settings"]


@pytest.fixture
def dataset(api: Api, settings: dict[str, str]) -> tuple[str, str]:
    """A fresh dataset in the workspace: (name, id)."""
    name = f"Queue-{uuid.uuid4().hex[:8]}"
    dataset_id = api.create_dataset(
        [{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name
    )
    return name, dataset_id


@pytest.fixture
def dead_letter_container(settings: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    container = f"dl-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DEADLETTER_CONTAINER", container)
    runtime.reset()
    return container


def message(body: Any, *, encode: bool = True, dequeue_count: int = 1) -> QueueMessage:
    text = body if isinstance(body, str | bytes) else json.dumps(body)
    raw = text.encode() if isinstance(text, str) else text
    return QueueMessage(
        id=uuid.uuid4().hex,
        body=base64.b64encode(raw) if encode else raw,
        dequeue_count=dequeue_count,
    )


def dead_letters(azurite: Azurite, container: str) -> list[dict[str, Any]]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs = client.get_container_client(container)
    lines: list[dict[str, Any]] = []
    for blob in blobs.list_blobs():
        text = blobs.download_blob(blob.name).readall().decode()
        lines.extend(json.loads(line) for line in text.splitlines())
    return lines


def test_a_message_s_rows_arrive(api: Api, dataset: tuple[str, str]) -> None:
    """A base64 envelope's rows are pushed; the function returns (the message completes)."""
    name, dataset_id = dataset
    asyncio.run(ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(3)})))
    assert [r["ProductID"] for r in api.stored_rows(dataset_id, "Product")] == [0, 1, 2]


def test_concurrent_messages_share_posts(api: Api, dataset: tuple[str, str]) -> None:
    """60 one-row messages handled at once take one POST, each row once."""
    name, dataset_id = dataset

    async def handle_all() -> None:
        await asyncio.gather(
            *(
                ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(1, i)}))
                for i in range(60)
            )
        )

    asyncio.run(handle_all())
    stored = sorted(r["ProductID"] for r in api.stored_rows(dataset_id, "Product"))
    assert stored == list(range(60))
    assert api.state(dataset_id)["counters"]["posts_accepted"] == 1


def test_claim_check_message(
    api: Api, azurite: Azurite, settings: dict[str, str], dataset: tuple[str, str]
) -> None:
    """A message that names a claim-check blob delivers the blob's rows, then drops the blob."""
    name, dataset_id = dataset
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    store = ClaimCheckStore(service.get_container_client(settings["CLAIMCHECK_CONTAINER"]))
    reference = store.put(json.dumps({"rows": rows(5)}).encode())
    asyncio.run(ingest_queue(message({"dataset": name, "table": "Product", "blob": reference})))
    assert len(api.stored_rows(dataset_id, "Product")) == 5
    container, _, blob = reference.partition("/")
    assert not service.get_container_client(container).get_blob_client(blob).exists()


@pytest.mark.parametrize(
    ("body", "encode", "says"),
    [
        ("%%% not base64 %%%", False, "neither base64 nor JSON"),
        ("not json at all", True, "not valid JSON"),
        ({"table": "Product", "rows": []}, True, "message.dataset"),
        ({"dataset": "x", "table": "Product", "rows": "nope"}, True, "message.rows"),
        (
            {"dataset": "x", "table": "Product", "blob": "rows-payloads/none.json"},
            True,
            "claim check",
        ),
    ],
    ids=["not-base64", "not-json", "no-dataset", "rows-not-array", "missing-claim-check"],
)
def test_malformed_messages_are_dead_lettered_on_first_delivery(
    azurite: Azurite, dead_letter_container: str, body: Any, encode: bool, says: str
) -> None:
    """A message that cannot be read is dead-lettered with the reason; the function returns, so
    the host completes it instead of retrying it five times."""
    asyncio.run(ingest_queue(message(body, encode=encode)))
    (letter,) = dead_letters(azurite, dead_letter_container)
    assert says in letter["reason"] and letter["source"].startswith("queue message")


def test_unknown_table_and_bad_rows_are_dead_lettered(
    api: Api, azurite: Azurite, dead_letter_container: str, dataset: tuple[str, str]
) -> None:
    """An unknown table dead-letters its rows; an over-long string dead-letters its row only."""
    name, dataset_id = dataset
    asyncio.run(ingest_queue(message({"dataset": name, "table": "Nope", "rows": rows(2)})))
    long_row = {"ProductID": 99, "Product": "x" * 4_001}
    asyncio.run(
        ingest_queue(message({"dataset": name, "table": "Product", "rows": [*rows(1), long_row]}))
    )
    letters = dead_letters(azurite, dead_letter_container)
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(letters) == 3
    assert sum("no table 'Nope'" in r for r in reasons) == 2
    assert sum("4,000" in r for r in reasons) == 1
    assert [r["ProductID"] for r in api.stored_rows(dataset_id, "Product")] == [0]


def test_throttling_past_the_budget_raises_for_redelivery(
    api: Api, dataset: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rows cannot be delivered in time, the function raises so the host redelivers."""
    name, dataset_id = dataset
    monkeypatch.setenv("QUEUE_TIME_BUDGET_SECONDS", "1")
    runtime.reset()
    asyncio.run(ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(1)})))
    api.set_faults(script=["throttle"], retry_after=30)
    with pytest.raises(TransientError):
        asyncio.run(
            ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(1, 50)}))
        )
    assert [r["ProductID"] for r in api.stored_rows(dataset_id, "Product")] == [0]


def test_a_retry_after_over_the_cap_raises_for_redelivery_at_once(
    api: Api, dataset: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power BI asks for 30 s, within the 240 s budget but over POWERBI_MAX_RETRY_AFTER_SECONDS
    (5): the invocation does not hold the message for 30 s, it raises at once (with the
    service's retry_after) so the host redelivers it."""
    name, dataset_id = dataset
    monkeypatch.setenv("POWERBI_MAX_RETRY_AFTER_SECONDS", "5")
    runtime.reset()
    asyncio.run(ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(1)})))
    api.set_faults(script=["throttle"], retry_after=30)
    with pytest.raises(TransientError) as caught:
        asyncio.run(
            ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(1, 50)}))
        )
    assert caught.value.retry_after == 30.0
    assert [r["ProductID"] for r in api.stored_rows(dataset_id, "Product")] == [0]
    assert api.state(dataset_id)["counters"]["injected_throttle"] == 1  # one POST, no re-send
