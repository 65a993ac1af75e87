"""Ingest one blob in a fresh process and report its peak memory (run by test_blob_memory).

``python -m tests.integration.memory_probe API_BASE TOKEN CONNECTION CONTAINER BLOB``
prints one JSON line: peak RSS in MiB, rows sent, batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import Ingestor
from shared.sources.blob_ingest import BlobIngest
from shared.stores.checkpoint import CheckpointStore
from shared.stores.deadletter import BlobDeadLetterStore


def main(api: str, token: str, connection: str, container: str, name: str) -> None:
    service = BlobServiceClient.from_connection_string(connection)
    ingestor = Ingestor(
        PowerBIClient(api, StaticTokenProvider(token)),
        dead_letters=BlobDeadLetterStore(service.get_container_client(f"{container}-dl")),
    )
    blobs = BlobIngest(
        ingestor,
        CheckpointStore(service.get_container_client(f"{container}-cp")),
        BlobDeadLetterStore(service.get_container_client(f"{container}-dl")),
    )
    outcome = blobs.handle(service.get_blob_client(container, name))
    assert outcome.result is not None
    # VmHWM, not ru_maxrss: a child started by fork/vfork+exec inherits its parent's maxrss.
    status = Path("/proc/self/status").read_text()
    peak_mib = (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        / 1024
    )
    print(
        json.dumps(
            {
                "peak_mib": round(peak_mib, 1),
                "sent": outcome.result.sent,
                "batches": outcome.result.batches,
                "rejected": outcome.result.rejected,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:6])
