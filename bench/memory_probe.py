"""Ingest one blob through the blob path in a fresh process and report its peak memory.

``python -m bench.memory_probe API TOKEN CONNECTION CONTAINER BLOB [--time-scale X]`` prints one
JSON line: peak RSS and the peak once everything is imported and built (both in bytes), rows
sent, rejected, POSTs and seconds. Like ``tests/integration/memory_probe.py``, but the governor
runs on the emulator's fast clock, so a file larger than the hourly quota is not held back.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from azure.storage.blob import BlobServiceClient

from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.governor import Governor, Quotas
from shared.engine.ingest import Ingestor
from shared.sources.blob_ingest import BlobIngest
from shared.stores.checkpoint import CheckpointStore
from shared.stores.deadletter import BlobDeadLetterStore


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM of /proc/self/status. Not ``ru_maxrss``: Python starts
    a child with vfork, and Linux carries the parent's peak RSS into the child's ``ru_maxrss``
    across the exec, so a large parent would set a floor under the figure."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("api", "token", "connection", "container", "blob"):
        parser.add_argument(name)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    service = BlobServiceClient.from_connection_string(args.connection)
    dead_letters = BlobDeadLetterStore(service.get_container_client(f"{args.container}-dl"))
    ingestor = Ingestor(
        PowerBIClient(args.api, StaticTokenProvider(args.token)),
        governor=Governor(Quotas(time_scale=args.time_scale)),
        dead_letters=dead_letters,
    )
    blobs = BlobIngest(
        ingestor,
        CheckpointStore(service.get_container_client(f"{args.container}-cp")),
        dead_letters,
        time_budget=3600.0,
    )
    ready = peak_rss_bytes()
    started = time.perf_counter()
    outcome = blobs.handle(service.get_blob_client(args.container, args.blob))
    seconds = time.perf_counter() - started
    result = outcome.result
    assert result is not None, outcome
    print(
        json.dumps(
            {
                "status": outcome.status,
                "peak_rss_bytes": peak_rss_bytes(),
                "ready_rss_bytes": ready,
                "sent": result.sent,
                "rejected": result.rejected,
                "posts": result.batches,
                "seconds": round(seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
