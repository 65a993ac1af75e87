"""A Power BI stand-in that answers at once: the three calls the blob path makes (Get Datasets,
Get Tables, Post Rows), with no validation or storage. For the memory figure only, where the
emulator's own per-row work (validating and storing every row, about 16 us a row) would only
make the run slower: what is measured is the memory of the bundle's process, not the server.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_TABLES = re.compile(r"^/v1\.0/myorg/datasets/([^/]+)/tables$")
_ROWS = re.compile(r"^/v1\.0/myorg/datasets/([^/]+)/tables/([^/]+)/rows$")


@dataclass
class Sink:
    """The datasets it serves and what it received."""

    base: str = ""
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, tables: list[dict[str, Any]]) -> str:
        dataset_id = str(uuid.uuid4())
        self.datasets[dataset_id] = {"id": dataset_id, "name": name, "tables": tables}
        return dataset_id


def _handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any = None) -> None:
            raw = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/v1.0/myorg/datasets":
                found = [{"id": d["id"], "name": d["name"]} for d in sink.datasets.values()]
                self._answer(200, {"value": found})
            elif (match := _TABLES.match(path)) and match.group(1) in sink.datasets:
                self._answer(200, {"value": sink.datasets[match.group(1)]["tables"]})
            else:
                self._answer(404, {"error": {"code": "NotFound", "message": path}})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            match = _ROWS.match(self.path.split("?")[0])
            if not match or match.group(1) not in sink.datasets:
                self._answer(404, {"error": {"code": "NotFound", "message": self.path}})
                return
            dataset = match.group(1)
            count = body.count(b"},{") + 1 if body.strip() != b'{"rows":[]}' else 0
            with sink.lock:  # rows are flat objects: "},{" separates them
                sink.posts[dataset] = sink.posts.get(dataset, 0) + 1
                sink.rows[dataset] = sink.rows.get(dataset, 0) + count
            self._answer(200)

    return Handler


@contextmanager
def running() -> Iterator[Sink]:
    """A sink on a free loopback port, for the duration of the block."""
    sink = Sink()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(sink))
    server.daemon_threads = True
    sink.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
