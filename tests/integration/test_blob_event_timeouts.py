"""A BlobCreated event naming an allowed host that cannot be read ends in a dead letter and a
200 to Event Grid within seconds: no hang, no 500.

Two local hosts stand in for a broken storage account: one speaks plain http where the event's
URL says https, one accepts connections and never answers. Events go through devhost's Event
Grid webhook to the ``blob_created`` function, as in test_blob_events.py.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from shared.sources.blob_events import RETRIES
from tests.integration.test_blob_pipeline import Files, files

__all__ = ["files"]

#: How long the test lets a delivery take before calling it a hang: far above what the
#: bounded clients need (2 x 5 s connect + 1 s), far below the SDK defaults (78 s and more).
HANG = 60


class PlainHttp(BaseHTTPRequestHandler):
    """Answers every request in plain http (a TLS client hello gets a 400)."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class CountingServer(ThreadingHTTPServer):
    """A plain-http server that counts the connections it accepted."""

    connections = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        found = super().get_request()
        self.connections += 1
        return found


@pytest.fixture
def plain_http() -> Iterator[CountingServer]:
    """A plain-http server on 127.0.0.1."""
    server = CountingServer(("127.0.0.1", 0), PlainHttp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Silent:
    """Accepts connections on 127.0.0.1 and never sends a byte; counts them."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port: int = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.held.append(conn)  # kept open, never read from or written to

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def event(url: str) -> list[dict[str, Any]]:
    """One BlobCreated event (Event Grid schema) naming ``url``."""
    return [
        {
            "id": str(uuid.uuid4()),
            "eventType": "Microsoft.Storage.BlobCreated",
            "subject": "/blobServices/default/containers/c/blobs/x.csv",
            "eventTime": "2026-01-01T00:00:00Z",
            "topic": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/"
            "storageAccounts/broken",
            "dataVersion": "",
            "data": {"api": "PutBlob", "url": url, "blobType": "BlockBlob"},
        }
    ]


def deliver(base: str, events: list[dict[str, Any]]) -> requests.Response:
    """Deliver events as Event Grid does, giving up (a hang) after HANG seconds."""
    with requests.Session() as session:
        session.trust_env = False
        return session.post(
            f"{base}/runtime/webhooks/eventgrid?functionName=blob_created",
            json=events,
            headers={"aeg-event-type": "Notification"},
            timeout=HANG,
        )


def dead_letter_for(files: Files, url: str) -> dict[str, Any]:
    (letter,) = [line for line in files.dead_letters() if url in str(line.get("reason", ""))]
    return letter


def test_an_https_url_to_a_plain_http_host_is_dead_lettered_at_once(
    files: Files, plain_http: CountingServer
) -> None:
    """The TLS handshake fails; after one retry the event is dead-lettered with the reason and
    answered 200, not held for the SDK's minute of retries and then answered 500."""
    address = f"127.0.0.1:{plain_http.server_address[1]}"
    url = f"https://{address}/devstoreaccount1/c/Sales/Product/x.csv"
    host = files.start(BLOB_ALLOWED_HOSTS=address)

    response = deliver(host.base, event(url))

    assert response.status_code == 200, response.text
    letter = dead_letter_for(files, url)
    assert "could not connect" in letter["reason"]
    assert plain_http.connections == RETRIES + 1


def test_a_host_that_never_answers_is_dead_lettered_after_the_timeouts(
    files: Files, silent: Silent
) -> None:
    """Connections are accepted and then nothing comes: the connect timeout (it covers the TLS
    handshake) ends each attempt, and the event is dead-lettered and answered 200."""
    address = f"127.0.0.1:{silent.port}"
    url = f"https://{address}/devstoreaccount1/c/Sales/Product/x.csv"
    host = files.start(BLOB_ALLOWED_HOSTS=address)

    response = deliver(host.base, event(url))

    assert response.status_code == 200, response.text
    letter = dead_letter_for(files, url)
    assert "could not connect" in letter["reason"] or "no answer" in letter["reason"]
    assert len(silent.held) == RETRIES + 1
