"""BlobCreated events: the sample event from Microsoft's blob event schema page, delivered to
devhost's Event Grid webhook, ingests the blob it names only from an allow-listed account."""

from __future__ import annotations

import copy
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.azurite import Azurite
from tests.emulator.conftest import Api
from tests.integration.test_blob_pipeline import (
    Files,
    as_csv,
    files,
    new_dataset,
    product,
    stored_ids,
    wait_for,
)

__all__ = ["files"]

#: The Event Grid-schema example of https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage
SAMPLE = [
    {
        "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/"
        "Microsoft.Storage/storageAccounts/my-storage-account",
        "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2017-06-26T18:41:00.9584103Z",
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "data": {
            "api": "PutBlockList",
            "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
            "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
            "eTag": '"0x8D4BCC2E4835CD0"',
            "contentType": "text/plain",
            "contentLength": 524288,
            "blobType": "BlockBlob",
            "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
            "sequencer": "00000000000004420000000000028963",
            "storageDiagnostics": {"batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"},
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }
]


@pytest.fixture
def listener() -> Iterator[list[str]]:
    """A loopback TCP listener that records every connection made to it."""
    seen: list[str] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            seen.append(f"{peer}")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    seen.append(f"port:{server.getsockname()[1]}")
    yield seen
    stop.set()
    thread.join(timeout=2)
    server.close()


def settled(seen: list[str]) -> list[str]:
    """The connections the listener recorded before this call, with none still to come: a
    marker connection is made now and waited for, and a listening socket hands out
    connections first in, first out. The marker (and the port entry) are left out."""
    port = int(seen[0].split(":")[1])
    with socket.create_connection(("127.0.0.1", port)) as client:
        marker = str(client.getsockname())
        wait_for(lambda: marker in seen, 10, "the listener's marker connection")
    return [peer for peer in seen[1:] if peer != marker]


def deliver(base: str, events: list[dict[str, Any]]) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(
        f"{base}/runtime/webhooks/eventgrid?functionName=blob_created",
        json=events,
        headers={"aeg-event-type": "Notification"},
        timeout=60,
    )


def test_sample_event_for_an_allowed_account_is_ingested(
    api: Api, files: Files, azurite: Azurite
) -> None:
    """The documented sample event, pointing at a blob of an allowed account (Azurite here),
    in Event Grid and in CloudEvents form: the blob's rows arrive."""
    name, dataset_id = new_dataset(api)
    other = f"other{uuid.uuid4().hex[:8]}"
    container = files.ingest._get_blob_service_client().get_container_client(other)
    container.create_container()
    container.upload_blob(f"{name}/Product/a.csv", as_csv([product(i) for i in range(5)]))
    container.upload_blob(f"{name}/Product/b.csv", as_csv([product(i) for i in range(5, 8)]))
    blob_host = azurite.blob.split("//", 1)[1]
    host = files.start(BLOB_ALLOWED_HOSTS=blob_host)
    grid = copy.deepcopy(SAMPLE)
    grid[0]["data"]["url"] = f"{azurite.blob}/devstoreaccount1/{other}/{name}/Product/a.csv"
    assert deliver(host.base, grid).status_code == 200
    cloud = {
        "specversion": "1.0",
        "type": "Microsoft.Storage.BlobCreated",
        "source": SAMPLE[0]["topic"],
        "subject": SAMPLE[0]["subject"],
        "id": str(uuid.uuid4()),
        "time": SAMPLE[0]["eventTime"],
        "data": {
            **SAMPLE[0]["data"],
            "url": f"{azurite.blob}/devstoreaccount1/{other}/{name}/Product/b.csv",
        },
    }
    assert deliver(host.base, [cloud]).status_code == 200
    wait_for(lambda: len(stored_ids(api, dataset_id)) == 8, 30, "8 rows")
    assert sorted(stored_ids(api, dataset_id)) == list(range(8))


def test_urls_outside_the_allow_list_are_never_requested(
    files: Files, azurite: Azurite, listener: list[str]
) -> None:
    """The sample event as published (a host not on the list) and an event naming a local
    listener are both refused: the listener sees no connection at all."""
    port = int(listener[0].split(":")[1])
    host = files.start(BLOB_ALLOWED_HOSTS=azurite.blob.split("//", 1)[1])
    trap = copy.deepcopy(SAMPLE)
    trap[0]["data"]["url"] = f"http://127.0.0.1:{port}/devstoreaccount1/c/d/t/x.csv"
    for events in (SAMPLE, trap):
        response = deliver(host.base, events)
        assert response.status_code == 200, response.text

    # The host answers a delivery once its invocation is over (the webhook runs it inline), so
    # whatever the function did, it did before answering: both refused, both invocations done.
    def logged(text: str) -> int:
        return sum(text in line for line in host.output)

    wait_for(
        lambda: (
            logged("BlobCreated event refused") == 2
            and logged("Executed 'Functions.blob_created' (Succeeded") == 2
        ),
        30,
        "both refusals and both invocations in the host's log",
    )
    requested = settled(listener)
    assert requested == [], f"a refused URL was requested: {requested}"
    subscription = deliver(
        host.base,
        [
            {
                "id": "1",
                "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                "data": {"validationCode": "512d38b6"},
                "subject": "",
                "dataVersion": "",
                "topic": "",
                "eventTime": SAMPLE[0]["eventTime"],
            }
        ],
    )
    assert json.loads(subscription.text) == {"validationResponse": "512d38b6"}
