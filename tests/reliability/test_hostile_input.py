"""Hostile input: arbitrary bytes and arbitrary JSON fed to every way rows come in.

Property-based (Hypothesis) against the HTTP functions, the queue function and the file readers,
then plain tests for the limits that keep memory bounded. The rule under test, from the README:
whatever a sender sends, the bundle answers a 4xx (HTTP) or dead-letters it with a reason (queue,
files); it never fails with an unhandled exception or a 500, and what it holds in memory does
not grow with what an attacker can make it unpack (huge numbers, deep nesting, 10 MB strings,
zip bombs).

The functions are called the way the worker calls them (``func.HttpRequest``, ``QueueMessage``),
with the session's Power BI emulator and Azurite behind: nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import gzip
import io
import json
import os
import traceback
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import azure.functions as func
import hypothesis
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.blob import BlobServiceClient, ContainerClient
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from functions import http
from functions.queue import ingest_queue
from shared import runtime
from shared.cli.replay import replay_dead_letters
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import Ingestor
from shared.sources.blob_ingest import BlobIngest
from shared.sources.formats import DEFAULT_MAX_BYTES, FORMATS, Unreadable, read_rows
from shared.stores.checkpoint import CheckpointStore
from shared.stores.deadletter import BlobDeadLetterStore
from tests.azurite import Azurite
from tests.emulator.conftest import WORKSPACE_ID, WORKSPACE_NAME, Api
from tests.functional.test_http_functions import PRODUCT_COLUMNS, Out, settings

__all__ = ["settings"]

#: Stands for the test's real dataset name in generated input; replaced before sending.
DATASET = "@@DATASET@@"
COLUMNS = [c["name"] for c in PRODUCT_COLUMNS]
MiB = 1024 * 1024


#: Inputs tried, by kind, in this process; ``make soak`` reports the total (written out by
#: tests/reliability/conftest.py when HOSTILE_COUNT_FILE is set).
TRIED: Counter[str] = Counter()


def fuzz(examples: int) -> hypothesis.settings:
    """Bounded Hypothesis settings: a few seconds per test on two cores (``make soak`` scales
    the examples by HOSTILE_EXAMPLES_SCALE); function-scoped
    fixtures allowed (they are set up once per test and every example shares them: none of them
    is changed by an example). Failing examples are kept in .hypothesis/ (which ignores itself
    in git) and tried first on the next run."""
    return hypothesis.settings(
        max_examples=examples * int(os.environ.get("HOSTILE_EXAMPLES_SCALE", "1")),
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# -- strategies ------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    # Up to 400 digits: past Int64 and Double, within Python's 4,300-digit limit for int().
    | st.builds(
        lambda digits, sign: sign * 10**digits, st.integers(1, 400), st.sampled_from([1, -1])
    )
    | st.floats()  # NaN and the infinities too: json.dumps writes NaN / Infinity
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
#: Values a column might be sent: right types, coercible text, and anything at all.
CELL = (
    SCALARS
    | st.sampled_from(["", "1", "true", "False", "2024-02-30", "12/31/1999 25:61", " 7 ", "x"])
    | JSON
)
#: Rows shaped like the Product table's, with wrong or unknown columns mixed in.
ROW = st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=8), CELL, max_size=6)
ROWS = st.lists(ROW | JSON, max_size=5)
#: A text field: the real dataset, near-misses, and every wrong JSON type.
NAME = st.sampled_from([DATASET, "", " ", "Product"]) | st.text(max_size=12) | JSON
TABLE = st.sampled_from(["Product", "product", "", "Nope"]) | st.text(max_size=12) | JSON
WORKSPACE = st.sampled_from([WORKSPACE_NAME, WORKSPACE_ID, "", str(uuid.UUID(int=0))]) | JSON
ENVELOPE = st.fixed_dictionaries(
    {},
    optional={
        "dataset": NAME,
        "table": TABLE,
        "workspace": WORKSPACE,
        "rows": ROWS | JSON,
        "blob": st.text(max_size=20) | JSON,
    },
)
#: Envelopes of the right shape, to the real dataset or to others (which do not exist).
GOOD_ENVELOPE = st.fixed_dictionaries(
    {
        "dataset": st.just(DATASET) | st.text(min_size=1, max_size=12),
        "table": st.just("Product") | st.text(min_size=1, max_size=8),
        "rows": ROWS,
    },
    optional={"workspace": st.sampled_from([WORKSPACE_NAME, WORKSPACE_ID]) | st.text(max_size=8)},
)
#: Documents: anything, an Add Rows body, envelopes, arrays of envelopes.
DOCUMENT = (
    JSON
    | st.builds(lambda rows: {"rows": rows}, ROWS)
    | st.fixed_dictionaries({"rows": ROWS}, optional={"extra": JSON})
    | ENVELOPE
    | GOOD_ENVELOPE
    | st.lists(GOOD_ENVELOPE | ENVELOPE, max_size=3)
)


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes; lone surrogates pass through as (invalid) UTF-8, as a hostile sender might."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[Any] = DOCUMENT) -> bytes:
    """A JSON value written as JSON (ASCII or UTF-8, with or without a BOM) or as NDJSON."""
    value = draw(values)
    how = draw(st.sampled_from(["ascii", "utf-8", "bom", "ndjson", "ndjson-crlf"]))
    if how.startswith("ndjson"):
        items = value.get("rows") if isinstance(value, dict) else value
        if not isinstance(items, list):
            items = [value]
        newline = b"\r\n" if how == "ndjson-crlf" else b"\n"
        return newline.join(dumps(item) for item in items)
    body = dumps(value, ascii_only=how == "ascii")
    return b"\xef\xbb\xbf" + body if how == "bom" else body


BODY = st.binary(max_size=300) | encoded()
#: POST /api/rows bodies, a third of them well-formed envelopes (rows still anything).
ROWS_BODY = BODY | (GOOD_ENVELOPE | st.lists(GOOD_ENVELOPE, min_size=1, max_size=3)).map(dumps)
CONTENT_TYPE = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/x-ndjson",
        "text/plain",
        "",
        None,  # no header at all
        "application/xml",
    ]
)
#: ?mode=: mostly valid or absent, sometimes anything (one_of would draw the text half the time).
_MODES = (None, "sync", "queue", "", None, "sync", "Queue", "later")
MODE = st.tuples(st.integers(0, len(_MODES)), st.text(max_size=5)).map(
    lambda pick: _MODES[pick[0]] if pick[0] < len(_MODES) else pick[1]
)
QUERY_NAME = st.sampled_from([None, DATASET, "", "Product"]) | st.text(max_size=8)


def real(text: str | None, dataset: str) -> str | None:
    return None if text is None else text.replace(DATASET, dataset)


# -- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
def http_dataset(api: Api, settings: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Product dataset in the workspace, and the app set up once for all examples: a
    short time budget so that pacing answers 429 at once instead of waiting a minute."""
    monkeypatch.setenv("HTTP_TIME_BUDGET_SECONDS", "5")
    runtime.reset()
    name = f"Hostile-{uuid.uuid4().hex[:8]}"
    api.create_dataset([{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name)
    return name


def call(
    function: Any,
    url: str,
    body: bytes,
    content_type: str | None,
    params: dict[str, str | None],
    route: dict[str, str] | None = None,
) -> tuple[func.HttpResponse, Out]:
    out = Out()
    request = func.HttpRequest(
        "POST",
        url,
        headers={} if content_type is None else {"Content-Type": content_type},
        params={k: v for k, v in params.items() if v is not None},
        route_params=route or {},
        body=body,
    )
    return function(request, out), out


def check_answer(response: func.HttpResponse, out: Out) -> None:
    """The HTTP contract for any input: < 500; a 4xx says what is wrong; a 200 accounts for
    every row; a 202 queued what it says."""
    status = response.status_code
    assert status < 500, response.get_body()[:2000]
    assert response.mimetype == "application/json"
    body = json.loads(response.get_body())
    assert isinstance(body, dict)
    code = body["error"].get("code") if isinstance(body.get("error"), dict) else ""
    hypothesis.event(f"HTTP {status} {code}".strip())  # --hypothesis-show-statistics
    results = body.get("results", [body])
    if status == 429:  # paced past the time budget: the documented answer, with Retry-After
        assert int(response.headers["Retry-After"]) >= 1
        return
    if 400 <= status < 500:
        errors = [body["error"]] if "error" in body else []
        # An array of envelopes answers one result per envelope; the failed ones say why.
        errors += [r["error"] for r in results if isinstance(r, dict) and r.get("error")]
        assert errors, body
        for found in errors:
            assert isinstance(found["code"], str) and found["code"], body
            assert isinstance(found["message"], str) and found["message"], body
        assert out.value is None  # nothing queued for a refused request
        return
    if status == 202:
        assert out.value is not None and body["queued"] == len(out.value)
        assert isinstance(body["rows"], int) and body["rows"] >= 0
        return
    assert status == 200, body
    assert "notAttempted" not in body
    for result in results:
        assert result["received"] == result["sent"] + result["rejected"], result
        assert result["unsent"] == 0 and result["unconfirmed"] == 0, result
        assert len(result["problems"]) == min(result["rejected"], 100), result
        for problem in result["problems"]:
            assert isinstance(problem["reason"], str) and problem["reason"], problem


@fuzz(200)
@given(
    body=BODY,
    content_type=CONTENT_TYPE,
    mode=MODE,
    workspace=st.sampled_from([None, WORKSPACE_NAME, WORKSPACE_ID]) | st.text(max_size=8),
    dataset_param=QUERY_NAME,
    table_param=QUERY_NAME,
)
def test_add_rows_answers_any_body_with_a_4xx_or_an_account_of_every_row(
    http_dataset: str,
    body: bytes,
    content_type: str | None,
    mode: str | None,
    workspace: str | None,
    dataset_param: str | None,
    table_param: str | None,
) -> None:
    """Arbitrary bytes and JSON to the Power BI-compatible route: never a 500 or an exception."""
    name = http_dataset
    response, out = call(
        http.add_rows,
        f"http://localhost/api/datasets/{name}/tables/Product/rows",
        body.replace(DATASET.encode(), name.encode()),
        content_type,
        {
            "mode": mode,
            "workspace": workspace,
            "dataset": real(dataset_param, name),
            "table": real(table_param, name),
        },
        route={"dataset": name, "table": "Product"},
    )
    TRIED["HTTP add_rows"] += 1
    check_answer(response, out)


@fuzz(200)
@given(
    body=ROWS_BODY,
    content_type=CONTENT_TYPE,
    mode=MODE,
    dataset_param=QUERY_NAME,
    table_param=st.sampled_from([None, "Product"]) | QUERY_NAME,
    workspace=st.sampled_from([None, WORKSPACE_NAME]) | st.text(max_size=8),
)
def test_post_rows_answers_any_body_with_a_4xx_or_an_account_of_every_row(
    http_dataset: str,
    body: bytes,
    content_type: str | None,
    mode: str | None,
    dataset_param: str | None,
    table_param: str | None,
    workspace: str | None,
) -> None:
    """Arbitrary bytes, JSON and envelopes (right keys, wrong types) to POST /api/rows."""
    name = http_dataset
    response, out = call(
        http.post_rows,
        "http://localhost/api/rows",
        body.replace(DATASET.encode(), name.encode()),
        content_type,
        {
            "mode": mode,
            "dataset": real(dataset_param, name),
            "table": real(table_param, name),
            "workspace": workspace,
        },
    )
    TRIED["HTTP post_rows"] += 1
    check_answer(response, out)


# -- queue -----------------------------------------------------------------------------------------


class DeadLetters:
    """The dead-letter container, read incrementally: each call returns only the new blobs."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self.seen: set[str] = set()

    def new(self) -> list[list[dict[str, Any]]]:
        found = []
        try:
            names = [b.name for b in self.container.list_blobs() if b.name not in self.seen]
        except ResourceNotFoundError:  # not created until the first dead letter
            return []
        for blob in names:
            self.seen.add(blob)
            text = self.container.download_blob(blob).readall().decode("utf-8")
            # JSON lines end at "\n" only: str.splitlines() also splits at U+2028, U+0085...,
            # which a row may hold unescaped (the store writes ensure_ascii=False).
            found.append([json.loads(line) for line in text.split("\n") if line])
        return found


@pytest.fixture
def queue_setup(
    api: Api, azurite: Azurite, settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str, DeadLetters]:
    """(dataset name, dataset id, dead letters): a fresh dataset and dead-letter container, and
    a short linger so that a message with rows does not wait 0.2 s for company."""
    container = f"dl-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DEADLETTER_CONTAINER", container)
    monkeypatch.setenv("QUEUE_LINGER_SECONDS", "0.01")
    monkeypatch.setenv("QUEUE_TIME_BUDGET_SECONDS", "10")
    runtime.reset()
    name = f"HostileQ-{uuid.uuid4().hex[:8]}"
    dataset_id = api.create_dataset(
        [{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name
    )
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return name, dataset_id, DeadLetters(service.get_container_client(container))


NAMES = ("container", "name")


def expected_outcome(raw: bytes) -> tuple[str, int]:
    """What the README promises for a message body, worked out independently of the code:

    - ``("rows", n)``: a well-formed inline envelope (base64 or plain JSON; dataset and table
      non-empty strings, workspace absent, null or a non-empty string, rows an array): each of
      its n rows is pushed or dead-lettered;
    - ``("continuation", 0)``: the app's own ``{"continueBlob": {"container", "name"}}``; a file
      that is not there (anymore) has nothing to push, so at most one dead letter;
    - ``("dead letter", 1)``: anything else, dead-lettered once with the reason.
    """
    try:
        text = raw.decode("utf-8").strip()
        if text[:1] not in ("{", "["):
            text = base64.b64decode(text, validate=True).decode("utf-8-sig").strip()
        value = json.loads(text)
    except (ValueError, RecursionError, binascii.Error):
        return "dead letter", 1

    def named(item: Any) -> bool:
        return isinstance(item, str) and bool(item.strip())

    if not isinstance(value, dict):
        return "dead letter", 1
    if "continueBlob" in value:
        spec = value["continueBlob"]
        if isinstance(spec, dict) and all(isinstance(spec.get(k), str) for k in NAMES):
            return "continuation", 0
        return "dead letter", 1
    if not (named(value.get("dataset")) and named(value.get("table"))):
        return "dead letter", 1
    if value.get("workspace") is not None and not named(value["workspace"]):
        return "dead letter", 1
    if "blob" in value and "rows" not in value:
        return "dead letter", 1  # a claim check: none exists here
    rows = value.get("rows")
    return ("rows", len(rows)) if isinstance(rows, list) else ("dead letter", 1)


MESSAGE_VALUE = (
    DOCUMENT
    | st.fixed_dictionaries({"continueBlob": JSON})
    | st.fixed_dictionaries(
        {"continueBlob": st.fixed_dictionaries({"container": TABLE, "name": TABLE})}
    )
)
ENCODING = st.sampled_from(["raw", "base64"])
MESSAGE = st.one_of(
    st.tuples(ENCODING, st.binary(max_size=300)),
    st.tuples(ENCODING, encoded(MESSAGE_VALUE)),
    st.tuples(ENCODING, GOOD_ENVELOPE.map(dumps)),
)


@fuzz(120)
@given(message=MESSAGE, claim_name=st.booleans())
def test_queue_message_is_delivered_or_dead_lettered_with_a_reason(
    api: Api,
    settings: dict[str, str],
    queue_setup: tuple[str, str, DeadLetters],
    message: tuple[str, bytes],
    claim_name: bool,
) -> None:
    """Any message body: ingest_queue returns (a permanent problem is never retried), and the
    message leaves exactly one dead letter with a reason, or its rows are each either pushed
    or dead-lettered."""
    name, dataset_id, letters = queue_setup
    encoding, raw = message
    raw = raw.replace(DATASET.encode(), name.encode())
    if claim_name:  # a claim-check reference into the real claim-check container
        raw = raw.replace(b'"blob": "', f'"blob": "{settings["CLAIMCHECK_CONTAINER"]}/'.encode())
    body = base64.b64encode(raw) if encoding == "base64" else raw
    before = len(api.stored_rows(dataset_id, "Product"))

    asyncio.run(ingest_queue(QueueMessage(id=uuid.uuid4().hex, body=body, dequeue_count=1)))
    TRIED["queue message"] += 1

    blobs = letters.new()
    lines = [line for blob in blobs for line in blob]
    pushed = len(api.stored_rows(dataset_id, "Product")) - before
    for line in lines:
        assert isinstance(line["reason"], str) and line["reason"].strip(), line
    outcome, rows = expected_outcome(body)
    hypothesis.event(outcome)
    if outcome == "rows":
        assert len(lines) + pushed == rows, (lines, pushed)
    elif outcome == "continuation":
        assert len(lines) <= 1 and pushed == 0, lines
    else:
        assert (len(blobs), len(lines), pushed) == (1, 1, 0), lines
        assert lines[0]["source"].startswith("queue message")


@pytest.mark.parametrize(
    "spec",
    [
        {"container": "Product", "name": "Product"},  # upper case: not a container name
        {"container": "", "name": ""},
        {"container": "nosuch", "name": "x.csv"},  # no such container
        {"container": "ab", "name": "x.csv"},  # too short for a container name
        {"container": "nosuch", "name": "x" * 1_100},  # longer than a blob name may be
        {"container": "nosuch", "name": "a\u0000b"},
        {"container": "nosuch", "name": "\ud800"},  # a lone surrogate
        {"container": "nosuch", "name": "../../x"},
    ],
    ids=["upper-case", "empty", "missing", "short", "long-name", "nul", "surrogate", "dots"],
)
def test_a_continuation_naming_no_usable_blob_is_not_retried(
    api: Api, queue_setup: tuple[str, str, DeadLetters], spec: dict[str, str]
) -> None:
    """The blob path's own continuation message, naming a container or blob that is not there
    or cannot be: the function returns (a retry cannot fix it), with at most one dead letter."""
    _, _, letters = queue_setup
    body = dumps({"continueBlob": spec})
    asyncio.run(ingest_queue(QueueMessage(id=uuid.uuid4().hex, body=body, dequeue_count=1)))
    assert len(letters.new()) <= 1


@pytest.mark.parametrize(
    "name",
    ["\ud800", "x" * 1_100, "../x", "", "a\u0000b", "%2e%2e/x", "2026/01/01/nosuch.json"],
    ids=["surrogate", "long-name", "dots", "empty", "nul", "encoded-dots", "missing"],
)
def test_a_claim_check_naming_no_usable_blob_is_dead_lettered_at_once(
    api: Api,
    settings: dict[str, str],
    queue_setup: tuple[str, str, DeadLetters],
    name: str,
) -> None:
    """A message whose claim check names a blob in the claim-check container that is not there
    or cannot be: dead-lettered on its first delivery with the reason, not retried five times
    into the poison queue (a retry cannot make the name usable)."""
    dataset, _, letters = queue_setup
    reference = f"{settings['CLAIMCHECK_CONTAINER']}/{name}"
    body = dumps({"dataset": dataset, "table": "Product", "blob": reference})
    try:
        asyncio.run(ingest_queue(QueueMessage(id=uuid.uuid4().hex, body=body, dequeue_count=1)))
    except Exception as exc:
        raise unhandled(exc) from None
    ((letter,),) = letters.new()
    assert "claim" in letter["reason"], letter


def test_dead_letters_holding_unicode_line_breaks_can_be_replayed(
    api: Api, azurite: Azurite, settings: dict[str, str], queue_setup: tuple[str, str, DeadLetters]
) -> None:
    """A refused row whose text holds U+2028 or U+0085 (JSON allows them unescaped, and the
    store writes ensure_ascii=False) is dead-lettered, and `replay deadletters` reads it back:
    one JSON line per "\\n", not per str.splitlines() break."""
    name, _, letters = queue_setup
    row = {"ProductID": "one\u2028two\u0085three"}  # not a number: refused, dead-lettered
    body = dumps({"dataset": name, "table": "Product", "rows": [row]})
    asyncio.run(ingest_queue(QueueMessage(id=uuid.uuid4().hex, body=body, dequeue_count=1)))
    ((letter,),) = letters.new()
    assert letter["row"] == row
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        report = replay_dead_letters(
            service.get_container_client(letters.container.container_name), runtime.get_ingestor()
        )
    except Exception as exc:
        raise unhandled(exc) from None
    assert (report.blobs_replayed, report.rows_rejected_again) == (1, 1), report.to_json()


# -- file readers ----------------------------------------------------------------------------------


def as_csv(records: list[list[str]]) -> bytes:
    return "\n".join(",".join(r) for r in records).encode("utf-8", "surrogatepass")


FILE_BYTES = st.one_of(
    st.binary(max_size=2_000),
    encoded(JSON | st.builds(lambda rows: {"rows": rows}, ROWS) | ROWS),
    st.lists(st.lists(st.text(max_size=6), max_size=4), max_size=6).map(as_csv),
    st.lists(st.sampled_from([b"a", b",", b'"', b"\n", b"\r", b"\x00", b"\xff", b" "])).map(
        b"".join
    ),
    # Deep nesting, as arrays and as objects, in each shape a JSON file may take.
    st.integers(0, 3_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(0, 3_000).map(lambda n: b'{"rows": [' + b'{"a": ' * n + b"1" + b"}" * n + b"]}"),
)


def unhandled(exc: BaseException) -> AssertionError:
    """An exception the code under test let out, as one failure with a stable location (so that
    Hypothesis shrinks it consistently, wherever a RecursionError happens to strike) and only
    the innermost frames of its traceback."""
    frames = "".join(traceback.format_exception(exc, limit=-4))
    return AssertionError(f"unhandled {type(exc).__name__}: {exc}\n{frames}")


def drain(items: Iterable[Any]) -> list[Any]:
    """Everything ``items`` yields; an exception from it fails the test via :func:`unhandled`.

    Read on a fresh thread, whose stack starts at the same depth every time: a RecursionError
    then strikes at the same nesting on every run, so Hypothesis can shrink to it."""
    with ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(list, items).result()
        except Exception as exc:
            raise unhandled(exc) from None


def packed(data: bytes, how: str) -> tuple[bytes, bool]:
    """``data`` as stored: plain, gzip, gzip cut short, two gzip members, or plain bytes that
    claim to be gzip. Returns (bytes, whether the reader is told it is gzip)."""
    if how == "plain":
        return data, False
    whole = gzip.compress(data, mtime=0)
    if how == "gzip":
        return whole, True
    if how == "gzip-truncated":
        return whole[: max(1, len(whole) // 2)], True
    if how == "gzip-members":
        return whole + gzip.compress(data, mtime=0), False  # found by its magic bytes
    return data, True  # "claims-gzip"


@fuzz(400)
@given(
    data=FILE_BYTES,
    kind=st.sampled_from(FORMATS),
    how=st.sampled_from(["plain", "gzip", "gzip-truncated", "gzip-members", "claims-gzip"]),
    chunk=st.integers(1, 64),
    max_bytes=st.just(DEFAULT_MAX_BYTES) | st.integers(0, 20_000),
)
def test_file_readers_yield_rows_or_reasons_for_any_bytes(
    data: bytes, kind: str, how: str, chunk: int, max_bytes: int
) -> None:
    """read_rows never raises, whatever the bytes and wherever the chunks are cut: each item is
    a row (a dict of text for CSV; any JSON value for NDJSON and JSON, for the schema to judge)
    or an Unreadable with a reason."""
    stored, gzipped = packed(data, how)
    TRIED["file bytes"] += 1
    chunks = [stored[i : i + chunk] for i in range(0, len(stored), chunk)]
    for item in drain(read_rows(chunks, kind, gzipped, max_bytes)):
        if isinstance(item, Unreadable):
            assert isinstance(item.reason, str) and item.reason.strip(), item
        elif kind == "csv":
            assert isinstance(item, dict), item
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in item.items())
        else:
            assert isinstance(item, dict | list | str | int | float | bool | type(None)), item


NESTED = {
    "arrays": lambda n: b"[" * n + b"]" * n,
    "objects": lambda n: b'{"rows": [' + b'{"a": ' * n + b"1" + b"}" * n + b"]}",
    "row-of-arrays": lambda n: b'[{"a": ' + b"[" * n + b"]" * n + b"}]",
}


@fuzz(60)
@given(
    depth=st.integers(0, 3_000),
    shape=st.sampled_from(sorted(NESTED)),
    kind=st.sampled_from(["json", "ndjson"]),
    gzipped=st.booleans(),
)
def test_file_readers_take_any_nesting(depth: int, shape: str, kind: str, gzipped: bool) -> None:
    """Nesting is where a JSON reader recurses: any depth gives rows or Unreadables, never an
    exception (NDJSON gets one document per line, JSON the file as it is)."""
    data = NESTED[shape](depth)
    TRIED["nested file"] += 1
    if gzipped:
        data = gzip.compress(data, mtime=0)
    for item in drain(read_rows([data], kind, gzipped)):
        if isinstance(item, Unreadable):
            assert item.reason.strip(), item


# -- limits and bounded memory ---------------------------------------------------------------------


def answer(response: func.HttpResponse) -> Any:
    assert response.mimetype == "application/json"
    return json.loads(response.get_body())


def push(dataset: str, body: bytes) -> tuple[func.HttpResponse, Out]:
    return call(
        http.add_rows,
        f"http://localhost/api/datasets/{dataset}/tables/Product/rows",
        body,
        "application/json",
        {},
        route={"dataset": dataset, "table": "Product"},
    )


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"rows": [{"ProductID": ' + b"9" * 400 + b'}], "deep": ' + DEEP + b"}", "nested"),
        (b'{"rows": [' + DEEP + b"]}", "nested too deeply"),
        (b'{"rows": [{"ProductID": ' + b"9" * 5_000 + b"}]}", "not usable JSON"),
        (b'{"rows": [{"ProductID": 1e999999}]}', None),
    ],
    ids=["400-digits-and-100k-deep", "100k-deep", "5000-digits", "1e999999"],
)
def test_huge_numbers_and_deep_nesting_are_refused_not_crashed_on(
    http_dataset: str, body: bytes, says: str | None
) -> None:
    """A body nested 100,000 deep or with an integer past Python's 4,300-digit limit is a 400
    that says so; a number that overflows a double is a row refused with a reason (and, the
    body's only row, a 400: nothing was stored)."""
    response, _ = push(http_dataset, body)
    payload = answer(response)
    if says is None:
        assert response.status_code == 400, payload
        assert payload["error"]["code"] == "RowsRefused"
        assert (payload["sent"], payload["rejected"]) == (0, 1)
        assert payload["problems"][0]["column"] == "ProductID"
    else:
        assert response.status_code == 400, payload
        assert payload["error"]["code"] == "InvalidBody" and says in payload["error"]["message"]


def test_a_400_digit_integer_is_a_refused_row(api: Api, http_dataset: str) -> None:
    """A 400-digit integer parses (it is under Python's digit limit) and is refused as a row,
    with the reason; the other rows go through."""
    body = b'{"rows": [{"ProductID": ' + b"9" * 400 + b'}, {"ProductID": 1}]}'
    response, _ = push(http_dataset, body)
    payload = answer(response)
    assert response.status_code == 200, payload
    assert (payload["sent"], payload["rejected"]) == (1, 1)
    assert payload["problems"][0]["index"] == 0 and "Int64" in payload["problems"][0]["reason"]


def test_a_10_mb_string_is_a_refused_row_not_a_crash(
    http_dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10 MB string value is refused with the 4,000-character reason (the answer does not echo
    it), the other row goes through, and the request takes a bounded multiple of its size."""
    monkeypatch.setenv("HTTP_MAX_BODY_BYTES", str(32 * MiB))
    runtime.reset()
    big = "x" * 10_000_000
    body = json.dumps({"rows": [{"ProductID": 1, "Product": big}, {"ProductID": 2}]}).encode()
    del big
    push(http_dataset, b'{"rows": []}')  # resolve the dataset outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        response, _ = push(http_dataset, body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    payload = answer(response)
    assert response.status_code == 200, payload
    assert (payload["received"], payload["sent"], payload["rejected"]) == (2, 1, 1)
    (problem,) = payload["problems"]
    assert (problem["index"], problem["column"]) == (0, "Product")
    assert "4,000" in problem["reason"] and "10,000,000" in problem["reason"]
    assert len(response.get_body()) < 10_000
    # The body, the parsed string and its UTF-16 length check: a few copies, never more.
    assert peak < 6 * len(body), f"peak {peak / MiB:.0f} MiB for a {len(body) / MiB:.0f} MiB body"


def test_a_body_over_the_limit_is_413(http_dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Just over HTTP_MAX_BODY_BYTES (32 MiB, set explicitly) is a 413, before any parsing."""
    monkeypatch.setenv("HTTP_MAX_BODY_BYTES", str(32 * MiB))
    runtime.reset()
    body = b'{"rows": [{"Product": "' + b"x" * (32 * MiB) + b'"}]}'
    response, _ = push(http_dataset, body)
    assert response.status_code == 413
    assert "HTTP_MAX_BODY_BYTES" in answer(response)["error"]["message"]


BOMB_LIMIT = 50_000_000


def gzip_of(pieces: Iterator[bytes]) -> bytes:
    """gzip of the concatenated pieces, compressed as they come (never held whole)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as zipped:
        for piece in pieces:
            zipped.write(piece)
    return out.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """200,000,000 zeros, gzipped: about 200 KB (gzip.compress(b'0' * 200_000_000))."""
    data = gzip_of(b"0" * MiB for _ in range(200_000_000 // MiB))
    assert len(data) < 300_000
    return data


@pytest.fixture(scope="module")
def json_bomb() -> bytes:
    """A JSON array that opens, then 200,000,000 spaces: valid so far, so only the limit stops
    it (a JSON file of zeros is refused at its first byte, before any unpacking)."""
    return gzip_of(iter([b"[", *(b" " * MiB for _ in range(200_000_000 // MiB))]))


def measured(chunks: list[bytes], kind: str, max_bytes: int) -> tuple[list[Any], int]:
    """Everything read_rows yields, and the peak traced memory while reading."""
    gc.collect()
    tracemalloc.start()
    try:
        items = list(read_rows(iter(chunks), kind, True, max_bytes))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return items, peak


@pytest.mark.parametrize("kind", FORMATS)
def test_a_gzip_bomb_is_refused_at_the_limit_in_bounded_memory(
    bomb: bytes, json_bomb: bytes, kind: str
) -> None:
    """A 200 KB file that unpacks to 200 MB, read with a 50 MB limit: an Unreadable naming the
    limit, and at most 60 MB traced at any time."""
    data = json_bomb if kind == "json" else bomb
    chunks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    items, peak = measured(chunks, kind, BOMB_LIMIT)
    problems = [i for i in items if isinstance(i, Unreadable)]
    assert problems and f"{BOMB_LIMIT:,}" in problems[-1].reason, items[:5]
    assert peak < 60 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_deeply_nested_json_file_is_refused_in_bounded_memory() -> None:
    """A 20 KB JSON file nested 10,000 deep: an Unreadable (nesting too deep), never an
    exception, and memory that does not grow with the square of the depth."""
    depth = 10_000
    data = b"[" + b"[" * depth + b"]" * depth + b"]"
    items: list[Any] = []
    raised: BaseException | None = None
    gc.collect()
    tracemalloc.start()
    try:
        items = list(read_rows([data], "json", False, BOMB_LIMIT))
    except Exception as exc:
        raised = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    sizes = f"peak {peak / MiB:.0f} MiB for a {len(data):,}-byte file"
    assert raised is None, f"{unhandled(raised)}({sizes})"
    assert len(items) == 1 and isinstance(items[0], Unreadable), items
    assert peak < 60 * MiB, sizes


class BlobPath:
    """BlobIngest built as tests/integration/memory_probe.py builds it, with a 50 MB limit."""

    def __init__(self, api: Api, azurite: Azurite) -> None:
        self.service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.container = f"hostile{uuid.uuid4().hex[:10]}"
        self.service.get_container_client(self.container).create_container()
        self.letters = self.service.get_container_client(f"{self.container}-dl")
        ingestor = Ingestor(
            PowerBIClient(api.emulator.base, StaticTokenProvider(api.token)),
            dead_letters=BlobDeadLetterStore(self.letters),
        )
        self.blobs = BlobIngest(
            ingestor,
            CheckpointStore(self.service.get_container_client(f"{self.container}-cp")),
            BlobDeadLetterStore(self.letters),
            max_bytes=BOMB_LIMIT,
        )
        self.dataset = f"HostileB-{uuid.uuid4().hex[:6]}"
        api.create_dataset([{"name": "Product", "columns": PRODUCT_COLUMNS}], name=self.dataset)

    def ingest(self, file_name: str, data: bytes) -> list[dict[str, Any]]:
        """Upload and ingest one file; its dead letters."""
        blob = self.service.get_blob_client(self.container, f"{self.dataset}/Product/{file_name}")
        blob.upload_blob(data)
        outcome = self.blobs.handle(blob)
        assert outcome.status == "done", outcome
        return [line for lines in DeadLetters(self.letters).new() for line in lines]


@pytest.fixture
def blob_path(api: Api, azurite: Azurite) -> BlobPath:
    return BlobPath(api, azurite)


def test_a_gzip_bomb_blob_is_dead_lettered_naming_the_limit(
    blob_path: BlobPath, bomb: bytes
) -> None:
    """The bomb uploaded as a .csv.gz: the blob path stops at BLOB max_bytes and dead-letters
    the file with a reason that names the limit."""
    letters = blob_path.ingest("bomb.csv.gz", bomb)
    reasons = [line["reason"] for line in letters]
    assert any(f"{BOMB_LIMIT:,}" in r for r in reasons), reasons


def test_a_deeply_nested_json_blob_is_dead_lettered_with_a_reason(blob_path: BlobPath) -> None:
    """A JSON file with one row nested 2,000 deep after a good row: the good row goes, the rest
    is dead-lettered with a reason; the blob trigger does not fail (and retry) on it."""
    depth = 2_000
    data = b'[{"ProductID": 1}, ' + b"[" * depth + b"]" * depth + b"]"
    letters = blob_path.ingest("deep.json", data)
    assert letters and all(line["reason"] for line in letters), letters
