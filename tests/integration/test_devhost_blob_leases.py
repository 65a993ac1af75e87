"""Several devhost processes on one Azurite share the ingest container as the app's scaled-out
instances share it: each blob version is run by one of them (its receipt blob is leased while
it runs), a version whose lease was left by a process that died is taken over once the lease
expires, and failed tries count across processes towards ``maxDequeueCount``."""

from __future__ import annotations

import base64
import contextlib
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient
from azure.storage.queue import QueueClient

from tests.azurite import Azurite
from tests.emulator.conftest import REPO, Api
from tests.integration.test_blob_pipeline import (
    Files,
    activity,
    as_csv,
    files,
    new_dataset,
    pending_posts,
    product,
    stored_ids,
    wait_for,
)
from tests.integration.test_devhost import Devhost, start_devhost

__all__ = ["files"]

pytestmark = pytest.mark.integration

#: Where devhost keeps its receipts, and the function that ingests the container.
RECEIPTS = "azure-webjobs-hosts"
FUNCTION = "ingest_blob"
POISON_QUEUE = "webjobs-blobtrigger-poison"


def receipt_of(files: Files, function: str, blob: str) -> BlobClient:
    """The receipt devhost keeps for the current version of ``blob`` in the ingest container:
    ``blobreceipts/<function>/<container>/<name>/<etag without quotes>``."""
    etag = str(files.ingest.get_blob_client(blob).get_blob_properties().etag).strip('"')
    service = BlobServiceClient.from_connection_string(files.azurite.connection_string)
    path = f"blobreceipts/{function}/{files.ingest.container_name}/{blob}/{etag}"
    return service.get_blob_client(RECEIPTS, path)


def receipts(files: Files, function: str) -> dict[str, dict[str, str]]:
    """Every receipt of ``function`` for the ingest container: blob name -> metadata."""
    service = BlobServiceClient.from_connection_string(files.azurite.connection_string)
    prefix = f"blobreceipts/{function}/{files.ingest.container_name}/"
    found = service.get_container_client(RECEIPTS).list_blobs(
        name_starts_with=prefix, include=["metadata"]
    )
    return {blob.name[len(prefix) :].rsplit("/", 1)[0]: dict(blob.metadata) for blob in found}


def counts(host: Devhost, container: str) -> dict[str, int]:
    """The host's blob counters for ``container``, and what it is running."""
    now = activity(host)
    return {
        "started": int(sum(now["started"].values())),
        "found": int(now["blobReceiptsFound"].get(container, 0)),
        "leased": int(now["blobLeasedElsewhere"].get(container, 0)),
        "scans": int(now["blobScans"].get(container, 0)),
        "running": int(now["running"]),
    }


def test_two_hosts_run_each_blob_version_once(api: Api, files: Files) -> None:
    """Twelve files uploaded while two hosts list the container: every version is run by one
    host only, each host finds done exactly what the other ran, and every row is stored once."""
    name, dataset_id = new_dataset(api)
    hosts = [files.start(), files.start()]
    container = files.ingest.container_name
    for k in range(12):
        rows = [product(k * 10 + i) for i in range(10)]
        files.upload(f"{name}/Product/part{k:02}.csv", as_csv(rows))
    wait_for(lambda: len(stored_ids(api, dataset_id)) >= 120, 90, "120 rows")

    # Not a pause: every version is settled in both hosts (run there, or its receipt found
    # complete, after which the host never looks at it again), and nothing is running.
    def settled() -> bool:
        return all(
            c["running"] == 0 and c["started"] + c["found"] == 12
            for c in (counts(h, container) for h in hosts)
        )

    wait_for(settled, 60, "both hosts to settle every version")
    first, second = (counts(h, container) for h in hosts)
    print(
        f"\nran {first['started']} + {second['started']}; found done by the other "
        f"{first['found']} + {second['found']}; skipped while leased elsewhere "
        f"{first['leased']} + {second['leased']}"
    )
    assert first["started"] + second["started"] == 12
    assert (first["found"], second["found"]) == (second["started"], first["started"])
    assert pending_posts(api, dataset_id) == 0
    ids = stored_ids(api, dataset_id)
    assert sorted(ids) == list(range(120)), "every row stored exactly once"
    found = receipts(files, FUNCTION)
    assert len(found) == 12
    assert all("Incomplete" not in metadata for metadata in found.values())


def test_a_lease_left_by_a_dead_process_delays_the_version_until_it_expires(
    api: Api, files: Files
) -> None:
    """A process holds the receipt's lease (as a devhost does mid-invocation) while two hosts
    start, then dies without releasing it: the hosts skip the version while the lease is held,
    and once it expires one of them runs it, once."""
    name, dataset_id = new_dataset(api)
    container = files.ingest.container_name
    blob = f"{name}/Product/orphan.csv"
    files.upload(blob, as_csv([product(i) for i in range(7)]))
    receipt = receipt_of(files, FUNCTION, blob)
    service = BlobServiceClient.from_connection_string(files.azurite.connection_string)
    with contextlib.suppress(ResourceExistsError):  # made by the first devhost of the session
        service.get_container_client(RECEIPTS).create_container()
    # What a devhost leaves when it is killed mid-invocation: an incomplete receipt, leased.
    receipt.upload_blob(b"", metadata={"Incomplete": "Incomplete"})
    lease: BlobLeaseClient = receipt.acquire_lease(lease_duration=15)  # never released
    hosts = [files.start(), files.start()]

    # The holder is alive until both hosts have found the version leased: it renews its lease
    # meanwhile (15 s each time), so however slowly the hosts start, they meet a held lease.
    deadline = time.monotonic() + 60
    while True:
        lease.renew()
        seen = [counts(h, container) for h in hosts]
        if all(c["leased"] >= 1 for c in seen):
            break
        assert time.monotonic() < deadline, f"the hosts never found the lease: {seen}"
        time.sleep(0.25)
    rows_meanwhile = stored_ids(api, dataset_id)
    # Renewing succeeds only if no one else took the lease since the last renewal: the counts
    # and rows above were read while this process held it.
    lease.renew()
    assert [c["started"] for c in seen] == [0, 0]
    assert rows_meanwhile == []

    died = time.monotonic()  # the holder stops renewing: its lease expires in 15 s
    wait_for(lambda: len(stored_ids(api, dataset_id)) >= 7, 60, "the version to run")
    delay = time.monotonic() - died

    def settled() -> bool:
        now = [counts(h, container) for h in hosts]
        return all(c["running"] == 0 and c["started"] + c["found"] == 1 for c in now)

    wait_for(settled, 60, "both hosts to settle the version")
    after = [counts(h, container) for h in hosts]
    print(
        f"\nran {delay:.1f} s after the holder stopped renewing (lease 15 s); skipped while "
        f"leased: {[c['leased'] for c in after]}"
    )
    assert sum(c["started"] for c in after) == 1
    assert sorted(stored_ids(api, dataset_id)) == list(range(7)), "each row exactly once"
    assert "Incomplete" not in receipts(files, FUNCTION)[blob]


def test_a_receipt_without_metadata_from_an_older_devhost_counts_as_done(
    api: Api, files: Files
) -> None:
    """Older devhost wrote receipts as empty blobs without metadata, after the run; the real
    host reads a receipt without ``Incomplete`` as complete, and so does devhost: not rerun."""
    name, dataset_id = new_dataset(api)
    container = files.ingest.container_name
    blob = f"{name}/Product/earlier.csv"
    files.upload(blob, as_csv([product(i) for i in range(3)]))
    service = BlobServiceClient.from_connection_string(files.azurite.connection_string)
    with contextlib.suppress(ResourceExistsError):
        service.get_container_client(RECEIPTS).create_container()
    receipt_of(files, FUNCTION, blob).upload_blob(b"")
    host = files.start()
    # Not a pause: the host has found the version done and listed the container again since.
    wait_for(
        lambda: counts(host, container)["found"] == 1 and counts(host, container)["scans"] >= 2,
        60,
        "the host to find the version done",
    )
    assert counts(host, container)["started"] == 0
    assert stored_ids(api, dataset_id) == []


FAILING_APP = """
import azure.functions as func

app = func.FunctionApp()


@app.function_name("always_fails")
@app.blob_trigger(arg_name="blob", path="%INGEST_CONTAINER%/{name}",
                  connection="AzureWebJobsStorage")
def always_fails(blob) -> None:
    raise RuntimeError("this file cannot be processed")
"""


def poison_messages(azurite: Azurite, container: str) -> list[dict[str, Any]]:
    """The blob poison reports for ``container`` (the queue is shared by every test)."""
    queue = QueueClient.from_connection_string(azurite.connection_string, POISON_QUEUE)
    try:
        peeked = queue.peek_messages(32)
    except ResourceNotFoundError:  # no blob has been poisoned yet in this Azurite
        return []
    found = [json.loads(base64.b64decode(m.content)) for m in peeked]
    return [m for m in found if m.get("ContainerName") == container]


def test_failed_tries_count_across_hosts(files: Files, azurite: Azurite, tmp_path: Path) -> None:
    """A file the function always fails on, with two hosts and maxDequeueCount 4: it is tried
    four times in all (not four times per host) and reported on the poison queue once."""
    (tmp_path / "failing_app.py").write_text(textwrap.dedent(FAILING_APP))
    env = {
        **files.env,
        "PYTHONPATH": str(REPO),
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "4",
    }
    hosts = []
    for _ in range(2):
        host = start_devhost(env, files.settings, "--app", "failing_app", cwd=tmp_path)
        files.hosts.append(host)  # stopped by the fixture
        hosts.append(host)
    container = files.ingest.container_name
    blob = "Any/Table/broken.csv"
    files.upload(blob, b"whatever")
    wait_for(lambda: bool(poison_messages(azurite, container)), 60, "the poison report")

    # Not a pause: the receipt is complete, the host that reported it never looks again, and
    # the other has found it complete; neither runs anything.
    def settled() -> bool:
        now = [counts(h, container) for h in hosts]
        return sum(c["found"] for c in now) == 1 and all(c["running"] == 0 for c in now)

    wait_for(settled, 60, "both hosts to settle the version")
    tries = [counts(h, container)["started"] for h in hosts]
    print(f"\ntries per host: {tries}")
    assert sum(tries) == 4
    (report,) = poison_messages(azurite, container)
    assert report["BlobName"] == blob
    assert report["FunctionId"] == "Host.Functions.always_fails"
    metadata = receipts(files, "always_fails")[blob]
    assert "Incomplete" not in metadata
    assert metadata["DevhostFailedTries"] == "4"
