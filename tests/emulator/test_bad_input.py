"""Bad input never crashes the emulator, and injected faults do what the fault plan says.

Every bad request gets the service's error shape ``{"error": {"code", "message"}}`` with the
right status; the last bad-input test checks that none of them got a 500 and that the server is
still healthy afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from emulator import limits
from tests.emulator.conftest import WORKSPACE_ID, Api, int_table

JSON = {"Content-Type": "application/json"}
#: (method, url, status) of every answer the bad-input tests got; none may be a 500.
ANSWERS: list[tuple[str, str, int]] = []
MakeDataset = Callable[[], str]


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def client(api: Api) -> Api:
    """The test client, with every answer it gets recorded in ANSWERS."""

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        ANSWERS.append((response.request.method or "", response.url, response.status_code))

    api.session.hooks["response"].append(record)
    return api


@pytest.fixture
def make_dataset(api: Api) -> Iterator[MakeDataset]:
    """Create one-table datasets (``T`` with an Int64 column ``c0``) and delete them after."""
    created: list[str] = []

    def make() -> str:
        dataset_id = api.create_dataset([int_table()])
        created.append(dataset_id)
        return dataset_id

    yield make
    for dataset_id in created:
        api.request("DELETE", f"{api.prefix(None)}/datasets/{dataset_id}")


def assert_error(response: requests.Response, status: int, code: str | None = None) -> str:
    """Check the status and the service's error shape; return the error's text (message and
    details' messages) for further checks."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    texts = [error["message"], *(detail["message"] for detail in error.get("details", []))]
    return "\n".join(texts)


def post_rows_raw(
    api: Api, dataset_id: str, body: Any, headers: dict[str, str] | None = None
) -> requests.Response:
    """POST a prepared body (bytes, str or a generator) to table T's rows."""
    return api.request("POST", api.rows_url(dataset_id, "T"), data=body, headers=headers or JSON)


def create_dataset_raw(
    api: Api, body: Any, headers: dict[str, str] | None = None
) -> requests.Response:
    """POST a prepared Create Dataset body to My workspace."""
    return api.request("POST", f"{api.prefix(None)}/datasets", data=body, headers=headers or JSON)


def create_dataset_json(api: Api, body: Any) -> requests.Response:
    """POST a Create Dataset body serialised as JSON to My workspace."""
    return create_dataset_raw(api, json.dumps(body).encode())


def stored_count(api: Api, dataset_id: str) -> int:
    """How many rows table T holds."""
    count: int = api.state(dataset_id)["tables"][0]["rows"]
    return count


def oversized_body() -> bytes:
    """A valid Post Rows body padded with whitespace to one byte over the limit."""
    body = b'{"rows": [{"c0": 1}]}'
    return body + b" " * (limits.MAX_BODY_BYTES + 1 - len(body))


# -- bodies that are not JSON, or too big -----------------------------------------------------


def test_malformed_json_is_400_naming_the_position(client: Api, make_dataset: MakeDataset) -> None:
    """A body that is not valid JSON is a 400 whose message says where it broke."""
    dataset_id = make_dataset()
    text = assert_error(post_rows_raw(client, dataset_id, b'{"rows": [{"c0": 1}'), 400)
    assert "column" in text and "character" in text, text
    text = assert_error(create_dataset_raw(client, b'{"name": "x", "tables": [,]}'), 400)
    assert "column" in text, text
    assert stored_count(client, dataset_id) == 0


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_body_is_400(client: Api, make_dataset: MakeDataset, encoding: str) -> None:
    """A UTF-16 (or UTF-32) encoded JSON body is refused with 400: JSON is read as UTF-8."""
    dataset_id = make_dataset()
    body = json.dumps({"rows": [{"c0": 1}]}).encode(encoding)
    assert_error(post_rows_raw(client, dataset_id, body), 400)
    assert stored_count(client, dataset_id) == 0


def test_text_plain_is_415(client: Api, make_dataset: MakeDataset) -> None:
    """A text/plain body is refused with 415, on Post Rows and on Create Dataset."""
    dataset_id = make_dataset()
    plain = {"Content-Type": "text/plain"}
    rows = json.dumps({"rows": [{"c0": 1}]}).encode()
    assert_error(post_rows_raw(client, dataset_id, rows, plain), 415, "UnsupportedMediaType")
    definition = json.dumps({"name": "plain", "tables": [int_table()]}).encode()
    assert_error(create_dataset_raw(client, definition, plain), 415, "UnsupportedMediaType")
    assert stored_count(client, dataset_id) == 0


def test_body_over_the_limit_with_content_length_is_413(
    client: Api, make_dataset: MakeDataset
) -> None:
    """A body declared larger than 16,000,000 bytes by Content-Length is a 413."""
    dataset_id = make_dataset()
    response = post_rows_raw(client, dataset_id, oversized_body())
    assert response.request.headers["Content-Length"] == str(limits.MAX_BODY_BYTES + 1)
    assert_error(response, 413, "RequestEntityTooLarge")
    assert stored_count(client, dataset_id) == 0


def test_chunked_body_over_the_limit_is_413(client: Api, make_dataset: MakeDataset) -> None:
    """A body sent chunked (no Content-Length) that grows past the limit is a 413."""
    dataset_id = make_dataset()
    body = oversized_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = post_rows_raw(client, dataset_id, chunks())
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert_error(response, 413, "RequestEntityTooLarge")
    assert stored_count(client, dataset_id) == 0


# -- JSON of the wrong shape ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [[{"c0": 1}], "rows", {"rows": "x"}, {"rows": [1, "a"]}, {"Rows": [{"c0": 1}]}, None, 42],
    ids=["array", "string", "rows-string", "rows-scalars", "rows-case", "null", "number"],
)
def test_post_rows_body_of_the_wrong_shape_is_400(
    client: Api, make_dataset: MakeDataset, body: Any
) -> None:
    """A Post Rows body that is not {"rows": [objects]} is a 400 BadRequest."""
    dataset_id = make_dataset()
    assert_error(post_rows_raw(client, dataset_id, json.dumps(body).encode()), 400, "BadRequest")
    assert stored_count(client, dataset_id) == 0


@pytest.mark.parametrize("body", [[], "dataset", None], ids=["array", "string", "null"])
def test_create_dataset_body_that_is_not_an_object_is_400(client: Api, body: Any) -> None:
    """A Create Dataset body that is not a JSON object is a 400 BadRequest."""
    assert_error(create_dataset_json(client, body), 400, "BadRequest")


def test_unknown_dataset_property_is_400(client: Api) -> None:
    """An unknown property such as compatibilityLevel is a 400 saying it does not exist."""
    body = {"name": "ds", "compatibilityLevel": 1550, "tables": [int_table()]}
    text = assert_error(create_dataset_json(client, body), 400, "BadRequest")
    assert "'compatibilityLevel' does not exist on type" in text, text


def test_property_names_are_case_sensitive(client: Api) -> None:
    """'datatype' is not 'dataType': the column definition is refused with 400."""
    table = {"name": "T", "columns": [{"name": "c0", "datatype": "Int64"}]}
    text = assert_error(create_dataset_json(client, {"name": "ds", "tables": [table]}), 400)
    assert "'datatype' does not exist on type" in text, text


@pytest.mark.parametrize(
    "name", ["a/b", "a.b", "", "x" * 101], ids=["slash", "dot", "empty", "101"]
)
def test_invalid_table_name_is_400(client: Api, name: str) -> None:
    """A table name outside the service's pattern is a 400 BadRequest."""
    table = {"name": name, "columns": [{"name": "c0", "dataType": "Int64"}]}
    body = {"name": "ds", "tables": [table]}
    assert_error(create_dataset_json(client, body), 400, "BadRequest")


@pytest.mark.parametrize("data_type", ["Int128", "Money", "", 7, None])
def test_unknown_data_type_is_400(client: Api, data_type: Any) -> None:
    """A column whose dataType the service does not have is a 400 BadRequest."""
    table = {"name": "T", "columns": [{"name": "c0", "dataType": data_type}]}
    body = {"name": "ds", "tables": [table]}
    assert_error(create_dataset_json(client, body), 400, "BadRequest")


def test_duplicate_column_names_are_400(client: Api) -> None:
    """Two columns of one table with the same name are a 400 BadRequest."""
    columns = [{"name": "c0", "dataType": "Int64"}, {"name": "c0", "dataType": "String"}]
    body = {"name": "ds", "tables": [{"name": "T", "columns": columns}]}
    assert_error(create_dataset_json(client, body), 400, "BadRequest")


# -- routes, methods and ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/v1.0/myorg/nothing-here", "/v1.0/myorg/datasets/x/y/z/w", "/nothing", "/_emulator/nothing"],
)
def test_unknown_route_is_404_not_found(client: Api, path: str) -> None:
    """A URL no route matches is a 404 NotFound in the service's shape."""
    assert_error(client.request("GET", client.emulator.base + path), 404, "NotFound")


def test_wrong_method_is_405(client: Api) -> None:
    """A known route with a method it does not serve is a 405 MethodNotAllowed."""
    response = client.request("PATCH", f"{client.prefix(None)}/datasets", json={})
    assert_error(response, 405, "MethodNotAllowed")


def test_unknown_group_is_404(client: Api) -> None:
    """A workspace id the emulator does not know is a 404 PowerBIEntityNotFound."""
    unknown = client.prefix("00000000-0000-0000-0000-000000000bad")
    assert_error(client.request("GET", f"{unknown}/datasets"), 404, "PowerBIEntityNotFound")


@pytest.mark.parametrize("group", [None, WORKSPACE_ID], ids=["myorg", "group"])
def test_non_uuid_dataset_id_is_404(client: Api, group: str | None) -> None:
    """A dataset id that is not a UUID is a 404 for Get Dataset and for Post Rows."""
    url = f"{client.prefix(group)}/datasets/not-a-uuid"
    assert_error(client.request("GET", url), 404, "PowerBIEntityNotFound")
    response = client.request("POST", f"{url}/tables/T/rows", json={"rows": [{"c0": 1}]})
    assert_error(response, 404, "PowerBIEntityNotFound")


# -- admin API --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        {"bogus": 1},
        {"throttle": 0.6, "error_500": 0.5},
        {"throttle": 2},
        {"script": ["explode"]},
        {"script": "drop"},
        [],
    ],
    ids=["unknown-key", "rates-over-1", "rate-over-1", "script-entry", "script-string", "array"],
)
def test_bad_fault_plan_is_400_and_changes_nothing(client: Api, plan: Any) -> None:
    """A fault plan that makes no sense is a 400 and the current plan stays as it was."""
    faults = f"{client.emulator.base}/_emulator/faults"
    before = client.request("GET", faults).json()
    assert_error(client.request("PUT", faults, json=plan), 400, "BadRequest")
    assert client.request("GET", faults).json() == before


@pytest.mark.parametrize("body", [{"advance": -1}, {"advance": "10"}, {}, [5]])
def test_bad_clock_advance_is_400(client: Api, body: Any) -> None:
    """Advancing the clock by a negative or non-numeric amount is a 400."""
    clock = f"{client.emulator.base}/_emulator/clock"
    assert_error(client.request("POST", clock, json=body), 400, "BadRequest")


def test_bad_workspace_and_token_requests_are_400(client: Api) -> None:
    """The admin API's other bodies are checked too: a 400, never a crash."""
    base = f"{client.emulator.base}/_emulator"
    bad_id = {"name": "w", "id": "not-a-uuid"}
    assert_error(client.request("POST", f"{base}/workspaces", json=bad_id), 400, "BadRequest")
    assert_error(client.request("POST", f"{base}/workspaces", json={"id": 1}), 400, "BadRequest")
    lifetime = {"lifetime": "long"}
    assert_error(client.request("POST", f"{base}/token", json=lifetime), 400, "BadRequest")
    assert_error(client.request("POST", f"{base}/token", data=b"{", headers=JSON), 400)


def test_zz_still_healthy_and_no_bad_input_got_a_500(api: Api) -> None:
    """After all the bad input above the server still serves, and none of it got a 500."""
    assert api.emulator.process.poll() is None, "the emulator process exited"
    response = api.request("GET", f"{api.emulator.base}/_emulator/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert [answer for answer in ANSWERS if answer[2] >= 500] == []


# -- fault injection --------------------------------------------------------------------------


def test_dropped_connection_stores_nothing(api: Api, make_dataset: MakeDataset) -> None:
    """A "drop" fault closes the connection before the rows are read: nothing is stored."""
    dataset_id = make_dataset()
    api.set_faults(script=["drop"])
    with pytest.raises(requests.exceptions.ConnectionError):
        api.post_rows(dataset_id, "T", [{"c0": 1}])
    assert api.stored_rows(dataset_id, "T") == []
    assert api.state(dataset_id)["counters"].get("injected_drop") == 1


def test_accept_then_fail_stores_the_rows(api: Api, make_dataset: MakeDataset) -> None:
    """An "accept_then_fail" fault stores the rows and then loses the answer; the state says
    where the batch whose answer was lost lies, so duplicates can be traced to it."""
    dataset_id = make_dataset()
    api.post_rows(dataset_id, "T", [{"c0": 0}])
    api.set_faults(script=["accept_then_fail"])
    with pytest.raises(requests.exceptions.ConnectionError):
        api.post_rows(dataset_id, "T", [{"c0": 1}, {"c0": 2}])
    assert api.stored_rows(dataset_id, "T") == [{"c0": 0}, {"c0": 1}, {"c0": 2}]
    state = api.state(dataset_id)
    assert state["counters"]["injected_accept_then_fail"] == 1
    assert state["counters"]["rows_answer_lost"] == 2
    assert state["answersLost"] == [{"table": "T", "offset": 1, "count": 2}]


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [("throttle", 429, True), ("error_500", 500, False), ("error_503", 503, True)],
)
def test_scripted_error_answers(
    api: Api, make_dataset: MakeDataset, fault: str, status: int, retry_after: bool
) -> None:
    """Injected 429 and 503 carry Retry-After, an injected 500 does not; nothing is stored."""
    dataset_id = make_dataset()
    api.set_faults(script=[fault], retry_after=2)
    response = api.post_rows(dataset_id, "T", [{"c0": 1}])
    assert_error(response, status)
    assert response.headers.get("x-emulator-fault") == fault
    if retry_after:
        assert response.headers["Retry-After"] == "2"
    else:
        assert "Retry-After" not in response.headers
    assert api.stored_rows(dataset_id, "T") == []
    assert api.state(dataset_id)["counters"][f"injected_{fault}"] == 1
    # The script is used up: the next request is answered normally.
    assert api.post_rows(dataset_id, "T", [{"c0": 2}]).status_code == 200


def test_throttle_rate_throttles_some_posts(api: Api, make_dataset: MakeDataset) -> None:
    """With a throttle rate of 0.5, some posts get 429 and exactly the others are stored."""
    dataset_id = make_dataset()
    api.set_faults(throttle=0.5, seed=7)
    statuses = [api.post_rows(dataset_id, "T", [{"c0": i}]).status_code for i in range(40)]
    assert set(statuses) == {200, 429}, statuses
    accepted = [{"c0": i} for i, status in enumerate(statuses) if status == 200]
    assert api.stored_rows(dataset_id, "T") == accepted
    assert api.state(dataset_id)["counters"]["injected_throttle"] == statuses.count(429)


def test_latency_still_answers(api: Api, make_dataset: MakeDataset) -> None:
    """Injected latency delays the answer but the request still succeeds."""
    dataset_id = make_dataset()
    api.set_faults(latency_ms=300, latency_rate=1)
    assert api.post_rows(dataset_id, "T", [{"c0": 1}]).status_code == 200
    assert api.stored_rows(dataset_id, "T") == [{"c0": 1}]
    assert api.state(dataset_id)["counters"]["injected_latency"] == 1
