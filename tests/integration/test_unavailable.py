"""What the token libraries and the storage SDK raise when their service is down becomes a
TransientError (retry later), never an untranslated exception or a silent loss."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from shared.contracts import Target
from shared.destinations.auth import (
    ManagedIdentityTokenProvider,
    ServicePrincipalTokenProvider,
    StaticTokenProvider,
)
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import Ingestor, PushIncomplete
from shared.engine.retry import Deadline, RetryPolicy
from shared.errors import TransientError
from shared.stores.deadletter import BlobDeadLetterStore, DeadLetter
from tests.azurite import start_azurite

SCOPE = "https://analysis.windows.net/powerbi/api/.default"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_managed_identity_endpoint_down_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-identity's connection failure becomes a TransientError."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{closed_port()}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "header")
    with pytest.raises(TransientError):
        ManagedIdentityTokenProvider(SCOPE).token()


def test_authority_down_is_transient() -> None:
    """MSAL's discovery request failing (requests' ConnectionError) becomes a TransientError."""
    with pytest.raises(TransientError):
        ServicePrincipalTokenProvider(
            client_id="app",
            authority=f"https://127.0.0.1:{closed_port()}/tenant",
            scope=SCOPE,
            secret="s",
        )


def test_dead_letter_store_down_raises_instead_of_losing_rows(tmp_path: Path) -> None:
    """A dead-letter write to a storage account that is gone raises TransientError."""
    server = start_azurite()
    service = BlobServiceClient.from_connection_string(
        server.connection_string, retry_total=0, connection_timeout=2
    )
    store = BlobDeadLetterStore(service.get_container_client("gone"))
    server.stop()
    with pytest.raises(TransientError):
        store.write(Target("d", "t"), [DeadLetter("bad", {"a": 1}, 0)], source=None)


def test_looking_a_dataset_up_stops_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """With Power BI down, the dataset lookup (list workspaces, list datasets) retries only
    while a retry can end before the push's deadline: here none can, so the push stops after
    one attempt, with every row unsent, instead of retrying past the trigger's budget (which
    once held a queue invocation for 23 s, past its message's lease)."""
    client = PowerBIClient(f"http://127.0.0.1:{closed_port()}", StaticTokenProvider("t"))
    ingestor = Ingestor(client, default_workspace="Sales")
    with caplog.at_level(logging.WARNING), pytest.raises(PushIncomplete) as stopped:
        ingestor.push(Target("D", "T"), [{"n": 1}], deadline=Deadline.after(0.2))
    assert stopped.value.result.unsent == 1
    assert "could not connect" in str(stopped.value)
    assert not [r for r in caplog.records if "retrying in" in r.getMessage()]
    # Without a deadline the same lookup is retried (bounded by the policy's attempts).
    patient = PowerBIClient(
        client.api_root,
        StaticTokenProvider("t"),
        retry=RetryPolicy(max_attempts=2, base_delay=0.01),
    )
    retried = Ingestor(patient, default_workspace="Sales")
    with caplog.at_level(logging.WARNING), pytest.raises(PushIncomplete):
        retried.push(Target("D", "T"), [{"n": 1}])
    assert [r for r in caplog.records if "retrying in" in r.getMessage()]
