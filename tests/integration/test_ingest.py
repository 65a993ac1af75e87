"""push() end to end: the emulator as Power BI, Azurite as the dead-letter store."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from shared.contracts import Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.governor import Governor, Quotas
from shared.engine.ingest import Ingestor, PushIncomplete, _Resolved
from shared.engine.retry import RetryPolicy
from shared.stores.deadletter import BlobDeadLetterStore
from tests.azurite import Azurite
from tests.emulator.conftest import WORKSPACE_NAME, Api, start_emulator
from tests.seed import definition, product

FAST = RetryPolicy(max_attempts=8, base_delay=0.0, max_delay=0.0)


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line these tests produce, at any level, is free of bearer tokens."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert "eyJ" not in record.getMessage(), f"a JWT reached a log line: {record.name}"


@pytest.fixture
def store(azurite: Azurite) -> BlobDeadLetterStore:
    """A dead-letter container of its own in Azurite."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return BlobDeadLetterStore(service.get_container_client(f"dl-{uuid.uuid4().hex[:12]}"))


def dead_letters(store: BlobDeadLetterStore) -> list[dict[str, Any]]:
    """Every dead letter in the store, read back from Azurite (none: not even the container)."""
    lines: list[dict[str, Any]] = []
    if not store.container.exists():
        return lines
    for blob in store.container.list_blobs():
        text = store.container.download_blob(blob.name).readall().decode("utf-8")
        lines.extend(json.loads(line) for line in text.splitlines())
    return lines


def ingestor_for(api: Api, store: BlobDeadLetterStore | None, *names: str) -> Ingestor:
    client = PowerBIClient(api.emulator.base, StaticTokenProvider(api.token), retry=FAST)
    return Ingestor(
        client,
        definitions={name: definition(name) for name in names},
        dead_letters=store,
        retry=FAST,
    )


def dataset_id(api: Api, name: str, group: str | None = None) -> str:
    found = api.request("GET", f"{api.prefix(group)}/datasets").json()["value"]
    (match,) = [d["id"] for d in found if d["name"] == name]
    return str(match)


def test_25000_rows_arrive_as_three_posts_into_a_dataset_created_from_its_definition(
    api: Api, store: BlobDeadLetterStore
) -> None:
    """A missing dataset is created from its definition; 25,000 rows take three POSTs."""
    name = f"Sales-{uuid.uuid4().hex[:6]}"
    ingestor = ingestor_for(api, store, name)
    result = ingestor.push(
        Target(name, "Product", WORKSPACE_NAME), [product(i) for i in range(25_000)]
    )
    assert (result.received, result.sent, result.rejected, result.batches) == (25_000, 25_000, 0, 3)
    stored = api.stored_rows(result.dataset_id or "", "Product")
    assert [r["ProductID"] for r in stored] == list(range(25_000))
    assert api.state(result.dataset_id or "")["counters"]["posts_accepted"] == 3
    # A second push finds the dataset instead of creating another one.
    ingestor_for(api, store, name).push(Target(name, "Product", WORKSPACE_NAME), [product(-1)])
    assert dataset_id(api, name, _group(api)) == result.dataset_id


def _group(api: Api) -> str:
    groups = api.request("GET", f"{api.emulator.api}/groups").json()["value"]
    return str(next(g["id"] for g in groups if g["name"] == WORKSPACE_NAME))


def test_mixed_stream_loses_no_row(api: Api, store: BlobDeadLetterStore) -> None:
    """Good rows arrive, bad rows are dead-lettered with reasons, and the counts add up."""
    name = f"Mixed-{uuid.uuid4().hex[:6]}"
    bad_kinds = [
        {"ProductID": "not a number"},
        {"ProductID": 2**63 - 1},
        {"ProductID": 1, "Colour": "red"},
        {"ProductID": 1, "Product": "x" * 4_001},
        {"ProductID": 1, "IsCompete": "maybe"},
        "not an object",
    ]
    rows: list[Any] = []
    bad_indices = []
    for i in range(1_200):
        if i % 10 == 3:
            bad_indices.append(i)
            rows.append(bad_kinds[(i // 10) % len(bad_kinds)])
        else:
            rows.append(product(i))
    result = ingestor_for(api, store, name).push(Target(name, "Product"), rows, source="test.json")
    assert result.received == 1_200
    assert result.sent + result.rejected == result.received and result.unsent == 0
    assert result.rejected == result.dead_lettered == len(bad_indices)
    stored = api.stored_rows(result.dataset_id or "", "Product")
    assert len(stored) == result.sent
    letters = dead_letters(store)
    assert sorted(letter["index"] for letter in letters) == bad_indices
    assert all(letter["reason"] and letter["source"] == "test.json" for letter in letters)
    assert {letter["target"]["dataset"] for letter in letters} == {name}
    reasons = " | ".join(letter["reason"] for letter in letters)
    for expected in (
        "whole number",
        "Int64.MaxValue",
        "no column 'Colour'",
        "4,000",
        "true or false",
    ):
        assert expected in reasons


def test_missing_dataset_without_definition_dead_letters_every_row(
    api: Api, store: BlobDeadLetterStore
) -> None:
    """No dataset and no definition: every row goes to the dead letters with the reason."""
    result = ingestor_for(api, store).push(Target("NoSuchDataset", "T"), [{"a": 1}, {"a": 2}])
    assert (result.sent, result.rejected, result.dead_lettered) == (0, 2, 2)
    letters = dead_letters(store)
    assert [letter["index"] for letter in letters] == [0, 1]
    assert "does not exist" in letters[0]["reason"]


def test_definition_with_an_added_column_widens_the_table(
    api: Api, store: BlobDeadLetterStore
) -> None:
    """An additive column change in the definition is applied with Put Table, then used."""
    name = f"Widen-{uuid.uuid4().hex[:6]}"
    narrow = [{"name": "Product", "columns": [{"name": "ProductID", "dataType": "Int64"}]}]
    existing = api.create_dataset(narrow, name=name)
    result = ingestor_for(api, store, name).push(Target(name, "Product"), [product(7)])
    assert result.dataset_id == existing and result.sent == 1
    tables = api.request("GET", f"{api.prefix(None)}/datasets/{existing}/tables").json()["value"]
    assert [c["name"] for c in tables[0]["columns"]] == list(product(7))
    assert api.stored_rows(existing, "Product")[0]["Product"] == "Part 7"


def test_rows_the_service_refuses_are_split_out_and_the_rest_sent(
    api: Api, store: BlobDeadLetterStore
) -> None:
    """Without a local schema, rows Power BI names in its 400 are dead-lettered; others land."""
    table = [{"name": "T", "columns": [{"name": "n", "dataType": "Int64"}]}]
    existing = api.create_dataset(table)
    ingestor = ingestor_for(api, store)
    # Resolved with no schema, as for a dataset whose Get Tables reports no columns.
    ingestor._resolved[(None, existing)] = _Resolved(existing, None, {"T": None})
    rows = [{"n": 1}, {"n": 2**63 - 1}, {"n": 3}, {"n": "x"}, {"n": 5}]
    result = ingestor.push(Target(existing, "T"), rows)
    assert [r["n"] for r in api.stored_rows(existing, "T")] == [1, 3, 5]
    assert (result.sent, result.rejected, result.dead_lettered) == (3, 2, 2)
    letters = dead_letters(store)
    assert sorted(letter["index"] for letter in letters) == [1, 3]
    assert all(
        letter["status"] == 400 and "refused by Power BI" in letter["reason"] for letter in letters
    )


def test_lost_answer_stops_delivery_and_says_which_rows_are_unconfirmed(
    api: Api, store: BlobDeadLetterStore
) -> None:
    """An ambiguous failure is not re-sent in place: the batch is unconfirmed, the rest unsent."""
    name = f"Lost-{uuid.uuid4().hex[:6]}"
    ingestor = ingestor_for(api, store, name)
    ingestor.push(Target(name, "Product"), [product(0)])  # create it
    api.set_faults(script=["ok", "accept_then_fail"])
    with pytest.raises(PushIncomplete) as caught:
        ingestor.push(Target(name, "Product"), [product(i) for i in range(25_000)])
    result = caught.value.result
    assert (result.sent, result.unconfirmed, result.unsent) == (10_000, 10_000, 15_000)
    assert caught.value.maybe_delivered
    # The emulator did store the unconfirmed batch: "unconfirmed" was the honest word.
    assert len(api.stored_rows(result.dataset_id or "", "Product")) == 1 + 20_000


def test_throttles_and_outages_are_ridden_out_within_the_quotas(tmp_path: Path) -> None:
    """With 429s and 503s injected, 2,000 rows from 200 concurrent pushes all arrive once,
    and the emulator throttled nothing the client could have avoided."""
    # A minute lasts one real second here, so 200 POSTs must be paced over two minutes.
    server = start_emulator("--time-scale", "60", tmp=tmp_path)
    try:
        api = Api(server)
        name = f"Storm-{uuid.uuid4().hex[:6]}"
        client = PowerBIClient(server.base, StaticTokenProvider(api.token), retry=FAST)
        ingestor = Ingestor(
            client,
            definitions={name: definition(name)},
            governor=Governor(Quotas(time_scale=60)),
            retry=FAST,
        )
        target = Target(name, "Product")
        ingestor.push(target, [product(-1)])
        api.set_faults(throttle=0.1, error_503=0.1, retry_after=0, seed=11)

        def push(start: int) -> int:
            return ingestor.push(target, [product(i) for i in range(start, start + 10)]).sent

        with ThreadPoolExecutor(max_workers=8) as pool:
            sent = sum(pool.map(push, range(0, 2_000, 10)))
        assert sent == 2_000
        dataset = ingestor.resolve(target).dataset_id
        stored = [r["ProductID"] for r in api.stored_rows(dataset, "Product")]
        assert sorted(stored) == [-1, *range(2_000)]
        counters = api.state(dataset)["counters"]
        assert (
            counters.get("injected_throttle", 0) > 0 and counters.get("injected_error_503", 0) > 0
        )
        avoidable = {k: v for k, v in counters.items() if k.startswith("throttled_")}
        assert avoidable == {}, f"the client exceeded a quota: {avoidable}"
        assert counters["posts_accepted"] == 201
    finally:
        server.stop()


class CountingClient(PowerBIClient):
    """The real client, counting its dataset lookups (Get Datasets)."""

    lookups = 0

    def get_datasets(self, workspace: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        self.lookups += 1
        return super().get_datasets(workspace, **kwargs)


@pytest.mark.parametrize("change", ["deleted", "deleted and recreated"])
@pytest.mark.parametrize("workspace", [None, WORKSPACE_NAME], ids=["my-workspace", "workspace"])
def test_a_dataset_deleted_out_of_band_is_looked_up_again_and_the_batch_re_sent(
    api: Api, store: BlobDeadLetterStore, change: str, workspace: str | None
) -> None:
    """Between two pushes the dataset is deleted (and, in the second case, made again by
    someone else with the same name, so it has a new id). The second push's Add Rows meets a
    404 for the cached id: the target is looked up again by name (created again from its
    definition when it is gone) and the same batch sent once more. Nothing is dead-lettered,
    every row of the second push is stored, and it took exactly one extra lookup."""
    name = f"Stale-{uuid.uuid4().hex[:6]}"
    client = CountingClient(api.emulator.base, StaticTokenProvider(api.token), retry=FAST)
    ingestor = Ingestor(
        client, definitions={name: definition(name)}, dead_letters=store, retry=FAST
    )
    target = Target(name, "Product", workspace)
    first = ingestor.push(target, [product(i) for i in range(3)])
    assert client.lookups == 1
    group = _group(api) if workspace else None
    old = first.dataset_id or ""
    response = api.request("DELETE", f"{api.prefix(group)}/datasets/{old}")
    assert response.status_code == 200, response.text
    if change == "deleted and recreated":
        tables = definition(name).body["tables"]
        someone_elses = api.create_dataset(tables, group, name=name)

    second = ingestor.push(target, [product(i) for i in range(100, 1_100)])

    assert (second.sent, second.rejected, second.dead_lettered) == (1_000, 0, 0)
    assert client.lookups == 2, "exactly one extra lookup"
    assert second.dataset_id and second.dataset_id != old
    assert dataset_id(api, name, group) == second.dataset_id  # one dataset of that name
    if change == "deleted and recreated":
        assert second.dataset_id == someone_elses
    stored = [r["ProductID"] for r in api.stored_rows(second.dataset_id, "Product")]
    assert stored == list(range(100, 1_100))
    assert dead_letters(store) == []
    # The fresh id is cached: the next push needs no lookup.
    ingestor.push(target, [product(-1)])
    assert client.lookups == 2


def test_a_dataset_named_by_id_and_deleted_is_dead_lettered_after_one_more_lookup(
    api: Api, store: BlobDeadLetterStore
) -> None:
    """A caller who named the dataset by its id cannot have it made again: after the 404 the
    id is looked up once more, found missing, and the rows are dead-lettered with the reason
    (as before), not retried further."""
    existing = api.create_dataset(definition("ById").body["tables"])
    client = CountingClient(api.emulator.base, StaticTokenProvider(api.token), retry=FAST)
    ingestor = Ingestor(client, dead_letters=store, retry=FAST)
    target = Target(existing, "Product")
    ingestor.push(target, [product(0)])
    api.request("DELETE", f"{api.prefix(None)}/datasets/{existing}")

    result = ingestor.push(target, [product(i) for i in range(1, 6)])

    assert (result.sent, result.rejected, result.dead_lettered) == (0, 5, 5)
    assert client.lookups == 2
    letters = dead_letters(store)
    assert [letter["index"] for letter in letters] == [0, 1, 2, 3, 4]
    assert all("does not exist" in letter["reason"] for letter in letters)
