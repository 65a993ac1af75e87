"""Peak memory of the blob path does not grow with the file: 100,000 vs 1,000,000 CSV rows,
each ingested in a fresh process, in ceil(rows / 10,000) POSTs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from azure.storage.blob import BlobServiceClient

from tests.azurite import Azurite
from tests.emulator.conftest import REPO, Api


def csv_lines(rows: int) -> Iterator[bytes]:
    yield b"ProductID,Product,IsCompete,Price\n"
    block = []
    for i in range(rows):
        block.append(f"{i},Part {i},{'true' if i % 2 else 'false'},{i / 4}\n")
        if len(block) == 50_000:
            yield "".join(block).encode()
            block = []
    if block:
        yield "".join(block).encode()


@pytest.mark.slow
def test_peak_memory_is_flat_from_100k_to_1m_rows(api: Api, azurite: Azurite) -> None:
    """A 1,000,000-row CSV needs no more memory than a 100,000-row one (within 25%), and each
    goes out in ceil(rows / 10,000) POSTs."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"mem{uuid.uuid4().hex[:10]}"
    service.get_container_client(container).create_container()
    table = [
        {
            "name": "P",
            "columns": [
                {"name": "ProductID", "dataType": "Int64"},
                {"name": "Product", "dataType": "string"},
                {"name": "IsCompete", "dataType": "bool"},
                {"name": "Price", "dataType": "Double"},
            ],
        }
    ]
    peaks = {}
    for rows in (100_000, 1_000_000):
        name = f"Mem{rows}-{uuid.uuid4().hex[:6]}"
        dataset_id = api.create_dataset(table, name=name)
        blob = f"{name}/P/file.csv"
        service.get_blob_client(container, blob).upload_blob(csv_lines(rows))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.integration.memory_probe",
                api.emulator.base,
                api.token,
                azurite.connection_string,
                container,
                blob,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["sent"] == rows and report["rejected"] == 0
        assert report["batches"] == math.ceil(rows / 10_000)
        posts = api.state(dataset_id)["counters"]["posts_accepted"]
        assert posts == math.ceil(rows / 10_000)
        peaks[rows] = report["peak_mib"]
        api.request("DELETE", f"{api.prefix(None)}/datasets/{dataset_id}")
    print(f"\npeak RSS: 100,000 rows {peaks[100_000]} MiB; 1,000,000 rows {peaks[1_000_000]} MiB")
    assert peaks[1_000_000] <= peaks[100_000] * 1.25
