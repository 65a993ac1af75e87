"""Figure 2: peak RSS of the blob path for a 100,000-row, a 1,000,000-row and (when the machine
has the memory for Azurite to hold it) a 1 GiB CSV blob.

Each blob is uploaded to Azurite at ``<dataset>/Product/file.csv`` and ingested by
``BlobIngest.handle`` in a fresh process (:mod:`bench.memory_probe`: 1 MiB range reads, CSV
reader, validation, packing, governor, checkpoints after every POST). Power BI is
:mod:`bench.sink`, which answers at once, and the governor's hour lasts a real second, so
nothing is paced: the run measures the memory of the bundle's process, not waiting (with the
emulator, which validates and stores every row, the 1 GiB file would take six minutes).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from bench import data, servers, sink
from bench.machine import REPO, memory_available_bytes
from bench.report import Figure

TIME_SCALE = 3600.0
TOKEN = "bench-sink-token"
MAX_MB = 150.0
FLAT = 0.10
GIB = 1024**3


def probe(api_base: str, token: str, connection: str, container: str, blob: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory_probe",
            api_base,
            token,
            connection,
            container,
            blob,
            "--time-scale",
            f"{TIME_SCALE:g}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def big_fits() -> bool:
    """Azurite keeps blobs in memory: ask for the blob's size four times over, plus 2 GB."""
    available = memory_available_bytes()
    return available is not None and available > 4 * GIB + 2 * 10**9


def run(csv_small: Path, small_rows: int, csv_large: Path, large_rows: int, big: bool) -> Figure:
    cases: list[tuple[str, int, Iterable[bytes]]] = [
        (f"{small_rows:,} rows", small_rows, data.read_chunks(csv_small, 4 * 1024 * 1024)),
        (f"{large_rows:,} rows", large_rows, data.read_chunks(csv_large, 4 * 1024 * 1024)),
    ]
    skipped = None
    if big and big_fits():
        body = csv_large.stat().st_size - len(data.CSV_HEADER)
        copies = math.ceil((GIB - len(data.CSV_HEADER)) / body)
        cases.append(("1 GiB", large_rows * copies, data.csv_blob_chunks(csv_large, copies)))
    elif big:
        skipped = "1 GiB skipped: not enough free memory for Azurite to hold the blob"
    else:
        skipped = "1 GiB skipped (--quick)"
    runs: list[dict[str, Any]] = []
    with servers.azurite() as storage, sink.running() as powerbi:
        service = BlobServiceClient.from_connection_string(storage.connection_string)
        container = f"bench{uuid.uuid4().hex[:8]}"
        service.get_container_client(container).create_container()
        for label, rows, chunks in cases:
            name = f"Memory-{uuid.uuid4().hex[:8]}"
            dataset_id = powerbi.add(name, data.definition(name)["tables"])
            blob = service.get_blob_client(container, f"{name}/{data.TABLE}/file.csv")
            blob.upload_blob(chunks, overwrite=True, max_concurrency=2)
            size = int(blob.get_blob_properties().size)
            report = probe(
                powerbi.base, TOKEN, storage.connection_string, container, blob.blob_name
            )
            posts = powerbi.posts.get(dataset_id, 0)
            received = powerbi.rows.get(dataset_id, 0)
            if (
                report["sent"] != rows
                or report["rejected"]
                or received != rows
                or posts != math.ceil(rows / 10_000)
            ):
                raise AssertionError(
                    f"{label}: {report}; the sink got {received} rows, {posts} POSTs"
                )
            runs.append(
                {
                    "case": label,
                    "rows": rows,
                    "blob_bytes": size,
                    "peak_mb": round(report["peak_rss_bytes"] / 1e6, 1),
                    "ready_mb": round(report["ready_rss_bytes"] / 1e6, 1),
                    "posts": report["posts"],
                    "seconds": report["seconds"],
                    "rows_per_second": round(rows / report["seconds"]),
                }
            )
            blob.delete_blob()
    first = runs[0]["peak_mb"]
    growth = [run["peak_mb"] / first - 1 for run in runs[1:]]
    peaks = " / ".join(f"{run['peak_mb']:.0f}" for run in runs)
    cases_text = " / ".join(run["case"] for run in runs)
    grown = ", ".join(f"{g:+.0%}" for g in growth)
    met = all(g <= FLAT for g in growth) and all(run["peak_mb"] < MAX_MB for run in runs)
    return Figure(
        "2",
        f"Blob path peak RSS, CSV {cases_text}",
        f"{peaks} MB ({grown} vs the smallest)",
        f"flat (<= +{FLAT:.0%}), < {MAX_MB:.0f} MB",
        met,
        {
            "runs": runs,
            "growth": [round(g, 4) for g in growth],
            "skipped": skipped,
            "power_bi": "bench.sink (answers at once)",
        },
    )
