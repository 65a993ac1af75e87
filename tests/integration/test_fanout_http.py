# ruff: noqa: F811  (the fixtures imported from test_fanout are parameters here)
"""HTTP answers per destination (issue 18): a table routed to Power BI and the Eventhouse, the
Eventhouse stopping while Power BI delivers. A retrying sender would add its rows to Power BI a
second time, so the sender gets a 2xx and the rows Power BI has but the Eventhouse lacks go to
the rows queue for the Eventhouse alone; that message, handled later, fills the Eventhouse and
adds nothing to Power BI, and rows refused by validation keep their one dead letter.

Against the emulator (Power BI and its Kusto surface, the real azure-kusto clients) and Azurite,
through :class:`~shared.sources.webhook.Webhook` and :class:`~shared.sources.frontdoor.FrontDoor`
as the HTTP functions call them, and :class:`~shared.sources.queue_ingest.QueueIngest` for the
re-queued message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from shared.destinations.eventhouse import EventhouseClient
from shared.engine.coalesce import Coalescer
from shared.engine.ingest import PushIncomplete
from shared.settings import Settings
from shared.sources.claimcheck import ClaimCheckStore
from shared.sources.envelope import Envelope, resend_for_stopped
from shared.sources.frontdoor import FrontDoor
from shared.sources.queue_ingest import QueueIngest
from shared.sources.webhook import Webhook, WebRequest, WebResponse
from shared.stores.deadletter import BlobDeadLetterStore
from tests.azurite import Azurite
from tests.emulator.conftest import EmulatorProcess
from tests.integration.test_fanout import Case, accounted, both, kusto, letters_of, store  # noqa: F401  (its fixtures)
from tests.seed import product

KEY = "fanout-http-key"


def kusto_down(emulator: EmulatorProcess) -> None:
    """Kusto answers 503 to every request (commands, streaming, the queued path's resources)."""
    requests.put(
        f"{emulator.base}/_emulator/kusto/faults",
        json={"error_503": 1.0, "all_operations": True},
        timeout=10,
    ).raise_for_status()


def kusto_up(emulator: EmulatorProcess) -> None:
    requests.delete(f"{emulator.base}/_emulator/kusto/faults", timeout=10).raise_for_status()


def claim_checks(azurite: Azurite) -> ClaimCheckStore:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return ClaimCheckStore(service.get_container_client(f"cc{uuid.uuid4().hex[:12]}"))


def handle_messages(
    case: Case, store: BlobDeadLetterStore, checks: ClaimCheckStore, messages: list[str]
) -> list[Any]:
    """Each queued message through the queue function's handler, as the host would."""
    coalescer = Coalescer(case.ingestor, linger=0.0, max_wait=0.0)
    handler = QueueIngest(lambda: coalescer, lambda: checks, lambda: store)
    return [
        asyncio.run(handler.handle(text.encode(), f"m{number}"))
        for number, text in enumerate(messages)
    ]


def front_door(case: Case, checks: ClaimCheckStore) -> FrontDoor:
    """The Power BI surface over the case's ingestor, as functions/http.py builds it."""
    return FrontDoor(
        lambda: Settings.from_env({"FRONTDOOR_KEYS": KEY}),
        lambda: case.ingestor,
        lambda: case.ingestor.client,  # type: ignore[arg-type,return-value]
        claim_checks=lambda: checks,
    )


def decoded(message: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(message))


def post(webhook: Webhook, body: Any, query: Mapping[str, str] | None = None) -> WebResponse:
    return webhook.rows(
        WebRequest(
            "POST",
            json.dumps(body).encode(),
            {"content-type": "application/json"},
            dict(query or {}),
        )
    )


def test_webhook_answers_202_and_queues_the_eventhouse_rows_when_only_it_stopped(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore, azurite: Azurite
) -> None:
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.ensure_table(case.definition, "Product", name=case.table)
    rows, good = case.rows(2_500)
    checks = claim_checks(azurite)
    webhook = Webhook(lambda: Settings.from_env({}), lambda: case.ingestor, lambda: checks)
    kusto_down(both)
    answer = post(webhook, {"dataset": case.name, "table": "Product", "rows": rows})
    kusto_up(both)
    assert answer.status == 202, answer.body
    assert answer.body["requeued"] == {"destinations": ["eventhouse"], "rows": 2_500}
    per = answer.body["destinations"]
    assert per["powerbi"]["sent"] == len(good) and per["powerbi"]["stopped"] is None
    assert per["eventhouse"]["sent"] == 0 and per["eventhouse"]["stopped"]
    (message,) = answer.messages  # 2,500 rows: a claim check, which keeps the restriction
    assert decoded(message)["destinations"] == ["eventhouse"] and decoded(message)["resent"]
    assert "blob" in decoded(message)
    assert case.powerbi_ids_by_name() == good

    (later,) = handle_messages(case, store, checks, answer.messages)
    assert set(later.destinations) == {"eventhouse"}
    assert (later.sent, later.rejected, later.dead_lettered) == (len(good), 3, 3)
    assert case.kusto_ids() == good
    assert case.powerbi_ids_by_name() == good  # not one row twice
    letters = letters_of(store)
    # The three refused rows: one letter each, written by the first delivery only.
    assert sorted(letter["index"] for letter in letters) == [7, 1_007, 2_007]
    assert {letter["destination"] for letter in letters} == {None}


def test_a_sender_may_not_mark_its_rows_resent(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore, azurite: Azurite
) -> None:
    """``resent`` would skip dead-lettering refused rows: only the bundle's re-sends carry it."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    checks = claim_checks(azurite)
    webhook = Webhook(lambda: Settings.from_env({}), lambda: case.ingestor, lambda: checks)
    body = {
        "dataset": case.name,
        "table": "Product",
        "rows": [{"ProductID": "bad"}],
        "destinations": ["eventhouse"],
        "resent": True,
    }
    for query in ({}, {"mode": "queue"}):
        answer = post(webhook, body, query)
        assert answer.status == 400 and answer.body["error"]["field"] == "body.resent"
        assert answer.messages == []
    assert letters_of(store) == [] and case.powerbi_datasets() == []


def test_an_eventhouse_stop_mid_file_resends_only_the_rows_it_lacks(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    """Kusto goes down once the Eventhouse acknowledged its first chunk (10,000 rows): the
    re-send starts after them, so the Eventhouse ends with every row once, Power BI too, and
    the 25 refused rows have one letter each."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    rows, good = case.rows(25_000)
    reached: list[int] = []

    def moved(positions: Mapping[str, int]) -> None:
        if positions["eventhouse"] > 0 and not reached:
            reached.append(positions["eventhouse"])
            kusto_down(both)  # the next chunk meets it

    with pytest.raises(PushIncomplete) as stopped:
        case.ingestor.push(case.target, rows, source="big.json", on_positions=moved)
    kusto_up(both)
    result = stopped.value.result
    eventhouse = result.destinations["eventhouse"]
    accounted(eventhouse)
    assert result.destinations["powerbi"].stopped is None
    assert result.destinations["powerbi"].sent == len(good)
    assert eventhouse.sent == 10_000 and eventhouse.resume_from == reached[0]
    assert reached[0] == good[9_999] + 1  # just past the last row of the first chunk

    rest = resend_for_stopped(Envelope(case.target, rows=rows), rows, result)
    assert rest is not None and rest.destinations == ("eventhouse",) and rest.resent
    assert rest.rows == rows[reached[0] :]
    again = case.ingestor.push(
        case.target, rest.rows or [], destinations=rest.destinations, refused_kept=True
    )
    assert (
        again.sent == len(good) - 10_000 and again.dead_lettered == again.rejected == 14
    )  # 11 bad rows were before
    assert case.kusto_ids() == good
    assert case.powerbi_ids(result) == good
    letters = letters_of(store)
    assert len(letters) == 25 and {letter["destination"] for letter in letters} == {None}


def test_the_power_bi_surface_routes_by_dataset_id_and_queues_what_the_eventhouse_lacks(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore, azurite: Azurite
) -> None:
    """A Power BI client knows the dataset by id: its Add Rows reach both destinations; with
    Kusto down, it gets Power BI's 200 (with the queued rows in headers) and the Eventhouse's
    rows go to the rows queue for it alone."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.ensure_table(case.definition, "Product", name=case.table)
    dataset_id = case.ingestor.resolve(case.target).dataset_id
    checks = claim_checks(azurite)
    door = front_door(case, checks)

    def add_rows(ids: range) -> WebResponse:
        body = json.dumps({"rows": [product(i) for i in ids]}).encode()
        return door.handle(
            WebRequest(
                "POST",
                body,
                {"content-type": "application/json", "authorization": f"Bearer {KEY}"},
                {},
                {"path": f"datasets/{dataset_id}/tables/Product/rows"},
            )
        )

    first = add_rows(range(0, 300))
    assert first.status == 200 and first.messages == []
    assert case.kusto_ids() == list(range(300))  # routed by the dataset's name
    kusto_down(both)
    second = add_rows(range(300, 700))
    kusto_up(both)
    assert second.status == 200, second.body
    assert second.headers["X-Rows-Sent"] == "400" and second.headers["X-Rows-Queued"] == "400"
    assert second.headers["X-Rows-Queued-For"] == "eventhouse"
    assert case.powerbi_ids_by_name() == list(range(700))
    handle_messages(case, store, checks, second.messages)
    assert case.kusto_ids() == list(range(700))
    assert case.powerbi_ids_by_name() == list(range(700))


def test_the_mirror_power_bi_stops_and_its_rows_are_queued_for_it_alone(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore, azurite: Azurite
) -> None:
    """Power BI answers 503 to every Add Rows while the Eventhouse takes every row: 202, the
    rows re-queued for Power BI only; handled once Power BI is back, Power BI gets each row
    once and the Eventhouse none twice."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    case.ingestor.resolve(case.target)  # the dataset exists: only Add Rows fails
    rows, good = case.rows(1_200)
    checks = claim_checks(azurite)
    webhook = Webhook(lambda: Settings.from_env({}), lambda: case.ingestor, lambda: checks)
    requests.put(f"{both.base}/_emulator/faults", json={"error_503": 1.0}, timeout=10)
    try:
        answer = post(webhook, {"dataset": case.name, "table": "Product", "rows": rows})
    finally:
        requests.delete(f"{both.base}/_emulator/faults", timeout=10).raise_for_status()
    assert answer.status == 202, answer.body
    assert answer.body["requeued"] == {"destinations": ["powerbi"], "rows": 1_200}
    assert answer.body["destinations"]["eventhouse"]["sent"] == len(good)
    assert answer.body["sent"] == 0 and answer.body["stopped"]  # the top level is Power BI's
    assert case.kusto_ids() == good and case.powerbi_ids_by_name() == []
    (later,) = handle_messages(case, store, checks, answer.messages)
    # Power BI alone: the result is its own (no per-destination map).
    assert later.destinations == {} and later.sent == len(good) and later.dead_lettered == 2
    assert case.powerbi_ids_by_name() == good
    assert case.kusto_ids() == good
    assert len(letters_of(store)) == 2  # rows 7 and 1,007, once each


def test_a_destination_refusing_for_good_while_the_other_stored_is_a_207_not_a_retry(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore, azurite: Azurite
) -> None:
    """Power BI's dataset of that name has no Product table (a permanent refusal there) while
    the Eventhouse stores every row: not the refusal's status (a sender retrying a 4xx/5xx
    would add the rows to the Eventhouse again) but 207, each destination's outcome in the
    body, Power BI's rows dead-lettered naming it. Through the Power BI surface the dataset is
    named by id, which is looked up with its table: Power BI's own 404, and no row moves."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    created = case.api.request(
        "POST",
        f"{both.api}/datasets",
        json={
            "name": case.name,
            "defaultMode": "Push",
            "tables": [{"name": "Other", "columns": [{"name": "x", "dataType": "String"}]}],
        },
    )
    assert created.status_code == 201, created.text
    rows = [product(i) for i in range(50)]
    checks = claim_checks(azurite)
    webhook = Webhook(lambda: Settings.from_env({}), lambda: case.ingestor, lambda: checks)
    answer = post(webhook, {"dataset": case.name, "table": "Product", "rows": rows})
    assert answer.status == 207, answer.body
    per = answer.body["destinations"]
    assert per["eventhouse"]["sent"] == 50 and per["powerbi"]["sent"] == 0
    assert per["powerbi"]["deadLettered"] == 50 and answer.messages == []
    assert case.kusto_ids() == list(range(50))
    letters = letters_of(store)
    assert len(letters) == 50 and {letter["destination"] for letter in letters} == {"powerbi"}

    door = front_door(case, checks)
    dataset_id = created.json()["id"]
    more = door.handle(
        WebRequest(
            "POST",
            json.dumps({"rows": [product(i) for i in range(50, 60)]}).encode(),
            {"content-type": "application/json", "authorization": f"Bearer {KEY}"},
            {"partial": "true"},
            {"path": f"datasets/{dataset_id}/tables/Product/rows"},
        )
    )
    assert more.status == 404, more.body
    assert "has no table 'Product'" in more.body["error"]["message"]
    assert case.kusto_ids() == list(range(50))


def test_the_power_bi_surface_names_a_destination_that_refused_for_good(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore, azurite: Azurite
) -> None:
    """The KQL table's ProductID is a string (the definition says Int64): the Eventhouse refuses
    every row for good (dead-lettered naming it) while Power BI stores them: Power BI's 200,
    with the destination that failed in X-Destinations-Failed."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    kusto.execute(f".create-merge table {case.table} (ProductID: string)")
    dataset_id = case.ingestor.resolve(case.target).dataset_id
    checks = claim_checks(azurite)
    door = front_door(case, checks)
    answer = door.handle(
        WebRequest(
            "POST",
            json.dumps({"rows": [product(i) for i in range(20)]}).encode(),
            {"content-type": "application/json", "authorization": f"Bearer {KEY}"},
            {},
            {"path": f"datasets/{dataset_id}/tables/Product/rows"},
        )
    )
    assert answer.status == 200, answer.body
    assert answer.headers["X-Rows-Sent"] == "20"
    assert answer.headers["X-Destinations-Failed"] == "eventhouse"
    assert case.powerbi_ids_by_name() == list(range(20))
    letters = letters_of(store)
    assert len(letters) == 20 and {letter["destination"] for letter in letters} == {"eventhouse"}


def test_a_re_queue_that_storage_refuses_is_a_503_never_a_silent_2xx(
    both: EmulatorProcess, kusto: EventhouseClient, store: BlobDeadLetterStore
) -> None:
    """The Eventhouse is down and the rows it lacks need a claim check (over 45,000 bytes), but
    the claim-check storage does not answer: the rows are safe nowhere but with the sender, so
    the answer is 503 (sending again duplicates Power BI's copy, never loses a row)."""
    case = Case(both, kusto, store, ["powerbi", "eventhouse"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    nowhere = BlobServiceClient(
        f"http://127.0.0.1:{closed}/devstoreaccount1", credential=None, retry_total=0
    )
    checks = ClaimCheckStore(nowhere.get_container_client("claims"))
    webhook = Webhook(lambda: Settings.from_env({}), lambda: case.ingestor, lambda: checks)
    rows = [product(i) for i in range(600)]  # about 60 KB of JSON: a claim check
    kusto_down(both)
    try:
        answer = post(webhook, {"dataset": case.name, "table": "Product", "rows": rows})
    finally:
        kusto_up(both)
    assert answer.status == 503 and answer.body["error"]["code"] == "RequeueFailed"
    assert "eventhouse" in answer.body["error"]["message"] and answer.messages == []
    assert case.powerbi_ids_by_name() == list(range(600))
