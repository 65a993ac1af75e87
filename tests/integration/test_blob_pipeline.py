"""Files uploaded to Azurite's ingest container arrive in the emulator: devhost runs the blob
trigger (once per blob version), the engine streams, checkpoints and resumes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess
from tests.integration.test_devhost import Devhost, app_environment, start_devhost

COLUMNS = [
    {"name": "ProductID", "dataType": "Int64"},
    {"name": "Product", "dataType": "string"},
    {"name": "IsCompete", "dataType": "bool"},
    {"name": "Price", "dataType": "Double"},
]


def product(i: int) -> dict[str, Any]:
    return {"ProductID": i, "Product": f"Part {i}", "IsCompete": i % 2 == 0, "Price": i / 4}


def as_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def as_ndjson(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def as_json(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"rows": rows}).encode()


@dataclass
class Files:
    azurite: Azurite
    env: dict[str, str]
    settings: Path
    ingest: ContainerClient
    hosts: list[Devhost] = field(default_factory=list)

    def start(self, **overrides: str) -> Devhost:
        host = start_devhost({**self.env, **overrides}, self.settings)
        self.hosts.append(host)
        return host

    def upload(self, name: str, data: bytes) -> None:
        self.ingest.upload_blob(name, data, overwrite=True)

    def dead_letters(self) -> list[dict[str, Any]]:
        return dead_letter_lines(self.azurite.connection_string, self.env["DEADLETTER_CONTAINER"])


@pytest.fixture
def files(emulator: EmulatorProcess, azurite: Azurite, tmp_path: Path) -> Iterator[Files]:
    suffix = uuid.uuid4().hex[:10]
    env = app_environment(emulator, azurite, f"rows{suffix}")
    env.update(
        INGEST_CONTAINER=f"ingest{suffix}",
        CHECKPOINT_CONTAINER=f"checkpoints{suffix}",
        DEADLETTER_CONTAINER=f"dl{suffix}",
        DEVHOST_BLOB_POLL_SECONDS="0.3",
        PYTHONUNBUFFERED="1",
    )
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    ingest = service.get_container_client(env["INGEST_CONTAINER"])
    ingest.create_container()
    setup = Files(azurite, env, settings, ingest)
    yield setup
    for host in setup.hosts:
        host.stop()


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what} after {seconds} s")


def activity(host: Devhost) -> dict[str, Any]:
    """What the host has done so far (devhost's ``/admin/devhost/activity`` counters)."""
    session = requests.Session()
    session.trust_env = False
    answer: dict[str, Any] = session.get(f"{host.base}/admin/devhost/activity", timeout=10).json()
    return answer


def pending_posts(api: Api, dataset_id: str) -> int:
    """Post Rows requests the emulator is still working on for the dataset."""
    return int(api.state(dataset_id)["usage"]["pending"])


def checkpoint(files: Files, blob: str) -> dict[str, Any]:
    """The engine's checkpoint of ``blob`` in the ingest container (shared/stores/checkpoint.py:
    ``<account>/<container>/<name>.json``)."""
    service = BlobServiceClient.from_connection_string(files.azurite.connection_string)
    container = service.get_container_client(files.env["CHECKPOINT_CONTAINER"])
    source = f"{service.account_name}/{files.ingest.container_name}/{blob}"
    saved: dict[str, Any] = json.loads(container.download_blob(f"{source}.json").readall())
    return saved


def new_dataset(api: Api) -> tuple[str, str]:
    name = f"Files-{uuid.uuid4().hex[:6]}"
    return name, api.create_dataset(
        [{"name": "Product", "columns": COLUMNS}], WORKSPACE_ID, name=name
    )


def stored_ids(api: Api, dataset_id: str) -> list[int]:
    return [int(r["ProductID"]) for r in api.stored_rows(dataset_id, "Product")]


def test_csv_ndjson_json_plain_and_gzip_all_arrive(api: Api, files: Files) -> None:
    """Six files, three formats, plain and gzip, each of 1,000 rows: all 6,000 rows arrive once,
    with values typed by the table's schema."""
    name, dataset_id = new_dataset(api)
    makers = {"csv": as_csv, "ndjson": as_ndjson, "json": as_json}
    start = 0
    for number, (kind, make) in enumerate(makers.items()):
        for gz in (False, True):
            rows = [product(start + i) for i in range(1_000)]
            data = make(rows)
            files.upload(
                f"{name}/Product/part{number}.{kind}{'.gz' if gz else ''}",
                gzip.compress(data) if gz else data,
            )
            start += 1_000
    files.start()
    wait_for(lambda: len(stored_ids(api, dataset_id)) >= 6_000, 90, "6,000 rows")
    stored = api.stored_rows(dataset_id, "Product")
    assert sorted(int(r["ProductID"]) for r in stored) == list(range(6_000))
    by_id = {int(r["ProductID"]): r for r in stored}
    assert by_id[7] == {"ProductID": 7, "Product": "Part 7", "IsCompete": False, "Price": 1.75}
    assert by_id[5_002]["IsCompete"] is True  # from a gzipped JSON file
    assert files.dead_letters() == []


def test_malformed_files_deliver_their_good_rows_and_dead_letter_the_rest(
    api: Api, files: Files
) -> None:
    """Truncated gzip, a ragged CSV, JSON invalid midway and a line in the wrong encoding: the
    good rows arrive; the rest is dead-lettered with the file, the line and the reason."""
    name, dataset_id = new_dataset(api)
    whole = gzip.compress(as_ndjson([product(i) for i in range(20_000)]))
    files.upload(f"{name}/Product/truncated.ndjson.gz", whole[: len(whole) // 2])
    ragged = as_csv([product(i) for i in range(30_000, 30_010)]).replace(
        b"30003,Part 30003,False,7500.75", b"30003,Part 30003,False"
    )
    files.upload(f"{name}/Product/ragged.csv", ragged)
    good_json = as_json([product(i) for i in range(40_000, 40_005)])
    files.upload(f"{name}/Product/broken.json", good_json[:-40] + b", {oops")
    latin = (
        as_ndjson([product(50_000)])
        + '{"ProductID": 50001, "Product": "café"}\n'.encode("latin-1")
        + as_ndjson([product(50_002)])
    )
    files.upload(f"{name}/Product/latin1.ndjson", latin)
    files.start()
    wait_for(lambda: len(files.dead_letters()) >= 4, 90, "the dead letters")
    wait_for(lambda: 50_002 in stored_ids(api, dataset_id), 60, "the last good row")
    ids = set(stored_ids(api, dataset_id))
    assert {50_000, 50_002} <= ids and 50_001 not in ids
    assert set(range(30_000, 30_010)) - ids == {30_003}
    assert 0 < len(ids & set(range(20_000))) < 20_000  # the part before the cut
    letters = files.dead_letters()
    by_file = {letter["source"].split("/")[-1]: letter["reason"] for letter in letters}
    assert "truncated" in by_file["truncated.ndjson.gz"]
    assert "line 5" in by_file["ragged.csv"] and "fields" in by_file["ragged.csv"]
    assert "invalid" in by_file["broken.json"]
    assert "UTF-8" in by_file["latin1.ndjson"] and "line 2" in by_file["latin1.ndjson"]


def test_a_blob_version_is_ingested_once_and_a_new_version_again(api: Api, files: Files) -> None:
    """The same blob version is not pushed twice (a restart included); an overwrite is."""
    name, dataset_id = new_dataset(api)
    files.upload(f"{name}/Product/once.csv", as_csv([product(i) for i in range(10)]))
    first = files.start()
    wait_for(lambda: len(stored_ids(api, dataset_id)) == 10, 60, "10 rows")
    first.stop()
    second = files.start()
    # Not a pause: the restarted host has looked at the version and found its receipt (from
    # then on it never runs it), and has listed the container again since.
    container = files.ingest.container_name
    wait_for(
        lambda: (
            activity(second)["blobReceiptsFound"].get(container, 0) == 1
            and activity(second)["blobScans"].get(container, 0) >= 2
        ),
        60,
        "the restarted host to find the version done",
    )
    assert activity(second)["started"].get("ingest_blob", 0) == 0
    assert len(stored_ids(api, dataset_id)) == 10
    files.upload(f"{name}/Product/once.csv", as_csv([product(i) for i in range(100, 105)]))
    wait_for(lambda: len(stored_ids(api, dataset_id)) == 15, 60, "the new version's rows")


def test_kill_mid_file_and_resume(api: Api, files: Files) -> None:
    """SIGKILL the host in the middle of a file; after a restart the file completes from its
    checkpoint. The duplicates are exactly the rows stored at or past the checkpoint when the
    host died (delivered, but not yet recorded as delivered), and nothing else."""
    name, dataset_id = new_dataset(api)
    total = 120_000
    blob = f"{name}/Product/big.csv"
    files.upload(blob, as_csv([product(i) for i in range(total)]))
    api.set_faults(latency_ms=400, latency_rate=1.0)  # slow Power BI down: time to kill
    host = files.start()
    wait_for(lambda: len(stored_ids(api, dataset_id)) >= 30_000, 120, "30,000 rows")
    os.kill(host.process.pid, signal.SIGKILL)
    host.process.wait()
    # POSTs the host had sent before it died still finish at the emulator: wait for them.
    wait_for(lambda: pending_posts(api, dataset_id) == 0, 30, "the emulator to finish")
    before = stored_ids(api, dataset_id)
    resume_at = int(checkpoint(files, blob)["next_row"])
    api.session.delete(f"{api.emulator.base}/_emulator/faults")
    second = files.start()
    wait_for(lambda: len(set(stored_ids(api, dataset_id))) == total, 120, "the whole file")
    # Not a pause: the file is recorded done, the host runs nothing and Power BI has nothing
    # pending, so no row can still arrive.
    wait_for(
        lambda: (
            checkpoint(files, blob)["done"]
            and activity(second)["running"] == 0
            and pending_posts(api, dataset_id) == 0
        ),
        60,
        "the file to be recorded done",
    )
    ids = stored_ids(api, dataset_id)
    duplicates = len(ids) - len(set(ids))
    expected = sum(1 for i in before if i >= resume_at)
    print(
        f"\nkilled with {len(before)} rows stored, checkpoint at row {resume_at}; after resume "
        f"{len(ids)} rows, {duplicates} duplicates"
    )
    assert any(f"from row {resume_at}" in line for line in second.output), "resumed elsewhere"
    assert set(ids) == set(range(total))
    assert ids[: len(before)] == before  # nothing stored before the kill was lost or moved
    assert api.state(dataset_id)["answersLost"] == []  # no other cause of duplicates
    assert duplicates == expected
    assert Counter(ids).most_common(1)[0][1] <= 2


def test_a_file_that_cannot_finish_in_time_is_handed_on_and_completes(
    api: Api, files: Files
) -> None:
    """Throttled past the blob's time budget, the file checkpoints, hands the rest on as a
    continuation message due after Retry-After, and the queue function completes it."""
    name, dataset_id = new_dataset(api)
    total = 30_000
    files.upload(f"{name}/Product/long.csv", as_csv([product(i) for i in range(total)]))
    api.set_faults(script=["ok", "throttle"], retry_after=3)
    host = files.start(BLOB_TIME_BUDGET_SECONDS="1")
    wait_for(lambda: len(stored_ids(api, dataset_id)) == total, 90, "the whole file")
    ids = stored_ids(api, dataset_id)
    assert sorted(ids) == list(range(total)), "every row once"
    assert any("handed on" in line for line in host.output)
    assert any("continued" in line for line in host.output)


def test_a_row_with_three_bad_columns_is_one_dead_letter_naming_all_three(
    api: Api, files: Files
) -> None:
    """An uploaded CSV whose row 3 is wrong in three columns: one dead letter for that row,
    naming each column and why; the other rows stored."""
    name, dataset_id = new_dataset(api)
    rows = [product(i) for i in range(5)]
    data = as_csv(rows).replace(b"2,Part 2,True,0.5", b"two,Part 2,maybe,cheap")
    files.upload(f"{name}/Product/three-bad.csv", data)
    files.start()
    wait_for(lambda: len(files.dead_letters()) == 1, 60, "the dead letter")
    wait_for(lambda: len(stored_ids(api, dataset_id)) == 4, 60, "the good rows")

    (letter,) = files.dead_letters()
    assert sorted(stored_ids(api, dataset_id)) == [0, 1, 3, 4]
    assert letter["index"] == 2 and letter["column"] == "ProductID"
    assert letter["reason"] == (
        "3 columns refused: ProductID: expected a whole number, got 'two'; "
        "IsCompete: expected true or false, got str 'maybe'; "
        "Price: expected a number, got 'cheap'"
    )
