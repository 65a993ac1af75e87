"""Destinations per table through :class:`~shared.engine.ingest.Ingestor` (issue 18): the seed's
SalesMarketing dataset routed to the Eventhouse only and to both, against the emulator (Power
BI and its Kusto surface, the real azure-kusto clients) and Azurite (dead letters, queued
ingestion). Every row is counted in each destination; faults on Kusto only leave Power BI's
rows exactly as they are alone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from shared.cli.replay import replay_dead_letters
from shared.contracts import PushResult, Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.eventhouse import EventhouseClient
from shared.destinations.powerbi import PowerBIClient
from shared.engine.coalesce import Coalescer
from shared.engine.ingest import Ingestor, PushIncomplete
from shared.engine.retry import RetryPolicy
from shared.engine.routing import parse_routing
from shared.settings import Settings
from shared.sources.blob_ingest import BlobIngest
from shared.sources.claimcheck import ClaimCheckStore
from shared.sources.queue_ingest import QueueIngest
from shared.stores.checkpoint import CheckpointStore
from shared.stores.deadletter import BlobDeadLetterStore
from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, Api, EmulatorProcess
from tests.emulator.kusto_fixtures import start_kusto_emulator
from tests.seed import definition, product

DATABASE = "Sales"
FAST = RetryPolicy(max_attempts=8, base_delay=0.0, max_delay=0.0)
#: Rows the validator refuses, mixed into the input: one dead letter each, naming no
#: destination (refused before delivery), counted as rejected by every destination.
BAD = [{"ProductID": "not a number"}, "not an object", {"ProductID": 1, "Colour": "red"}]


@pytest.fixture(scope="module")
def both(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One emulator serving Power BI and Kusto, queued ingestion through Azurite."""
    emulator = start_kusto_emulator(
        azurite, tmp_path_factory.mktemp("fanout"), "--kusto-database", DATABASE
    )
    yield emulator
    emulator.stop()


@pytest.fixture
def kusto(both: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[EventhouseClient]:
    requests.delete(f"{both.base}/_emulator/kusto/faults", timeout=10).raise_for_status()
    # azure-identity's ManagedIdentityCredential reads these (App Service's variables).
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{both.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    with EventhouseClient.from_settings(settings(both)) as client:
        yield client
    requests.delete(f"{both.base}/_emulator/kusto/faults", timeout=10).raise_for_status()


@pytest.fixture
def store(azurite: Azurite) -> BlobDeadLetterStore:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return BlobDeadLetterStore(service.get_container_client(f"dl-{uuid.uuid4().hex[:12]}"))


def settings(emulator: EmulatorProcess) -> Settings:
    return Settings.from_env({"EVENTHOUSE_URI": emulator.base, "EVENTHOUSE_DATABASE": DATABASE})


def letters_of(store: BlobDeadLetterStore) -> list[dict[str, Any]]:
    if not store.container.exists():
        return []
    found: list[dict[str, Any]] = []
    for blob in store.container.list_blobs():
        text = store.container.download_blob(blob.name).readall().decode("utf-8")
        found.extend(json.loads(line) for line in text.split("\n") if line.strip())
    return found


class Case:
    """A fresh dataset name and Kusto table prefix per test (the emulator is shared)."""

    def __init__(
        self,
        emulator: EmulatorProcess,
        kusto: EventhouseClient,
        store: BlobDeadLetterStore,
        destinations: list[str],
    ) -> None:
        self.emulator = emulator
        self.kusto = kusto
        self.name = f"Sales{uuid.uuid4().hex[:6]}"
        self.prefix = f"T{uuid.uuid4().hex[:6]}_"
        self.table = f"{self.prefix}Product"
        self.definition = definition(self.name)
        routing = parse_routing(
            {"tables": {"Product": destinations}, "eventhouse": {"table_prefix": self.prefix}},
            f"datasets/{self.name}.destinations.json",
            self.definition,
            settings(emulator),
        )
        self.api = Api(emulator)
        self.ingestor = Ingestor(
            PowerBIClient(emulator.base, StaticTokenProvider(self.api.token), retry=FAST),
            definitions={self.name: self.definition},
            routing={self.name: routing},
            eventhouse=kusto,
            dead_letters=store,
            retry=FAST,
        )
        self.target = Target(self.name, "Product")

    def rows(self, count: int) -> tuple[list[Any], list[int]]:
        """``count`` rows, every 1000th one (from 7) a bad one; and the good rows' ids."""
        rows: list[Any] = []
        good: list[int] = []
        for i in range(count):
            if i % 1000 == 7:
                rows.append(BAD[(i // 1000) % len(BAD)])
            else:
                rows.append(product(i))
                good.append(i)
        return rows, good

    def powerbi_ids(self, result: PushResult) -> list[int]:
        powerbi = result.destinations.get("powerbi", result)
        assert powerbi.dataset_id
        return sorted(r["ProductID"] for r in self.api.stored_rows(powerbi.dataset_id, "Product"))

    def powerbi_ids_by_name(self) -> list[int]:
        (dataset,) = [
            d["id"]
            for d in self.api.request("GET", f"{self.emulator.api}/datasets").json()["value"]
            if d["name"] == self.name
        ]
        return sorted(r["ProductID"] for r in self.api.stored_rows(dataset, "Product"))

    def kusto_ids(self) -> list[int]:
        requests.post(f"{self.emulator.base}/_emulator/kusto/flush", timeout=60).raise_for_status()
        count = self.kusto.count(self.table)
        back = self.kusto.rows(self.table, count + 10)
        assert len(back) == count
        return sorted(int(r["ProductID"]) for r in back)

    def powerbi_datasets(self) -> list[str]:
        found = self.api.request("GET", f"{self.emulator.api}/datasets").json()["value"]
        return [d["name"] for d in found if d["name"] == self.name]


def accounted(result: PushResult) -> None:
    """Every row of a destination's result is sent, rejected, unconfirmed or unsent."""
    assert result.sent + result.rejected + result.unsent == result.received
    assert result.unconfirmed <= result.unsent


def test_eventhouse_only_reads_back_every_row_and_never_touches_power_bi(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    case = Case(both, kusto, store, ["eventhouse"])
    rows, good = case.rows(2_500)
    # The all-or-nothing check and the blob path's ALLOWED_TARGETS check: no Power BI call.
    assert [p.index for p in case.ingestor.problems(case.target, rows[:1_010])] == [7, 1_007]
    assert case.ingestor.allowed(case.target) is None
    result = case.ingestor.push(case.target, rows, source="test.json")
    assert set(result.destinations) == {"eventhouse"}
    assert result.destinations["eventhouse"] is result  # the only one is the top level
    assert (result.received, result.sent, result.rejected, result.unsent) == (2_500, 2_497, 3, 0)
    assert result.dead_lettered == 3 and result.dataset_id is None
    assert case.kusto_ids() == good
    back = {int(r["ProductID"]): r for r in kusto.rows(case.table, 3_000)}
    assert back[0] == product(0) and back[2_499] == product(2_499)
    assert case.powerbi_datasets() == []  # no Power BI call was made for it
    letters = letters_of(store)
    assert sorted(letter["index"] for letter in letters) == [7, 1007, 2007]
    assert {letter["destination"] for letter in letters} == {None}
    summary = result.to_json()
    assert summary["destinations"]["eventhouse"]["sent"] == 2_497


def test_both_destinations_get_every_valid_row_and_bad_rows_are_kept_once(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    rows, good = case.rows(25_000)
    result = case.ingestor.push(case.target, rows, source="test.json")
    powerbi, eventhouse = result.destinations["powerbi"], result.destinations["eventhouse"]
    assert powerbi is result  # the top level stays Power BI's (HTTP answers, the surface)
    for one in (powerbi, eventhouse):
        accounted(one)
        assert (one.received, one.sent, one.rejected, one.unsent) == (25_000, len(good), 25, 0)
        assert one.dead_lettered == 25
    assert powerbi.batches == 3  # as alone: 24,975 rows in three Add Rows
    assert eventhouse.batches == 3  # chunks of 10,000 rows
    assert case.powerbi_ids(result) == good
    assert case.kusto_ids() == good
    letters = letters_of(store)
    assert len(letters) == 25  # once, not once per destination
    assert {letter["destination"] for letter in letters} == {None}
    summary = result.to_json()
    assert summary["sent"] == len(good)
    assert {k: v["sent"] for k, v in summary["destinations"].items()} == {
        "powerbi": len(good),
        "eventhouse": len(good),
    }


def test_a_throttled_kusto_command_is_retried_and_power_bi_is_untouched(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    requests.put(
        f"{both.base}/_emulator/kusto/faults",
        json={"script": ["throttle", "throttle"], "all_operations": True},
        timeout=10,
    ).raise_for_status()
    rows, good = case.rows(3_000)
    result = case.ingestor.push(case.target, rows)
    powerbi, eventhouse = result.destinations["powerbi"], result.destinations["eventhouse"]
    assert (powerbi.sent, powerbi.retries) == (len(good), 0)
    assert eventhouse.sent == len(good)
    assert case.powerbi_ids(result) == good
    assert case.kusto_ids() == good


def test_kusto_failing_transiently_stops_only_the_eventhouse(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    """Streaming answers 503 (the client then queues), and the queued path's command answers
    503 too: the Eventhouse stops, its rows unconfirmed or unsent; Power BI gets every row."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.ensure_table(case.definition, "Product", name=case.table)
    requests.put(
        f"{both.base}/_emulator/kusto/faults",
        json={"error_503": 1.0, "all_operations": True},
        timeout=10,
    ).raise_for_status()
    rows, good = case.rows(15_000)
    with pytest.raises(PushIncomplete) as caught:
        case.ingestor.push(case.target, rows)
    requests.delete(f"{both.base}/_emulator/kusto/faults", timeout=10).raise_for_status()
    result = caught.value.result
    powerbi, eventhouse = result.destinations["powerbi"], result.destinations["eventhouse"]
    accounted(powerbi)
    accounted(eventhouse)
    assert (powerbi.sent, powerbi.unsent, powerbi.stopped) == (len(good), 0, None)
    assert case.powerbi_ids(result) == good  # exactly as alone
    assert eventhouse.stopped is not None and eventhouse.sent == 0
    assert eventhouse.unsent == len(good) and eventhouse.rejected == 15
    assert "503" in str(caught.value)
    assert case.kusto_ids() == []
    # No Eventhouse row was dead-lettered: a transient stop is the caller's to redeliver.
    assert {letter["destination"] for letter in letters_of(store)} == {None}


def test_power_bi_failing_stops_only_power_bi(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    """The mirror case: Add Rows fails (an ambiguous 500, then nothing more is sent to Power
    BI); the Eventhouse still gets every valid row."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    case.ingestor.provision(case.definition)  # the dataset exists before the faults start
    case.api.set_faults(script=["ok", "error_500"])  # the second Add Rows fails
    rows, good = case.rows(25_000)
    try:
        with pytest.raises(PushIncomplete) as caught:
            case.ingestor.push(case.target, rows)
    finally:
        case.api.session.delete(f"{both.base}/_emulator/faults", timeout=10)
    result = caught.value.result
    powerbi, eventhouse = result.destinations["powerbi"], result.destinations["eventhouse"]
    accounted(powerbi)
    accounted(eventhouse)
    assert powerbi.stopped is not None and powerbi.sent == 10_000
    assert powerbi.unconfirmed == 10_000  # the failed batch: its answer was a 500
    assert (eventhouse.sent, eventhouse.unsent, eventhouse.stopped) == (len(good), 0, None)
    assert case.kusto_ids() == good
    assert case.powerbi_ids(result) == good[:10_000]


def test_kusto_refusing_the_table_dead_letters_its_rows_by_name_and_replay_sends_them_there(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    """A KQL table whose ProductID is a string cannot take the definition: every valid row is
    dead-lettered naming the Eventhouse; Power BI's rows are as alone; once the table is
    dropped, replay sends those letters to the Eventhouse only (no Power BI duplicates)."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.execute(f".create-merge table {case.table} (ProductID: string)")
    rows, good = case.rows(2_000)
    result = case.ingestor.push(case.target, rows, source="test.json")
    powerbi, eventhouse = result.destinations["powerbi"], result.destinations["eventhouse"]
    accounted(powerbi)
    accounted(eventhouse)
    assert (powerbi.sent, powerbi.rejected, powerbi.dead_lettered) == (len(good), 2, 2)
    assert (eventhouse.sent, eventhouse.rejected) == (0, 2_000)
    assert eventhouse.dead_lettered == 2_000 and eventhouse.failure is not None
    assert "ProductID" in eventhouse.failure.message
    letters = letters_of(store)
    named = [letter for letter in letters if letter["destination"] == "eventhouse"]
    assert sorted(letter["index"] for letter in named) == good
    assert len(letters) == len(good) + 2  # the two bad rows once, naming none
    assert case.powerbi_ids(result) == good

    kusto.execute(f".drop table {case.table}")
    kusto._ready.clear()  # the client remembers the table as made ready
    report = replay_dead_letters(store.container, case.ingestor)
    assert report.stopped is None
    assert case.kusto_ids() == good
    assert case.powerbi_ids(result) == good  # not one row twice


def test_a_queue_message_is_re_sent_for_the_eventhouse_only_when_power_bi_delivered(
    both: EmulatorProcess,
    kusto: EventhouseClient,
    store: BlobDeadLetterStore,
    azurite: Azurite,
) -> None:
    """The queue path: Kusto answers 503 to everything, Power BI delivers; the message is
    completed and re-sent with ``"destinations": ["eventhouse"]``; handled once Kusto is back,
    it fills the Eventhouse and adds nothing to Power BI."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.ensure_table(case.definition, "Product", name=case.table)
    queue = QueueClient.from_connection_string(
        azurite.connection_string, f"rows{uuid.uuid4().hex[:10]}"
    )
    queue.create_queue()

    def no_claim_checks() -> ClaimCheckStore:
        raise AssertionError("no message here uses a claim check")

    handler = QueueIngest(
        lambda: coalescer,
        no_claim_checks,
        lambda: store,
        rows_queue=lambda: queue,
        redelivery_delay=0.0,
    )
    coalescer = Coalescer(case.ingestor, linger=0.0, max_wait=0.0)
    rows = [product(i) for i in range(200)]  # one message: under 64 KiB
    body = json.dumps({"dataset": case.name, "table": "Product", "rows": rows}).encode()
    requests.put(
        f"{both.base}/_emulator/kusto/faults",
        json={"error_503": 1.0, "all_operations": True},
        timeout=10,
    ).raise_for_status()
    first = asyncio.run(handler.handle(body, "m1"))
    requests.delete(f"{both.base}/_emulator/kusto/faults", timeout=10).raise_for_status()
    assert first is not None and first.sent == 200  # Power BI's: the original is completed
    assert first.destinations["eventhouse"].stopped is not None
    assert case.powerbi_ids(first) == list(range(200))
    (resent,) = queue.receive_messages(visibility_timeout=60, max_messages=32)  # redelivery_delay 0
    again = json.loads(resent.content)
    assert again["destinations"] == ["eventhouse"] and len(again["rows"]) == 200
    second = asyncio.run(handler.handle(resent.content.encode(), resent.id))
    assert second is not None and set(second.destinations) == {"eventhouse"}
    assert second.sent == 200
    assert case.kusto_ids() == list(range(200))
    assert case.powerbi_ids(first) == list(range(200))  # not one row twice


def test_a_blob_resumes_each_destination_from_its_own_checkpoint(
    both: EmulatorProcess,
    kusto: EventhouseClient,
    store: BlobDeadLetterStore,
    azurite: Azurite,
) -> None:
    """Kusto fails: Power BI takes the whole file, the Eventhouse nothing, and the checkpoint
    says so per destination. The retried blob sends the Eventhouse every row and Power BI
    none again."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.ensure_table(case.definition, "Product", name=case.table)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    files = service.get_container_client(f"files-{uuid.uuid4().hex[:10]}")
    files.create_container()
    rows, good = case.rows(12_000)
    name = f"{case.name}/Product/products.ndjson"
    files.upload_blob(name, "\n".join(json.dumps(row) for row in rows).encode())
    checkpoints = CheckpointStore(service.get_container_client(f"cp-{uuid.uuid4().hex[:10]}"))
    blobs = BlobIngest(case.ingestor, checkpoints, store)
    blob = files.get_blob_client(name)
    requests.put(
        f"{both.base}/_emulator/kusto/faults",
        json={"error_503": 1.0, "all_operations": True},
        timeout=10,
    ).raise_for_status()
    try:
        with pytest.raises(PushIncomplete):
            blobs.handle(blob)
    finally:
        requests.delete(f"{both.base}/_emulator/kusto/faults", timeout=10).raise_for_status()
    source = f"{blob.account_name}/{files.container_name}/{name}"
    saved = checkpoints.load(source, str(blob.get_blob_properties().etag))
    assert saved.positions["eventhouse"] == 0 < saved.positions["powerbi"]
    assert saved.next_row == 0 and not saved.done
    assert case.powerbi_ids_by_name() == good

    outcome = blobs.handle(blob)
    assert outcome.status == "done"
    assert case.kusto_ids() == good
    assert case.powerbi_ids_by_name() == good  # not one row twice


def test_a_big_file_goes_to_the_eventhouse_by_queued_ingestion_a_small_one_streams(
    both: EmulatorProcess,
    kusto: EventhouseClient,
    store: BlobDeadLetterStore,
    azurite: Azurite,
) -> None:
    """Files at least EVENTHOUSE_QUEUED_FILE_BYTES big are bulk (queued ingestion: a blob and
    a queue message per chunk, read by the service later); smaller ones stream. Power BI's
    side is the same either way."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    files = service.get_container_client(f"files-{uuid.uuid4().hex[:10]}")
    files.create_container()
    small = [product(i) for i in range(0, 300)]
    big = [product(i) for i in range(300, 15_300)]
    for name, rows in (("small.ndjson", small), ("big.ndjson", big)):
        files.upload_blob(
            f"{case.name}/Product/{name}", "\n".join(json.dumps(r) for r in rows).encode()
        )
    size = files.get_blob_client(f"{case.name}/Product/big.ndjson").get_blob_properties().size
    checkpoints = CheckpointStore(service.get_container_client(f"cp-{uuid.uuid4().hex[:10]}"))
    blobs = BlobIngest(case.ingestor, checkpoints, store, queued_file_bytes=size)

    def counters() -> dict[str, int]:
        state = requests.get(f"{both.base}/_emulator/kusto/state", timeout=10).json()
        return {
            k: int(state["counters"].get(k, 0)) for k in ("streaming_requests", "queued_messages")
        }

    kusto.ensure_table(case.definition, "Product", name=case.table)
    assert case.kusto_ids() == []  # flushes what is queued: the counters are this test's alone
    before = counters()
    blobs.handle(files.get_blob_client(f"{case.name}/Product/small.ndjson"))
    assert case.kusto_ids() == list(range(300))
    middle = counters()
    assert middle["streaming_requests"] - before["streaming_requests"] == 1
    assert middle["queued_messages"] == before["queued_messages"]
    blobs.handle(files.get_blob_client(f"{case.name}/Product/big.ndjson"))
    assert case.kusto_ids() == list(range(15_300))  # kusto_ids flushes the queued batches
    after = counters()
    assert after["streaming_requests"] == middle["streaming_requests"]
    assert after["queued_messages"] - middle["queued_messages"] == 2  # 10,000 + 5,000 rows
    assert case.powerbi_ids_by_name() == list(range(15_300))
