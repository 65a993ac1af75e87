"""The queue function called directly with queue messages, against the emulator and Azurite."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient
from azure.storage.queue import QueueMessage as QueueMessageItem

from functions.queue import ingest_queue
from shared import runtime
from shared.engine.governor import pause_too_long
from shared.engine.ingest import PushIncomplete
from shared.errors import TransientError
from shared.sources.claimcheck import ClaimCheckStore
from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, Api
from tests.functional.test_blob_function import refusing_lookups
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
    """When the rows cannot be delivered in time, the function raises so the host redelivers.
    (Power BI's 30 s is no longer than the host's redelivery delay, host.json's 30 s: a plain
    redelivery serves it, so the message is not handed back.)"""
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
    service's retry_after) so the host redelivers it: 30 s is no longer than the host's
    redelivery delay (30 s), so a redelivery serves the pause and nothing is handed back."""
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


# -- long pauses: the message is handed back -------------------------------------------------

#: Power BI's answer once a table holds 250,000 rows or the hourly row quota is spent: a pause
#: far longer than an invocation (reference: Retry-After 3392 seen; the brief's 3540).
LONG_PAUSE = 3540


@pytest.fixture
def rows_queue(
    azurite: Azurite, settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> QueueClient:
    """A fresh rows queue (ROWS_QUEUE) in Azurite: where a message is handed back to."""
    client = QueueClient.from_connection_string(
        azurite.connection_string, f"rows{uuid.uuid4().hex[:10]}"
    )
    client.create_queue()
    monkeypatch.setenv("ROWS_QUEUE", client.queue_name)
    runtime.reset()
    return client


def waiting(queue: QueueClient) -> int:
    """Messages on the queue, visible or not."""
    return int(queue.get_queue_properties().approximate_message_count)


def receive_when_visible(queue: QueueClient, seconds: float) -> tuple[QueueMessageItem, float]:
    """The first message to become visible, and when (time.monotonic()); bounded wait."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for item in queue.receive_messages(max_messages=1, visibility_timeout=60):
            return item, time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"no message became visible within {seconds} s")


def short_pause(api: Api, monkeypatch: pytest.MonkeyPatch, seconds: int) -> None:
    """Power BI answers the next Add Rows 429 with Retry-After ``seconds``; the host redelivers
    a failed message after 1 s, and the client waits out at most 1 s in process: a pause the
    test can wait for that is still longer than both, so it is handed back."""
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__queues__visibilityTimeout", "00:00:01")
    monkeypatch.setenv("POWERBI_MAX_RETRY_AFTER_SECONDS", "1")
    runtime.reset()
    api.set_faults(script=["throttle"], retry_after=seconds)


def test_a_long_pause_hands_the_message_back_instead_of_spending_a_try(
    api: Api,
    azurite: Azurite,
    dataset: tuple[str, str],
    rows_queue: QueueClient,
    dead_letter_container: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Power BI answers 429 with Retry-After: 3540 on the message's 4th try. The function
    returns (the host completes the original) after one POST; the same message waits on the
    rows queue, invisible, due in 3540 s by the queue's own answer; nothing is dead-lettered
    or stored."""
    name, dataset_id = dataset
    api.set_faults(throttle=1.0, retry_after=LONG_PAUSE)
    before = datetime.now(UTC)

    with caplog.at_level(logging.WARNING, logger="shared.sources.queue_ingest"):
        asyncio.run(
            ingest_queue(
                message({"dataset": name, "table": "Product", "rows": rows(3)}, dequeue_count=4)
            )
        )

    after = datetime.now(UTC)
    assert waiting(rows_queue) == 1 and list(rows_queue.peek_messages()) == []  # invisible
    (line,) = [r for r in caplog.records if "handed back" in r.getMessage()]
    assert "(try 4)" in line.getMessage() and "dequeue count not spent" in line.getMessage()
    visible = datetime.fromisoformat(str(line.args[-1]))  # Put Message's own next_visible_on
    # The storage keeps whole seconds: due 3540 s after the send, to the second.
    pause = timedelta(seconds=LONG_PAUSE)
    assert before + pause - timedelta(seconds=1) <= visible <= after + pause + timedelta(seconds=1)
    assert api.stored_rows(dataset_id, "Product") == []
    assert api.state(dataset_id)["counters"]["injected_throttle"] == 1
    assert dead_letter_lines(azurite.connection_string, dead_letter_container) == []


def test_a_handed_back_message_returns_after_the_pause_with_a_fresh_dequeue_count(
    api: Api,
    azurite: Azurite,
    dataset: tuple[str, str],
    rows_queue: QueueClient,
    dead_letter_container: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 3 s pause (longer than the host's 1 s redelivery delay) on the message's 5th and last
    try: it is handed back, not poisoned. The same body becomes visible after the pause, with
    dequeue count 1, and its rows then arrive once. Its one over-long row was dead-lettered by
    the try that handed it back and is dead-lettered again by the next: two letters, one per
    try, as after any redelivery."""
    name, dataset_id = dataset
    short_pause(api, monkeypatch, 3)
    bad = {"ProductID": 99, "Product": "x" * 4_001}
    original = message(
        {"dataset": name, "table": "Product", "rows": [*rows(3), bad]}, dequeue_count=5
    )
    started = time.monotonic()

    asyncio.run(ingest_queue(original))

    assert list(rows_queue.peek_messages()) == [] and waiting(rows_queue) == 1
    back, arrived = receive_when_visible(rows_queue, 30)
    # Due 3 s after the send; the storage's clock counts whole seconds.
    assert arrived - started > 2
    assert back.content == original.get_body().decode()
    assert back.dequeue_count == 1
    assert len(dead_letter_lines(azurite.connection_string, dead_letter_container)) == 1

    redelivered = QueueMessage(id=back.id, body=back.content.encode(), dequeue_count=1)
    asyncio.run(ingest_queue(redelivered))
    rows_queue.delete_message(back)  # what the host does once the function returns

    assert sorted(r["ProductID"] for r in api.stored_rows(dataset_id, "Product")) == [0, 1, 2]
    letters = dead_letter_lines(azurite.connection_string, dead_letter_container)
    assert [letter["index"] for letter in letters] == [3, 3]
    assert len({letter["source"] for letter in letters}) == 2  # one per try
    assert waiting(rows_queue) == 0


def test_a_claim_check_message_is_handed_back_as_it_is(
    api: Api,
    azurite: Azurite,
    settings: dict[str, str],
    dataset: tuple[str, str],
    rows_queue: QueueClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim-check message handed back keeps its reference and its blob; the blob is
    deleted only once its rows are delivered, on the next try."""
    name, dataset_id = dataset
    short_pause(api, monkeypatch, 2)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    store = ClaimCheckStore(service.get_container_client(settings["CLAIMCHECK_CONTAINER"]))
    reference = store.put(json.dumps({"rows": rows(5)}).encode())
    container, _, blob_name = reference.partition("/")
    blob = service.get_container_client(container).get_blob_client(blob_name)
    original = message({"dataset": name, "table": "Product", "blob": reference})

    asyncio.run(ingest_queue(original))

    assert blob.exists()
    back, _ = receive_when_visible(rows_queue, 30)
    assert back.content == original.get_body().decode() and back.dequeue_count == 1
    asyncio.run(ingest_queue(QueueMessage(id=back.id, body=back.content.encode())))
    assert len(api.stored_rows(dataset_id, "Product")) == 5
    assert not blob.exists()


def test_a_partly_delivered_message_is_redelivered_not_handed_back(
    api: Api, dataset: tuple[str, str], rows_queue: QueueClient
) -> None:
    """10,005 rows: the first POST (10,000 rows) is stored, the second is refused for 3540 s.
    Handing the message back would send the 10,000 again after every pause, without the
    dequeue count to stop it: it is raised for redelivery, as before, and nothing is queued."""
    name, dataset_id = dataset
    api.set_faults(script=["ok", "throttle"], retry_after=LONG_PAUSE)
    body = {"dataset": name, "table": "Product", "rows": rows(10_005)}

    with pytest.raises(PushIncomplete) as stopped:
        asyncio.run(ingest_queue(message(body)))

    assert (stopped.value.result.sent, stopped.value.retry_after) == (10_000, LONG_PAUSE)
    assert waiting(rows_queue) == 0
    assert len(api.stored_rows(dataset_id, "Product")) == 10_000


def test_a_hand_back_that_cannot_be_sent_raises_the_original_error(
    api: Api,
    azurite: Azurite,
    dataset: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rows queue cannot take the message (here: it does not exist, a real 404 from the
    storage). The function raises Power BI's 429 (retry_after 3540), so the host redelivers the
    original instead of completing a message whose rows are nowhere."""
    name, dataset_id = dataset
    missing = f"gone{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ROWS_QUEUE", missing)
    runtime.reset()
    api.set_faults(throttle=1.0, retry_after=LONG_PAUSE)

    with (
        caplog.at_level(logging.WARNING, logger="shared.sources.queue_ingest"),
        pytest.raises(PushIncomplete) as raised,
    ):
        asyncio.run(ingest_queue(message({"dataset": name, "table": "Product", "rows": rows(2)})))

    assert (raised.value.status, raised.value.retry_after) == (429, LONG_PAUSE)
    (tried,) = [r.getMessage() for r in caplog.records if "could not hand" in r.getMessage()]
    assert "ResourceNotFoundError 404" in tried and "redelivered instead" in tried
    assert api.stored_rows(dataset_id, "Product") == []
    queues = QueueServiceClient.from_connection_string(azurite.connection_string)
    assert missing not in {q.name for q in queues.list_queues()}


def test_a_long_pause_on_a_lookup_before_the_push_hands_the_message_back(
    dataset: tuple[str, str], rows_queue: QueueClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A message with its own profile needs the table's columns before any row moves; that
    lookup refused for 3540 s hands the message back as a refused Add Rows would."""
    name, _ = dataset
    ingestor, refused = refusing_lookups()
    handler = runtime.build_queue_ingest(runtime.get_settings(), ingestor)
    body = {"dataset": name, "table": "Product", "rows": rows(2), "profile": {"nullTokens": ["NA"]}}

    with caplog.at_level(logging.WARNING, logger="shared.sources.queue_ingest"):
        outcome = asyncio.run(handler.handle(message(body).get_body(), "m-lookup", 3))

    assert outcome is None and refused.refused == 1
    assert waiting(rows_queue) == 1 and list(rows_queue.peek_messages()) == []
    assert "handed back: Power BI asked to wait 3540 s" in caplog.text


def test_only_a_pause_asked_for_is_handed_back(
    rows_queue: QueueClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait longer than the redelivery delay that nobody asked for as a pause (the identity
    endpoint's 2 s back-off while it is down, status None) is not handed back: the message is
    redelivered and poisoned after its last try (the long-outage test met 3,629 hand-backs and
    duplicated rows before this rule). Power BI's 429 with Retry-After, and the governor's
    refusal of a slot, are."""
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__queues__visibilityTimeout", "00:00:01")
    runtime.reset()
    handler = runtime.get_queue_ingest()
    body = json.dumps({"dataset": "D", "table": "T", "rows": []}).encode()

    def hand_back(error: TransientError) -> bool:
        return asyncio.run(handler._hand_back(body, "a message", error))

    assert not hand_back(TransientError("identity endpoint unreachable", retry_after=2.0))
    assert waiting(rows_queue) == 0
    assert hand_back(TransientError("throttled", retry_after=2.0, status=429))
    assert hand_back(pause_too_long("ds", 40.0, 5.0))
    assert waiting(rows_queue) == 2
