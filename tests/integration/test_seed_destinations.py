"""Issue 18, "What must be shown": the seed's dataset (SalesMarketing/Product) delivered through
HTTP, the queue and blobs to the Eventhouse only and to both, read back from each destination:
the KQL database through the real ``azure.kusto.data.KustoClient`` against the emulator, Power
BI from the emulator.

One rig per configuration (:mod:`tests.integration.destinations_rig`): devhost serving
function_app.py with ``DATASETS_DIR`` holding the seed's definition and a
``SalesMarketing.destinations.json``, an emulator (Power BI and Kusto, queued ingestion through
Azurite) and Azurite. The module fixture ``delivered`` sends every path's rows once, then waits
(bounded) until every path has settled; the tests read what arrived.

Each path has its own range of ProductIDs (``n * 10**12 + k``, so every id is over 2**31 and
the column has to be a ``long``), which lets each path's rows be read back on their own with a
KQL ``where``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError

from tests.azurite import Azurite
from tests.integration.destinations_rig import (
    DATASET,
    FRONTDOOR_KEY,
    KUSTO_TABLE,
    TABLE,
    Rig,
    start_rig,
    wait_for,
)
from tests.seed import product

pytestmark = pytest.mark.integration

#: Valid rows per path: "a few hundred" (the brief), and one queue message stays under 64 KiB.
PER_PATH = 200
#: Each path's ProductIDs: ``PATHS[path] * SPAN + k``.
SPAN = 10**12
PATHS = {"http": 1, "http_queue": 2, "queue_message": 3, "csv": 4, "ndjson": 5, "frontdoor": 6}
#: The paths the ``delivered`` fixture sends (the Power BI surface has its own test).
SENT = ("http", "http_queue", "queue_message", "csv", "ndjson")
MAKERS = ("Contoso", "Fabrikam", "Northwind Traders", "Adventure Works")
CATEGORIES = ("Components", "Accessories", "Bikes")
SEGMENTS = ("Mid", "Enterprise", "Consumer")
#: Seconds every path gets to settle: devhost polls the queue every 2 s at most (host.json
#: maxPollingInterval) and lists the ingest container every 0.3 s.
SETTLE_SECONDS = 45


def seed_row(path: str, k: int) -> dict[str, Any]:
    """Row ``k`` of ``path``: the seed's Product row (tests.seed.product) with varied strings,
    some with a comma, quotes and non-ASCII, which a CSV must carry through its quoting."""
    row = product(PATHS[path] * SPAN + k)
    row.update(
        Manufacturer=MAKERS[k % len(MAKERS)],
        Category=CATEGORIES[k % len(CATEGORIES)],
        Segment=SEGMENTS[k % len(SEGMENTS)],
        Product=f'Part {k}, "Café" édition' if k % 10 == 3 else f"Part {k}",
    )
    return row


def ids_of(path: str) -> list[int]:
    return [PATHS[path] * SPAN + k for k in range(PER_PATH)]


@dataclass
class Bad:
    """A row the validator must refuse: where it sits in its source, words its dead letter's
    reason must hold, and the column the letter names (None: the row as a whole)."""

    position: int
    row: Any
    reason: str
    column: str | None


def bad_json_rows(path: str) -> list[Bad]:
    """A handful of invalid rows for a JSON path (values as JSON carries them)."""
    base = PATHS[path] * SPAN + 900_000
    valid = seed_row(path, 900_000)
    return [
        Bad(7, {**valid, "ProductID": "not a number"}, "whole number", "ProductID"),
        Bad(50, "not an object", "must be a JSON object", None),
        Bad(123, {**valid, "ProductID": base + 1, "Colour": "red"}, "no column 'Colour'", "Colour"),
        Bad(
            190,
            {**valid, "ProductID": base + 2, "IsCompete": "maybe"},
            "true or false",
            "IsCompete",
        ),
    ]


def with_bad(path: str, bad: list[Bad]) -> list[Any]:
    """``path``'s valid rows with ``bad`` put in at their positions."""
    rows: list[Any] = [seed_row(path, k) for k in range(PER_PATH)]
    for one in sorted(bad, key=lambda b: b.position):
        rows.insert(one.position, one.row)
    return rows


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@dataclass
class Delivery:
    """What the ``delivered`` fixture sent, and the answers it got."""

    rig: Rig
    bad: dict[str, list[Bad]] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, str] = field(default_factory=dict)

    @property
    def good(self) -> int:
        return PER_PATH * len(SENT)


#: name -> (the Product table's destinations, emulator arguments). "both-queued": the cluster
#: has streaming ingestion off (404), so the client queues every batch through Azurite.
CONFIGS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "eventhouse-only": (["eventhouse"], ()),
    "both": (["powerbi", "eventhouse"], ()),
    "both-queued": (["powerbi", "eventhouse"], ("--kusto-streaming", "off")),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def rig(
    request: pytest.FixtureRequest, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    destinations, emulator_args = CONFIGS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    started = start_rig(destinations, azurite, tmp, *emulator_args)
    started.name = request.param
    yield started
    started.stop()


@pytest.fixture(scope="module")
def delivered(rig: Rig) -> Delivery:
    """Every path's rows sent once (HTTP sync, HTTP queue mode, a message on the rows queue, a
    CSV and an NDJSON file), then a bounded wait until every path has settled."""
    delivery = Delivery(rig)

    # (1) HTTP, synchronous: the answer is the PushResult.
    delivery.bad["http"] = bad_json_rows("http")
    body = {"dataset": DATASET, "table": TABLE, "rows": with_bad("http", delivery.bad["http"])}
    answer = rig.post("rows", json=body)
    delivery.answers["http"] = (answer.status_code, answer.json())

    # (2a) HTTP, queue mode: checked, put on the rows queue, delivered by the queue trigger.
    delivery.bad["http_queue"] = bad_json_rows("http_queue")
    body = {
        "dataset": DATASET,
        "table": TABLE,
        "rows": with_bad("http_queue", delivery.bad["http_queue"]),
    }
    answer = rig.post("rows", params={"mode": "queue"}, json=body)
    delivery.answers["http_queue"] = (answer.status_code, answer.text)

    # (2b) A message a producer puts on the rows queue itself (plain JSON: messageEncoding none).
    delivery.bad["queue_message"] = bad_json_rows("queue_message")
    message = {
        "dataset": DATASET,
        "table": TABLE,
        "rows": with_bad("queue_message", delivery.bad["queue_message"]),
    }
    queue = rig.rows_queue()
    with contextlib.suppress(ResourceExistsError):  # made by the queue mode above
        queue.create_queue()
    queue.send_message(json.dumps(message))

    # (3) Files in the ingest container: the blob trigger's path, <dataset>/<table>/<name>.
    csv_rows = [seed_row("csv", k) for k in range(PER_PATH)]
    text = as_csv(csv_rows).splitlines()
    header, lines = text[0], text[1:]
    base = PATHS["csv"] * SPAN + 900_000
    csv_bad = [
        Bad(7, "abc,Contoso,Components,Mid,Part x,True", "whole number", "ProductID"),
        Bad(60, f"{base + 1},Contoso,Components,Mid,Part y,maybe", "true or false", "IsCompete"),
        # Line 152 of the file: the header, then 150 rows before it.
        Bad(
            150, f"{base + 2},Contoso,Components", "line 152: 3 fields, but the header has 6", None
        ),
    ]
    for one in csv_bad:
        lines.insert(one.position, one.row)
    delivery.bad["csv"] = csv_bad
    delivery.blobs["csv"] = f"{DATASET}/{TABLE}/seed.csv"
    rig.ingest().upload_blob(delivery.blobs["csv"], "\n".join([header, *lines]) + "\n")

    nd_lines = [json.dumps(seed_row("ndjson", k), ensure_ascii=False) for k in range(PER_PATH)]
    nd_base = PATHS["ndjson"] * SPAN + 900_000
    nd_bad = [
        Bad(3, json.dumps("not an object"), "must be a JSON object", None),
        Bad(
            90,
            json.dumps({**seed_row("ndjson", 0), "ProductID": nd_base + 1.5}),
            "whole number",
            "ProductID",
        ),
        Bad(170, '{"ProductID": oops', "line 171 is not JSON", None),
    ]
    for one in nd_bad:
        nd_lines.insert(one.position, one.row)
    delivery.bad["ndjson"] = nd_bad
    delivery.blobs["ndjson"] = f"{DATASET}/{TABLE}/seed.ndjson"
    rig.ingest().upload_blob(delivery.blobs["ndjson"], ("\n".join(nd_lines) + "\n").encode())

    settle(rig, delivery)
    return delivery


def settle(rig: Rig, delivery: Delivery) -> None:
    """Wait until every path is done: both files checkpointed done, the rows queue and its
    poison queue empty, nothing running in devhost, every bad row's dead letter stored and
    every valid row in each destination. Exact counts are the tests' to check."""
    letters = sum(len(bad) for bad in delivery.bad.values())

    def state() -> str:
        return (
            f"checkpoints {[rig.checkpoint(b) for b in delivery.blobs.values()]}, "
            f"queue depth {rig.queue_depth()}, running {rig.activity().get('running')}, "
            f"dead letters {len(rig.dead_letters())}/{letters}, "
            f"Kusto rows {rig.kusto_count()}/{delivery.good}, "
            f"Power BI rows {len(rig.powerbi_rows())}, answers {delivery.answers}"
        )

    def done() -> bool:
        checkpoints = [rig.checkpoint(b) for b in delivery.blobs.values()]
        return (
            all(c is not None and c.get("done") for c in checkpoints)
            and rig.queue_depth() == 0
            and rig.activity().get("running") == 0
            and len(rig.dead_letters()) >= letters
            and rig.kusto_count() >= delivery.good
            and ("powerbi" not in rig.destinations or len(rig.powerbi_rows()) >= delivery.good)
        )

    wait_for(done, SETTLE_SECONDS, state)


#: The KQL columns the seed's definition makes (kusto_schema.KUSTO_TYPES: Int64 -> long,
#: String -> string, Boolean -> bool), as the query client reports them.
KQL_COLUMNS = [
    ("ProductID", "long"),
    ("Manufacturer", "string"),
    ("Category", "string"),
    ("Segment", "string"),
    ("Product", "string"),
    ("IsCompete", "bool"),
]


def in_range(path: str) -> str:
    """A KQL filter for ``path``'s ProductIDs (the emulator takes one comparison per where)."""
    return f"where ProductID >= {PATHS[path] * SPAN} | where ProductID < {(PATHS[path] + 1) * SPAN}"


def assert_same_columns(path: str, back: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """``back`` holds exactly ``sent``, compared column by column (a failure names it)."""
    assert len(back) == len(sent), f"{path}: {len(back)} rows back, {len(sent)} sent"
    for name, _ in KQL_COLUMNS:
        got = [row[name] for row in back]
        want = [row[name] for row in sent]
        assert got == want, f"{path}: column {name} differs"
        assert all(type(g) is type(w) for g, w in zip(got, want, strict=True)), (
            f"{path}: column {name} has values of another type"
        )


def test_http_sync_answers_per_destination(delivered: Delivery) -> None:
    """The synchronous answer accounts each destination on its own: every valid row sent,
    every bad one rejected and dead-lettered, listed by index and column."""
    rig = delivered.rig
    status, body = delivered.answers["http"]
    assert status == 200, body
    assert set(body["destinations"]) == set(rig.destinations)
    for name, result in body["destinations"].items():
        counts = {k: result[k] for k in ("received", "sent", "rejected", "deadLettered", "unsent")}
        assert counts == {
            "received": PER_PATH + 4,
            "sent": PER_PATH,
            "rejected": 4,
            "deadLettered": 4,
            "unsent": 0,
        }, name
        assert result["stopped"] is None and result["error"] is None, name
        problems = [(p["index"], p["column"]) for p in result["problems"]]
        assert problems == [(b.position, b.column) for b in delivered.bad["http"]], name
        assert all(
            b.reason in p["reason"]
            for b, p in zip(delivered.bad["http"], result["problems"], strict=True)
        )
    # The top level is Power BI's when it is a destination, else the Eventhouse's.
    first = "powerbi" if "powerbi" in rig.destinations else "eventhouse"
    top = {k: v for k, v in body.items() if k not in ("target", "destinations")}
    assert top == body["destinations"][first]
    if first == "powerbi":
        assert body["datasetId"] == rig.powerbi_dataset_id() is not None
    else:
        assert body["datasetId"] is None
    # Queue mode only checks the shape and queues: 202 and how many rows were queued.
    status, text = delivered.answers["http_queue"]
    assert (status, json.loads(text)) == (202, {"queued": 1, "rows": PER_PATH + 4})


def test_kusto_query_client_reads_back_every_path_column_by_column(delivered: Delivery) -> None:
    """Each path's rows, read back with KustoClient (``where`` on its ProductID range,
    ``order by``): exactly what was sent, column by column, with the mapped KQL types."""
    rig = delivered.rig
    for path in SENT:
        columns, back = rig.kql(f"{KUSTO_TABLE} | {in_range(path)} | order by ProductID asc")
        assert columns == KQL_COLUMNS, path
        assert_same_columns(path, back, [seed_row(path, k) for k in range(PER_PATH)])
    # No row twice, no bad row: the whole of what the five paths sent, and nothing else.
    below = PATHS["frontdoor"] * SPAN
    _, counted = rig.kql(f"{KUSTO_TABLE} | where ProductID < {below} | count")
    assert counted == [{"Count": delivered.good}]
    _, half = rig.kql(
        f"{KUSTO_TABLE} | where ProductID < {below} | where IsCompete == true | count"
    )
    assert half == [{"Count": delivered.good // 2}]  # even ids: a bool column, not a string
    # ``take``: any five rows, each one of those sent (the frontdoor test may add its own).
    _, some = rig.kql(f"{KUSTO_TABLE} | take 5")
    sent = {
        row["ProductID"]: row
        for path in (*SENT, "frontdoor")
        for row in (seed_row(path, k) for k in range(PER_PATH))
    }
    assert len(some) == 5
    assert [row for row in some if sent.get(row["ProductID"]) != row] == []


def test_kusto_ingestion_took_the_configured_path(delivered: Delivery) -> None:
    """Streaming where the table's policy allows it; queued through Azurite (the emulator's
    queued ingestion) when the cluster has streaming off."""
    counters = delivered.rig.kusto_counters()
    if CONFIGS[delivered.rig.name][1]:  # streaming off
        assert counters.get("streaming_rows", 0) == 0
        assert counters.get("queued_blobs", 0) >= 1
    else:
        assert counters.get("streaming_rows") == delivered.good
        assert counters.get("queued_blobs", 0) == 0
    assert counters.get("rows_ingested") == delivered.good
    assert counters.get("failed_ingestions", 0) == 0


def test_power_bi_holds_the_same_rows_or_nothing_at_all(delivered: Delivery) -> None:
    """Both: Power BI holds exactly the rows the Eventhouse holds (read from the emulator).
    Eventhouse only: no Power BI dataset was ever made."""
    rig = delivered.rig
    if "powerbi" not in rig.destinations:
        assert rig.powerbi_datasets() == []
        return
    stored = sorted(rig.powerbi_rows(), key=lambda row: int(row["ProductID"]))
    for path in SENT:
        lo, hi = PATHS[path] * SPAN, (PATHS[path] + 1) * SPAN
        back = [row for row in stored if lo <= row["ProductID"] < hi]
        assert_same_columns(path, back, [seed_row(path, k) for k in range(PER_PATH)])
    # Nothing else, whatever the Power BI surface's test has added since (its own ids).
    below = PATHS["frontdoor"] * SPAN
    assert len([row for row in stored if row["ProductID"] < below]) == delivered.good


def test_every_invalid_row_is_dead_lettered_once_naming_no_destination(
    delivered: Delivery,
) -> None:
    """Refused by validation before delivery: one letter per bad row whatever the number of
    destinations, ``destination`` null, the row's index in its source and the reason."""
    letters = delivered.rig.dead_letters()
    assert len(letters) == sum(len(bad) for bad in delivered.bad.values())
    assert {letter["destination"] for letter in letters} == {None}
    assert {(letter["target"]["dataset"], letter["target"]["table"]) for letter in letters} == {
        (DATASET, TABLE)
    }
    by_source: dict[str | None, list[dict[str, Any]]] = {}
    for letter in letters:
        by_source.setdefault(letter["source"], []).append(letter)
    assert all(n == 1 for n in Counter(map(json.dumps, letters)).values())

    def path_of(source: str | None, found: list[dict[str, Any]]) -> str:
        assert source is not None, "every letter names where its row came from"
        if source.startswith("HTTP request "):
            return "http"
        for path, blob in delivered.blobs.items():
            if source.endswith(f"/{blob}"):
                return path
        assert source.startswith("queue message "), source
        # Which message: the one whose bad rows carry that path's ids.
        ids = {
            letter["row"].get("ProductID") for letter in found if isinstance(letter["row"], dict)
        }
        (path,) = [p for p in ("http_queue", "queue_message") if PATHS[p] * SPAN + 900_001 in ids]
        return path

    paths = {path_of(source, found): found for source, found in by_source.items()}
    assert sorted(paths) == sorted(SENT)
    for path, found in paths.items():
        found.sort(key=lambda letter: letter["index"])
        expected = delivered.bad[path]
        assert [letter["index"] for letter in found] == [b.position for b in expected], path
        for letter, bad in zip(found, expected, strict=True):
            assert bad.reason in letter["reason"], (path, letter["reason"])
            assert letter["column"] == bad.column, (path, letter)
            if path not in ("csv", "ndjson"):  # JSON rows are kept as sent
                assert letter["row"] == bad.row, path


@pytest.mark.parametrize("rig", ["both"], indirect=True)
def test_power_bi_surface_add_rows_reaches_both_destinations(delivered: Delivery) -> None:
    """A sender of Power BI's own API (FRONTDOOR_KEYS), unchanged but for its base URL: it
    lists the datasets, finds the seed's by name and posts Add Rows to its id. The table is
    routed to both, so the rows belong in both.

    Fails on main as of e334577: the rows reach Power BI only. ``Ingestor.destinations_of``
    looks the routing up by ``target.dataset``, which here is the dataset's id, not its name
    ("a target that names its dataset by id is routed by the default"), so a table routed to
    both silently loses its Eventhouse copy; the same happens to an envelope or an
    ``/api/datasets/{id}/...`` request naming the dataset by id. Addressed by name
    (``/datasets/SalesMarketing/...``, which Power BI itself would refuse) it reaches both."""
    rig = delivered.rig
    headers = {"Authorization": f"Bearer {FRONTDOOR_KEY}"}
    base = f"{rig.host.base}/api/v1.0/myorg"
    listed = rig.http.get(f"{base}/datasets", headers=headers, timeout=60)
    assert listed.status_code == 200, listed.text
    (dataset_id,) = [d["id"] for d in listed.json()["value"] if d["name"] == DATASET]
    rows = [seed_row("frontdoor", k) for k in range(PER_PATH)]
    answer = rig.http.post(
        f"{base}/datasets/{dataset_id}/tables/{TABLE}/rows",
        headers=headers,
        json={"rows": rows},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    lo, hi = PATHS["frontdoor"] * SPAN, (PATHS["frontdoor"] + 1) * SPAN
    stored = sorted(
        (row for row in rig.powerbi_rows() if lo <= row["ProductID"] < hi),
        key=lambda row: int(row["ProductID"]),
    )
    assert_same_columns("frontdoor (Power BI)", stored, rows)
    # Add Rows answered 200 after delivery (synchronous mode); queued batches are flushed.
    rig.flush()
    _, back = rig.kql(f"{KUSTO_TABLE} | {in_range('frontdoor')} | order by ProductID asc")
    assert_same_columns("frontdoor (Eventhouse)", back, rows)
