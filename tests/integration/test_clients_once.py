"""Long-lived clients: storage clients, claim-check stores and managed-identity credentials are
built once per process, however many requests, health checks and events use them.

Constructions are counted on the real classes (their ``__init__`` is wrapped, and still runs);
the functions are called as the worker calls them, against the emulator and Azurite.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import azure.functions as func
import pytest
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from functions import http
from shared import runtime
from shared.sources.blob_events import BLOB_CREATED
from shared.sources.claimcheck import ClaimCheckStore
from shared.stores.storage import blob_service, queue_client
from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import IDENTITY_HEADER, USER_ASSIGNED_ID, WORKSPACE_NAME, Api

N = 6


class Built:
    """Counts constructions of the real classes while a test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self.identities: list[str | None] = []
        for cls in (BlobServiceClient, ContainerClient, QueueClient, BlobClient, ClaimCheckStore):
            self._count(monkeypatch, cls)
        original = ManagedIdentityCredential.__init__

        def credential(inner: ManagedIdentityCredential, *args: Any, **kwargs: Any) -> None:
            self.counts["ManagedIdentityCredential"] += 1
            self.identities.append(kwargs.get("client_id"))
            original(inner, *args, **kwargs)

        monkeypatch.setattr(ManagedIdentityCredential, "__init__", credential)

    def _count(self, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
        original = cls.__init__  # type: ignore[misc]

        def init(inner: Any, *args: Any, **kwargs: Any) -> None:
            self.counts[cls.__name__] += 1
            original(inner, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No app setting of another test; the process's objects forgotten before and after."""
    for key in list(os.environ):
        if key.startswith(
            ("POWERBI_", "IDENTITY_", "MSI_", "IMDS_", "WEBHOOK_", "DEADLETTER_", "AzureWebJobs")
        ):
            monkeypatch.delenv(key)
    runtime.reset()
    yield
    runtime.reset()


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)


@pytest.mark.usefixtures("clean_env")
def test_asynchronous_requests_and_health_checks_build_storage_clients_once(
    api: Api, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N asynchronous requests whose payload goes by claim check and N health checks: one blob
    service client, one claim-check store, one credential (Power BI's) for all of them."""
    container = f"claims-{uuid.uuid4().hex[:8]}"
    set_env(
        monkeypatch,
        POWERBI_API_URL=api.emulator.base,
        POWERBI_AUTH="managed_identity",
        IDENTITY_ENDPOINT=f"{api.emulator.base}/msi/token",
        IDENTITY_HEADER=IDENTITY_HEADER,
        POWERBI_WORKSPACE_NAME=WORKSPACE_NAME,
        ALLOWED_TARGETS="*/*",
        AzureWebJobsStorage=azurite.connection_string,
        CLAIMCHECK_CONTAINER=container,
    )
    built = Built(monkeypatch)
    big = json.dumps(
        {"rows": [{"ProductID": i, "Product": f"P{i}" * 10} for i in range(2_000)]}
    ).encode()
    for _ in range(N):
        queued = Out()
        response = http.add_rows(
            func.HttpRequest(
                "POST",
                "http://localhost/api/datasets/D/tables/Product/rows",
                headers={"Content-Type": "application/json"},
                params={"mode": "queue"},
                route_params={"dataset": "D", "table": "Product"},
                body=big,
            ),
            queued,
        )
        assert response.status_code == 202, response.get_body()
        assert "blob" in json.loads(_b64(queued.value[0]))
        health = http.health(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
        assert health.status_code == 200, health.get_body()

    assert built.counts["ClaimCheckStore"] == 1
    assert built.counts["BlobServiceClient"] == 1
    assert built.counts["ManagedIdentityCredential"] == 1
    parked = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert len(list(parked.get_container_client(container).list_blobs())) == N


class PlainHttp(BaseHTTPRequestHandler):
    """A host that speaks plain http where the events' URLs say https."""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def plain_http() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PlainHttp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("clean_env")
def test_blob_events_with_identity_based_storage_build_one_credential_per_identity(
    api: Api, azurite: Azurite, plain_http: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BlobCreated events read with the managed identity, the app's storage identity-based with
    a user-assigned identity, Power BI with the system-assigned one: two credentials for the
    process, and no client or credential more after N events than after the first. (The host
    named by the events cannot be read, so each is dead-lettered; the credential still gets a
    real token from the emulator's identity endpoint before each attempt.)"""
    dead = f"dl-{uuid.uuid4().hex[:8]}"
    set_env(
        monkeypatch,
        POWERBI_API_URL=api.emulator.base,
        POWERBI_AUTH="managed_identity",
        IDENTITY_ENDPOINT=f"{api.emulator.base}/msi/token",
        IDENTITY_HEADER=IDENTITY_HEADER,
        POWERBI_WORKSPACE_NAME=WORKSPACE_NAME,
        ALLOWED_TARGETS="*/*",
        # Identity-based: built and never contacted here (nothing is checkpointed or handed on).
        AzureWebJobsStorage__blobServiceUri="https://127.0.0.1:1/devstoreaccount1",
        AzureWebJobsStorage__queueServiceUri="https://127.0.0.1:1/devstoreaccount1",
        AzureWebJobsStorage__clientId=USER_ASSIGNED_ID,
        DEADLETTER_CONNECTION="DeadLetters",
        DeadLetters=azurite.connection_string,
        DEADLETTER_CONTAINER=dead,
        BLOB_ALLOWED_HOSTS=plain_http,
    )
    built = Built(monkeypatch)
    events = runtime.get_blob_events()

    def deliver(i: int) -> None:
        url = f"https://{plain_http}/other/c/Sales/Product/{i}.csv"
        outcome = events.handle(BLOB_CREATED, {"api": "PutBlob", "url": url})
        assert getattr(outcome, "status", None) == "unreachable", outcome

    deliver(0)
    after_one = Counter(built.counts)
    for i in range(1, N):
        deliver(i)

    assert sorted(built.identities, key=str) == sorted([None, USER_ASSIGNED_ID], key=str)
    # Blob clients are per blob (the URL's, a dead letter's); everything else is built once.
    assert {k: v for k, v in built.counts.items() if k != "BlobClient"} == {
        k: v for k, v in after_one.items() if k != "BlobClient"
    }
    assert built.counts["ManagedIdentityCredential"] == 2
    assert len(dead_letter_lines(azurite.connection_string, dead)) == N


class Out(func.Out[list[str]]):
    """The queue output binding as the worker gives it."""

    def __init__(self) -> None:
        self.value: list[str] = []

    def set(self, val: list[str]) -> None:
        self.value = val

    def get(self) -> list[str]:
        return self.value


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


@pytest.mark.usefixtures("clean_env")
def test_opening_blob_urls_and_storage_clients_reuses_one_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without any request: N blob URLs of another account opened the way BlobCreated events
    open them, and N blob service and queue clients asked for on an identity-based connection,
    give one credential per identity and one client per connection and options."""
    set_env(
        monkeypatch,
        POWERBI_AUTH="managed_identity",
        POWERBI_CLIENT_ID=USER_ASSIGNED_ID,
        IDENTITY_ENDPOINT="http://127.0.0.1:1/msi/token",  # never asked: no request is made
        IDENTITY_HEADER=IDENTITY_HEADER,
        AzureWebJobsStorage__serviceUri="https://127.0.0.1:1/devstoreaccount1",
    )
    built = Built(monkeypatch)
    settings = runtime.get_settings()
    open_url = runtime.blob_client_for(settings, os.environ)
    for i in range(N):
        blob = open_url(f"https://127.0.0.1:2/other/c/Sales/Product/{i}.csv")
        assert blob.blob_name == f"Sales/Product/{i}.csv"
        blob_service(settings.storage_connection, os.environ)
        queue_client(settings.storage_connection, "rows", os.environ)
    assert sorted(built.identities, key=str) == sorted([None, USER_ASSIGNED_ID], key=str)
    # The app's storage (its key-less service client, and the one with the blob-event
    # timeouts), one queue client, and one blob client per URL.
    assert built.counts["BlobServiceClient"] == 2
    assert built.counts["QueueClient"] == 1
