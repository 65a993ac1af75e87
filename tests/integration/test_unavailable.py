"""What the token libraries and the storage SDK raise when their service is down becomes a
TransientError (retry later), never an untranslated exception or a silent loss."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from shared.auth import ManagedIdentityTokenProvider, ServicePrincipalTokenProvider
from shared.contracts import Target
from shared.deadletter import BlobDeadLetterStore, DeadLetter
from shared.errors import TransientError
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
