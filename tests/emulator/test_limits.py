"""Each Power BI push limit at its boundary, over HTTP against the running emulator."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from emulator import limits
from tests.emulator.conftest import Api, int_table

JSON = {"Content-Type": "application/json"}
MakeDataset = Callable[..., str]


def rows_body(start: int, count: int) -> bytes:
    """A Post Rows body of ``count`` rows ``{"c0": i}`` for i from ``start``."""
    return json.dumps({"rows": [{"c0": i} for i in range(start, start + count)]}).encode()


#: Built once: 10,000 one-column rows, reused by every test that pushes in bulk.
FULL_BODY = rows_body(0, limits.MAX_ROWS_PER_POST)
ONE_ROW = rows_body(0, 1)


@pytest.fixture
def make_dataset(api: Api) -> Iterator[MakeDataset]:
    """Create datasets for one test and delete them (and their rows) afterwards."""
    created: list[str] = []

    def make(tables: list[dict[str, Any]] | None = None, retention: str | None = None) -> str:
        dataset_id = api.create_dataset(tables or [int_table()], retention=retention)
        created.append(dataset_id)
        return dataset_id

    yield make
    for dataset_id in created:
        api.request("DELETE", f"{api.prefix(None)}/datasets/{dataset_id}")


def post_raw(api: Api, dataset_id: str, body: bytes, table: str = "T") -> requests.Response:
    """POST prepared JSON bytes to a table's rows."""
    return api.request("POST", api.rows_url(dataset_id, table), data=body, headers=JSON)


def table_rows(api: Api, dataset_id: str, table: str = "T") -> int:
    """How many rows the emulator holds for ``table``."""
    tables = {t["name"]: t["rows"] for t in api.state(dataset_id)["tables"]}
    count: int = tables[table]
    return count


def read_rows(api: Api, dataset_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
    """A page of stored rows, oldest first, from the emulator's read API."""
    url = f"{api.emulator.base}/_emulator/datasets/{dataset_id}/tables/T/rows"
    response = api.session.get(url, params={"offset": offset, "limit": limit}, timeout=60)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def details(response: requests.Response) -> list[dict[str, str]]:
    """The ``details`` of a 400 in the service's error shape."""
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    found: list[dict[str, str]] = error["details"]
    return found


def assert_throttled(response: requests.Response, reason: str) -> int:
    """Check a quota 429 and return its Retry-After seconds."""
    assert response.status_code == 429, response.text
    assert response.headers["x-emulator-throttle-reason"] == reason
    assert response.json()["error"]["code"] == "TooManyRequests"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    return int(retry_after)


# -- rows per POST ----------------------------------------------------------------------------


def test_10000_rows_in_one_post_are_accepted(api: Api, make_dataset: MakeDataset) -> None:
    """A POST of exactly 10,000 rows is accepted and every row is stored."""
    dataset_id = make_dataset()
    response = post_raw(api, dataset_id, FULL_BODY)
    assert response.status_code == 200, response.text
    assert table_rows(api, dataset_id) == limits.MAX_ROWS_PER_POST
    assert read_rows(api, dataset_id, 9_999, 1) == [{"c0": 9_999}]


def test_10001_rows_in_one_post_are_refused(api: Api, make_dataset: MakeDataset) -> None:
    """A POST of 10,001 rows is a 400 naming the 10,000 limit, and nothing is stored."""
    dataset_id = make_dataset()
    response = post_raw(api, dataset_id, rows_body(0, limits.MAX_ROWS_PER_POST + 1))
    assert response.status_code == 400, response.text
    assert "10,000" in details(response)[0]["message"]
    assert table_rows(api, dataset_id) == 0


# -- request rate -----------------------------------------------------------------------------


def test_121st_post_in_a_minute_is_throttled(api: Api, make_dataset: MakeDataset) -> None:
    """120 POSTs per minute are accepted; the 121st is a 429 until the minute has passed."""
    dataset_id = make_dataset()
    for _ in range(limits.MAX_POSTS_PER_MINUTE):
        response = post_raw(api, dataset_id, ONE_ROW)
        assert response.status_code == 200, response.text
    retry_after = assert_throttled(post_raw(api, dataset_id, ONE_ROW), "posts_per_minute")
    assert retry_after <= 60
    api.advance(60)
    assert post_raw(api, dataset_id, ONE_ROW).status_code == 200
    state = api.state(dataset_id)
    assert state["counters"]["throttled_posts_per_minute"] == 1
    assert state["counters"]["posts_accepted"] == limits.MAX_POSTS_PER_MINUTE + 1
    assert table_rows(api, dataset_id) == limits.MAX_POSTS_PER_MINUTE + 1


def test_rows_past_a_million_in_an_hour_are_throttled(api: Api, make_dataset: MakeDataset) -> None:
    """1,000,000 rows per hour are accepted; one more row is a 429 until the hour has passed."""
    dataset_id = make_dataset()
    for _ in range(limits.MAX_ROWS_PER_HOUR // limits.MAX_ROWS_PER_POST):
        response = post_raw(api, dataset_id, FULL_BODY)
        assert response.status_code == 200, response.text
    assert api.state(dataset_id)["usage"]["rowsLastHour"] == limits.MAX_ROWS_PER_HOUR
    retry_after = assert_throttled(post_raw(api, dataset_id, ONE_ROW), "rows_per_hour")
    assert retry_after <= 3600
    assert table_rows(api, dataset_id) == limits.MAX_ROWS_PER_HOUR
    api.advance(3600)
    assert post_raw(api, dataset_id, ONE_ROW).status_code == 200
    assert api.state(dataset_id)["counters"]["throttled_rows_per_hour"] == 1


def test_large_table_allows_120_posts_per_hour(api: Api, make_dataset: MakeDataset) -> None:
    """Once a table holds 250,000 rows the dataset gets 120 POSTs per hour; the 121st is a 429."""
    dataset_id = make_dataset()
    posts = 0
    for _ in range(limits.LARGE_TABLE_ROWS // limits.MAX_ROWS_PER_POST):
        assert post_raw(api, dataset_id, FULL_BODY).status_code == 200
        posts += 1
    assert table_rows(api, dataset_id) == limits.LARGE_TABLE_ROWS
    while posts < limits.MAX_POSTS_PER_HOUR_LARGE_TABLE:
        if posts % 100 == 0:
            api.advance(61)  # stay under 120 per minute; still the same hour
        response = post_raw(api, dataset_id, ONE_ROW)
        assert response.status_code == 200, f"POST {posts + 1}: {response.text}"
        posts += 1
    retry_after = assert_throttled(post_raw(api, dataset_id, ONE_ROW), "posts_per_hour_large_table")
    assert retry_after <= 3600
    assert api.state(dataset_id)["usage"]["postsLastHour"] == limits.MAX_POSTS_PER_HOUR_LARGE_TABLE


def test_at_most_five_posts_are_pending(api: Api, make_dataset: MakeDataset) -> None:
    """With 7 slow POSTs at once, at most 5 are in progress; the others get 429 (pending)."""
    dataset_id = make_dataset()
    api.set_faults(latency_ms=800, latency_rate=1.0)
    url = api.rows_url(dataset_id, "T")
    workers = limits.MAX_PENDING_POSTS + 2
    start = threading.Barrier(workers)

    def post(value: int) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            session.headers["Authorization"] = api.session.headers["Authorization"]
            start.wait(timeout=30)
            return session.post(url, json={"rows": [{"c0": value}]}, timeout=60)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        responses = list(pool.map(post, range(workers)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert refused, statuses
    for response in refused:
        assert_throttled(response, "pending")
    accepted = statuses.count(200)
    assert accepted <= limits.MAX_PENDING_POSTS
    assert table_rows(api, dataset_id) == accepted
    assert api.state(dataset_id)["counters"]["throttled_pending"] == len(refused)


# -- rows stored per table --------------------------------------------------------------------


def test_basic_fifo_keeps_the_newest_200000_rows(api: Api, make_dataset: MakeDataset) -> None:
    """A basicFIFO table keeps at most 200,000 rows, dropping the oldest first."""
    dataset_id = make_dataset(retention="basicFIFO")
    posts = limits.FIFO_MAX_ROWS // limits.MAX_ROWS_PER_POST + 1
    for index in range(posts):
        body = rows_body(index * limits.MAX_ROWS_PER_POST, limits.MAX_ROWS_PER_POST)
        assert post_raw(api, dataset_id, body).status_code == 200
    assert table_rows(api, dataset_id) == limits.FIFO_MAX_ROWS
    assert read_rows(api, dataset_id, 0, 1) == [{"c0": limits.MAX_ROWS_PER_POST}]
    newest = posts * limits.MAX_ROWS_PER_POST - 1
    assert read_rows(api, dataset_id, limits.FIFO_MAX_ROWS - 1, 1) == [{"c0": newest}]


@pytest.mark.slow
def test_none_retention_table_holds_at_most_5_million_rows(
    api: Api, make_dataset: MakeDataset
) -> None:
    """A table of a dataset without retention policy refuses rows past 5,000,000 with a 400."""
    dataset_id = make_dataset()
    posts = limits.NONE_RETENTION_MAX_ROWS // limits.MAX_ROWS_PER_POST
    for index in range(1, posts + 1):
        response = post_raw(api, dataset_id, FULL_BODY)
        assert response.status_code == 200, f"POST {index}: {response.text}"
        if index % 100 == 0:
            api.advance(3600)  # a new hour: neither hourly limit trips
    assert table_rows(api, dataset_id) == limits.NONE_RETENTION_MAX_ROWS
    response = post_raw(api, dataset_id, ONE_ROW)
    assert response.status_code == 400, response.text
    assert "5,000,000" in details(response)[0]["message"]
    assert table_rows(api, dataset_id) == limits.NONE_RETENTION_MAX_ROWS


# -- values -----------------------------------------------------------------------------------


def test_string_of_4000_characters_passes_and_4001_is_refused(
    api: Api, make_dataset: MakeDataset
) -> None:
    """A String value may hold 4,000 characters (UTF-16 units), not 4,001."""
    dataset_id = make_dataset([{"name": "T", "columns": [{"name": "s", "dataType": "String"}]}])
    url = api.rows_url(dataset_id, "T")
    for value in ("x" * 4_000, "😀" * 2_000):
        response = api.request("POST", url, json={"rows": [{"s": value}]})
        assert response.status_code == 200, response.text
    for value in ("x" * 4_001, "😀" * 2_001):
        response = api.request("POST", url, json={"rows": [{"s": value}]})
        assert response.status_code == 400, response.text
        assert details(response)[0]["target"] == "rows[0].s"
    assert [row["s"] for row in read_rows(api, dataset_id, 0, 10)] == ["x" * 4_000, "😀" * 2_000]


def test_int64_max_is_refused_naming_the_cell(api: Api, make_dataset: MakeDataset) -> None:
    """Int64.MaxValue is a 400 whose details target the row and column."""
    dataset_id = make_dataset()
    response = api.post_rows(dataset_id, "T", [{"c0": 2**63 - 1}])
    assert response.status_code == 400, response.text
    assert details(response)[0]["target"] == "rows[0].c0"
    response = api.post_rows(dataset_id, "T", [{"c0": 2**63 - 2}])
    assert response.status_code == 200, response.text
    assert table_rows(api, dataset_id) == 1


def test_double_column_refuses_an_integer_beyond_the_double_range(
    api: Api, make_dataset: MakeDataset
) -> None:
    """An integer literal too large for a double is a 400 on a Double column, not a 500."""
    dataset_id = make_dataset([{"name": "T", "columns": [{"name": "d", "dataType": "Double"}]}])
    body = b'{"rows": [{"d": 1' + b"0" * 400 + b"}]}"
    response = post_raw(api, dataset_id, body)
    assert response.status_code == 400, response.text
    assert details(response)[0]["target"] == "rows[0].d"


def test_unknown_column_is_refused(api: Api, make_dataset: MakeDataset) -> None:
    """A row naming a column the table does not have is a 400, and nothing is stored."""
    dataset_id = make_dataset()
    response = api.post_rows(dataset_id, "T", [{"c0": 1}, {"c0": 2, "nope": 3}])
    assert response.status_code == 400, response.text
    assert details(response)[0]["target"] == "rows[1]"
    assert "nope" in details(response)[0]["message"]
    assert table_rows(api, dataset_id) == 0


def test_missing_column_is_stored_as_null(api: Api, make_dataset: MakeDataset) -> None:
    """A column left out of a row is stored as null."""
    dataset_id = make_dataset([int_table(columns=2)])
    response = api.post_rows(dataset_id, "T", [{"c0": 1}, {"c1": 2}, {}])
    assert response.status_code == 200, response.text
    assert api.stored_rows(dataset_id, "T") == [
        {"c0": 1, "c1": None},
        {"c0": None, "c1": 2},
        {"c0": None, "c1": None},
    ]


def test_mixed_case_type_names_are_accepted(api: Api, make_dataset: MakeDataset) -> None:
    """Create Dataset accepts type names in any case and the int/bool aliases."""
    columns = [
        {"name": "i", "dataType": "INT64"},
        {"name": "b", "dataType": "bool"},
        {"name": "t", "dataType": "dateTime"},
        {"name": "n", "dataType": "int"},
    ]
    dataset_id = make_dataset([{"name": "T", "columns": columns}])
    response = api.post_rows(
        dataset_id, "T", [{"i": 7, "b": True, "t": "2024-05-06T07:08:09Z", "n": "12"}]
    )
    assert response.status_code == 200, response.text
    assert api.stored_rows(dataset_id, "T") == [
        {"i": 7, "b": True, "t": "2024-05-06T07:08:09.000Z", "n": 12}
    ]


# -- schema counts ----------------------------------------------------------------------------


def create_raw(api: Api, tables: list[dict[str, Any]]) -> requests.Response:
    """Create Dataset with ``tables``, returning the answer whatever it is."""
    return api.request("POST", f"{api.prefix(None)}/datasets", json={"name": "x", "tables": tables})


def test_75_tables_are_allowed_and_76_refused(api: Api, make_dataset: MakeDataset) -> None:
    """A dataset may have 75 tables, not 76."""
    dataset_id = make_dataset([int_table(f"t{i}") for i in range(limits.MAX_TABLES)])
    assert len(api.state(dataset_id)["tables"]) == limits.MAX_TABLES
    response = create_raw(api, [int_table(f"t{i}") for i in range(limits.MAX_TABLES + 1)])
    assert response.status_code == 400, response.text
    assert "75" in details(response)[0]["message"]


def test_75_columns_are_allowed_and_76_refused(api: Api, make_dataset: MakeDataset) -> None:
    """A table may have 75 columns, not 76."""
    dataset_id = make_dataset([int_table(columns=limits.MAX_COLUMNS)])
    assert len(api.state(dataset_id)["tables"][0]["columns"]) == limits.MAX_COLUMNS
    response = create_raw(api, [int_table(columns=limits.MAX_COLUMNS + 1)])
    assert response.status_code == 400, response.text
    assert "75" in details(response)[0]["message"]


# -- body size --------------------------------------------------------------------------------


def test_body_over_16_mb_is_refused(api: Api, make_dataset: MakeDataset) -> None:
    """A body of 16,000,000 bytes is accepted; one byte more is a 413 and nothing is stored."""
    dataset_id = make_dataset([{"name": "T", "columns": [{"name": "s", "dataType": "String"}]}])
    count = 3_980  # rows of 4,000 characters: valid values, under 10,000 rows
    body = json.dumps({"rows": [{"s": "x" * 4_000}] * count}).encode()
    assert len(body) < limits.MAX_BODY_BYTES
    at_limit = body + b" " * (limits.MAX_BODY_BYTES - len(body))  # JSON allows trailing space

    response = post_raw(api, dataset_id, at_limit + b" ")
    assert response.status_code == 413, response.text[:200]
    assert response.json()["error"]["code"] == "RequestEntityTooLarge"
    assert table_rows(api, dataset_id) == 0

    response = post_raw(api, dataset_id, at_limit)
    assert response.status_code == 200, response.text[:200]
    assert table_rows(api, dataset_id) == count
