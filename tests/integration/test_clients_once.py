"""Long-lived clients: storage clients, claim-check stores and managed-identity credentials are
built once per process, however many requests, health checks and events use them.

Constructions are counted on the real classes (their ``__init__`` is wrapped, and still runs);
the functions are called as the worker calls them, against the emulator and Azurite.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from functions import http
from shared import runtime
from shared.sources.claimcheck import ClaimCheckStore
from shared.stores.storage import blob_service, queue_client
from tests.azurite import Azurite
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
    # The app's storage: one blob service client, one queue client; a blob client per URL.
    assert built.counts["BlobServiceClient"] == 1
    assert built.counts["QueueClient"] == 1
