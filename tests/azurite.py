"""Azurite (the Azure Storage emulator, from npm) as a real server for tests, on free ports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    """A running Azurite and its endpoints."""

    process: subprocess.Popen[str]
    blob: str
    queue: str
    table: str = ""

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob}/{ACCOUNT};QueueEndpoint={self.queue}/{ACCOUNT};"
            + (f"TableEndpoint={self.table}/{ACCOUNT};" if self.table else "")
        )

    def stop(self) -> None:
        stop_process(self.process)


def start_azurite() -> Azurite:
    """Start blob and queue services in memory on ports the OS picks; wait until they listen."""
    binary = REPO / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        raise AssertionError(f"{binary} is missing: run `make setup` (npm ci installs Azurite)")
    node = shutil.which("node")
    assert node, "node is needed to run Azurite"
    process = subprocess.Popen(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            "0",
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            "0",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    endpoints: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(endpoints) < 3:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        match = re.search(r"Azurite (\w+) service is successfully listening at (\S+)", line)
        if match:
            endpoints[match.group(1).lower()] = match.group(2).rstrip("/")
    if "blob" not in endpoints or "queue" not in endpoints:
        process.kill()
        raise AssertionError("Azurite did not start:\n" + "\n".join(lines))
    drain(process)
    return Azurite(process, endpoints["blob"], endpoints["queue"], endpoints.get("table", ""))


def drain(process: subprocess.Popen[str], into: list[str] | None = None) -> None:
    """Keep reading a server's output in the background, so a full pipe never blocks it."""

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if into is not None:
                into.append(line.rstrip())

    threading.Thread(target=read, daemon=True).start()


def stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate a server the tests started; kill it if it does not stop within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def dead_letter_lines(connection_string: str, container: str) -> list[dict[str, Any]]:
    """Every dead letter (one JSON object per line) in a container; [] when it does not exist."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(connection_string)
    blobs = client.get_container_client(container)
    if not blobs.exists():
        return []
    lines: list[dict[str, Any]] = []
    for blob in blobs.list_blobs():
        text = blobs.download_blob(blob.name).readall().decode("utf-8")
        lines.extend(json.loads(line) for line in text.split("\n") if line.strip())
    return lines
