"""The 17 push operations, driven over HTTP in both URL forms and checked against the OpenAPI spec.

Every success answer is validated with ``assert_conforms`` against the response schema the spec
(``tests/vendor/powerbi/powerbi-swagger-push-subset.json``, vendored with its source) gives for
its operationId and status; ``test_zz_every_operation_checked_against_spec`` then checks that all
17 were covered.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import pytest
import requests
from jsonschema import Draft4Validator

from tests.emulator.conftest import REPO, WORKSPACE_ID, WORKSPACE_NAME, Api, int_table

SPEC_PATH = REPO / "tests" / "vendor" / "powerbi" / "powerbi-swagger-push-subset.json"
CHECKED: set[str] = set()  # operationIds whose success answers went through assert_conforms
GROUPS = pytest.mark.parametrize("group", [None, WORKSPACE_ID], ids=["myorg", "group"])


# -- helpers ----------------------------------------------------------------------------------


@functools.cache
def spec() -> dict[str, Any]:
    assert SPEC_PATH.is_file(), (
        f"OpenAPI spec not found at {SPEC_PATH}; the conformance tests need it"
    )
    loaded: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def spec_operations() -> dict[str, dict[str, Any]]:
    return {
        operation["operationId"]: operation
        for path in spec()["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }


def assert_conforms(operation_id: str, status: int, response: requests.Response) -> None:
    """Assert ``response`` is the spec's success answer ``status`` of ``operation_id``."""
    assert response.status_code == status, f"{operation_id}: {response.status_code} {response.text}"
    operation = spec_operations().get(operation_id)
    assert operation is not None, f"operationId {operation_id} is not in the spec"
    answer = operation["responses"].get(str(status))
    assert answer is not None, f"{operation_id}: the spec lists no status {status}"
    if "schema" in answer:
        schema = {"$ref": answer["schema"]["$ref"], "definitions": spec()["definitions"]}
        errors = [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in Draft4Validator(schema).iter_errors(response.json())
        ]
        assert not errors, f"{operation_id} {status} breaks the spec schema: {errors}"
    else:
        assert response.content == b"", f"{operation_id} {status}: body must be empty"
    CHECKED.add(operation_id)


def op(name: str, group: str | None) -> str:
    """The operationId of push operation ``name`` in the My-workspace or the group form."""
    return f"Datasets_{name}{'InGroup' if group else ''}"


def call(api: Api, method: str, url: str, **kwargs: Any) -> requests.Response:
    """Send a request; every answer, success or error, must carry a RequestId header."""
    response = api.request(method, url, **kwargs)
    assert response.headers.get("RequestId"), f"{method} {url}: no RequestId header"
    return response


def assert_error(response: requests.Response, status: int, code: str, message: str = "") -> None:
    """Assert an error answer in the service's shape ``{"error": {"code", "message"}}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert isinstance(body["error"].get("code"), str), body
    assert isinstance(body["error"].get("message"), str), body
    assert body["error"]["code"] == code, body
    if message:
        assert body["error"]["message"] == message, body


def create(
    api: Api,
    group: str | None,
    tables: list[dict[str, Any]] | None = None,
    retention: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Create a dataset through the API, check the 201 against the spec, return its body."""
    body: dict[str, Any] = {
        "name": f"ops-{uuid.uuid4().hex[:8]}",
        "tables": tables or [int_table()],
    }
    if mode:
        body["defaultMode"] = mode
    params = {"defaultRetentionPolicy": retention} if retention else None
    response = call(api, "POST", f"{api.prefix(group)}/datasets", json=body, params=params)
    assert_conforms(op("PostDataset", group), 201, response)
    created: dict[str, Any] = response.json()
    assert created["name"] == body["name"]
    return created


def table_url(api: Api, group: str | None, dataset_id: str, table: str) -> str:
    return f"{api.prefix(group)}/datasets/{dataset_id}/tables/{table}"


# -- create dataset ---------------------------------------------------------------------------


@GROUPS
@pytest.mark.parametrize("retention", [None, "None", "basicFIFO"], ids=["absent", "None", "FIFO"])
def test_create_dataset_returns_its_retention_policy(
    api: Api, group: str | None, retention: str | None
) -> None:
    """Create Dataset answers 201 with the dataset and the retention policy it was given."""
    created = create(api, group, retention=retention)
    assert created["defaultRetentionPolicy"] == (retention or "None")
    assert created["addRowsAPIEnabled"] is True
    assert api.state(created["id"])["retention"] == (retention or "None")


@GROUPS
@pytest.mark.parametrize("mode", ["Push", "PushStreaming"])
def test_create_dataset_in_push_modes(api: Api, group: str | None, mode: str) -> None:
    """Push and PushStreaming datasets are created and accept rows."""
    created = create(api, group, mode=mode)
    assert api.state(created["id"])["mode"] == mode
    response = call(
        api, "POST", api.rows_url(created["id"], "T", group), json={"rows": [{"c0": 1}]}
    )
    assert_conforms(op("PostRows", group), 200, response)


@GROUPS
def test_create_streaming_dataset_is_refused(api: Api, group: str | None) -> None:
    """defaultMode Streaming is refused with 400 FeatureDeprecatedError and creates nothing."""
    name = f"stream-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "defaultMode": "Streaming", "tables": [int_table()]}
    response = call(api, "POST", f"{api.prefix(group)}/datasets", json=body)
    assert_error(response, 400, "FeatureDeprecatedError")
    listed = call(api, "GET", f"{api.prefix(group)}/datasets")
    assert_conforms(op("GetDatasets", group), 200, listed)
    assert name not in [d["name"] for d in listed.json()["value"]]


@GROUPS
def test_asazure_dataset_is_not_a_push_dataset(api: Api, group: str | None) -> None:
    """An AsAzure dataset exists, but its rows and tables answer 404 ItemNotFound."""
    # GIVEN a dataset created in AsAzure mode
    created = create(api, group, mode="AsAzure")
    dataset_id = created["id"]
    assert created["addRowsAPIEnabled"] is False
    not_push = f"Dataset {dataset_id} is not Push API dataset."
    # WHEN rows are posted / tables listed THEN the service says it is not a push dataset
    posted = call(api, "POST", api.rows_url(dataset_id, "T", group), json={"rows": [{"c0": 1}]})
    assert_error(posted, 404, "ItemNotFound", not_push)
    tables = call(api, "GET", f"{api.prefix(group)}/datasets/{dataset_id}/tables")
    assert_error(tables, 404, "ItemNotFound", not_push)


# -- get datasets, get dataset, delete dataset ------------------------------------------------


def test_get_datasets_lists_only_that_workspace(api: Api) -> None:
    """Get Datasets lists the datasets of the addressed workspace and no other."""
    mine = create(api, None)["id"]
    theirs = create(api, WORKSPACE_ID)["id"]
    my_list = call(api, "GET", f"{api.prefix(None)}/datasets")
    assert_conforms(op("GetDatasets", None), 200, my_list)
    group_list = call(api, "GET", f"{api.prefix(WORKSPACE_ID)}/datasets")
    assert_conforms(op("GetDatasets", WORKSPACE_ID), 200, group_list)
    my_ids = {d["id"] for d in my_list.json()["value"]}
    group_ids = {d["id"] for d in group_list.json()["value"]}
    assert mine in my_ids and mine not in group_ids
    assert theirs in group_ids and theirs not in my_ids


@GROUPS
def test_get_dataset_returns_the_dataset(api: Api, group: str | None) -> None:
    """Get Dataset returns the dataset that was created, addressed by its id."""
    created = create(api, group)
    response = call(api, "GET", f"{api.prefix(group)}/datasets/{created['id']}")
    assert_conforms(op("GetDataset", group), 200, response)
    assert response.json()["id"] == created["id"]
    assert response.json()["name"] == created["name"]


@GROUPS
def test_delete_dataset_then_get_is_404(api: Api, group: str | None) -> None:
    """A deleted dataset is gone: Get Dataset answers 404 PowerBIEntityNotFound."""
    dataset_url = f"{api.prefix(group)}/datasets/{create(api, group)['id']}"
    assert_conforms(op("DeleteDataset", group), 200, call(api, "DELETE", dataset_url))
    assert_error(call(api, "GET", dataset_url), 404, "PowerBIEntityNotFound")


def test_unknown_group_is_404(api: Api) -> None:
    """A group id that is no workspace answers 404 PowerBIEntityNotFound."""
    prefix = api.prefix(str(uuid.uuid4()))
    assert_error(call(api, "GET", f"{prefix}/datasets"), 404, "PowerBIEntityNotFound")
    body = {"name": "nowhere", "tables": [int_table()]}
    assert_error(call(api, "POST", f"{prefix}/datasets", json=body), 404, "PowerBIEntityNotFound")


@GROUPS
def test_dataset_of_another_workspace_is_404(api: Api, group: str | None) -> None:
    """A dataset addressed through a workspace it does not belong to answers 404."""
    # GIVEN a dataset in one workspace
    dataset_id = create(api, group)["id"]
    other = None if group else WORKSPACE_ID
    # WHEN it is addressed through the other workspace THEN it is not found
    response = call(api, "GET", f"{api.prefix(other)}/datasets/{dataset_id}")
    assert_error(response, 404, "PowerBIEntityNotFound")
    posted = call(api, "POST", api.rows_url(dataset_id, "T", other), json={"rows": [{"c0": 1}]})
    assert_error(posted, 404, "PowerBIEntityNotFound")
    assert api.stored_rows(dataset_id, "T") == []


# -- tables -----------------------------------------------------------------------------------


@GROUPS
def test_get_tables_lists_names_and_columns(api: Api, group: str | None) -> None:
    """Get Tables lists every table with its columns, in creation order."""
    dataset_id = create(api, group, tables=[int_table("A", 2), int_table("B", 1)])["id"]
    response = call(api, "GET", f"{api.prefix(group)}/datasets/{dataset_id}/tables")
    assert_conforms(op("GetTables", group), 200, response)
    tables = {t["name"]: [c["name"] for c in t["columns"]] for t in response.json()["value"]}
    assert tables == {"A": ["c0", "c1"], "B": ["c0"]}


@GROUPS
def test_put_table_adds_a_column_that_rows_may_use(api: Api, group: str | None) -> None:
    """Put Table replaces a table's columns; rows posted afterwards may use the new column."""
    # GIVEN a table T(c0)
    dataset_id = create(api, group)["id"]
    # WHEN Put Table adds a String column
    new = {
        "name": "T",
        "columns": [*int_table()["columns"], {"name": "note", "dataType": "String"}],
    }
    response = call(api, "PUT", table_url(api, group, dataset_id, "T"), json=new)
    assert_conforms(op("PutTable", group), 200, response)
    assert [c["name"] for c in response.json()["columns"]] == ["c0", "note"]
    # THEN Get Tables shows it and a row may fill it
    tables = call(api, "GET", f"{api.prefix(group)}/datasets/{dataset_id}/tables")
    assert_conforms(op("GetTables", group), 200, tables)
    assert [c["name"] for c in tables.json()["value"][0]["columns"]] == ["c0", "note"]
    row = {"c0": 7, "note": "added"}
    posted = call(api, "POST", api.rows_url(dataset_id, "T", group), json={"rows": [row]})
    assert_conforms(op("PostRows", group), 200, posted)
    assert api.stored_rows(dataset_id, "T") == [row]


@GROUPS
def test_put_table_never_creates_a_table(api: Api, group: str | None) -> None:
    """Put Table on a table the dataset lacks answers 404 ItemNotFound and creates nothing."""
    dataset_id = create(api, group)["id"]
    response = call(api, "PUT", table_url(api, group, dataset_id, "X"), json=int_table("X"))
    assert_error(response, 404, "ItemNotFound", f"Table 'X' not found in dataset '{dataset_id}'")
    tables = call(api, "GET", f"{api.prefix(group)}/datasets/{dataset_id}/tables")
    assert_conforms(op("GetTables", group), 200, tables)
    assert [t["name"] for t in tables.json()["value"]] == ["T"]


@GROUPS
def test_put_table_body_name_must_match_url(api: Api, group: str | None) -> None:
    """Put Table with a body name other than the URL's table answers 400."""
    dataset_id = create(api, group, tables=[int_table("T"), int_table("U")])["id"]
    response = call(api, "PUT", table_url(api, group, dataset_id, "T"), json=int_table("U", 2))
    assert_error(response, 400, "BadRequest")


@GROUPS
def test_table_name_in_path_is_case_sensitive(api: Api, group: str | None) -> None:
    """A table name in the path with the wrong case answers 404 ItemNotFound."""
    dataset_id = create(api, group, tables=[int_table("Sales")])["id"]
    rows = {"rows": [{"c0": 1}]}
    for method, url, body in [
        ("POST", api.rows_url(dataset_id, "sales", group), rows),
        ("DELETE", api.rows_url(dataset_id, "SALES", group), None),
        ("PUT", table_url(api, group, dataset_id, "sales"), int_table("sales")),
    ]:
        assert_error(call(api, method, url, json=body), 404, "ItemNotFound")
    posted = call(api, "POST", api.rows_url(dataset_id, "Sales", group), json=rows)
    assert_conforms(op("PostRows", group), 200, posted)


# -- rows -------------------------------------------------------------------------------------


@GROUPS
def test_post_rows_stores_rows_in_order(api: Api, group: str | None) -> None:
    """Post Rows answers 200 with an empty body and the rows are stored in arrival order."""
    dataset_id = create(api, group, tables=[int_table("T", 2)])["id"]
    first = [{"c0": i, "c1": -i} for i in range(3)]
    second = [{"c0": i, "c1": None} for i in range(3, 5)]
    for batch in (first, second):
        posted = call(api, "POST", api.rows_url(dataset_id, "T", group), json={"rows": batch})
        assert_conforms(op("PostRows", group), 200, posted)
    assert api.stored_rows(dataset_id, "T") == first + second


@GROUPS
def test_delete_rows_removes_all_rows(api: Api, group: str | None) -> None:
    """Delete Rows removes every row of the table, and the table still takes new rows."""
    # GIVEN a table with rows
    dataset_id = create(api, group)["id"]
    url = api.rows_url(dataset_id, "T", group)
    posted = call(api, "POST", url, json={"rows": [{"c0": i} for i in range(5)]})
    assert_conforms(op("PostRows", group), 200, posted)
    # WHEN its rows are deleted
    assert_conforms(op("DeleteRows", group), 200, call(api, "DELETE", url))
    # THEN none remain
    assert api.stored_rows(dataset_id, "T") == []
    assert api.state(dataset_id)["tables"][0]["rows"] == 0
    assert_conforms(op("PostRows", group), 200, call(api, "POST", url, json={"rows": [{"c0": 9}]}))
    assert api.stored_rows(dataset_id, "T") == [{"c0": 9}]


# -- get groups -------------------------------------------------------------------------------


def get_groups(api: Api, **params: str) -> list[dict[str, Any]]:
    response = call(api, "GET", f"{api.prefix(None)}/groups", params=params)
    assert_conforms("Groups_GetGroups", 200, response)
    groups: list[dict[str, Any]] = response.json()["value"]
    return groups


def test_get_groups_filters_by_name(api: Api) -> None:
    """Get Groups honours $filter with name eq '...' and contains(name,'...')."""
    exact = get_groups(api, **{"$filter": f"name eq '{WORKSPACE_NAME}'"})
    assert [(g["id"], g["name"]) for g in exact] == [(WORKSPACE_ID, WORKSPACE_NAME)]
    containing = get_groups(api, **{"$filter": "contains(name,'sales')"})
    assert WORKSPACE_ID in [g["id"] for g in containing]
    assert all("sales" in g["name"].lower() for g in containing)
    assert get_groups(api, **{"$filter": f"name eq 'no such {uuid.uuid4().hex}'"}) == []


def test_get_groups_pages_with_top_and_skip(api: Api) -> None:
    """Get Groups returns $top groups after skipping $skip, from the same ordered list."""
    # GIVEN at least two workspaces (one added through the emulator's admin API)
    added = api.session.post(
        f"{api.emulator.base}/_emulator/workspaces", json={"name": f"Ops {uuid.uuid4().hex[:8]}"}
    )
    assert added.status_code == 201, added.text
    everything = get_groups(api)
    assert len(everything) >= 2
    # WHEN pages are asked for THEN they are slices of the full list
    assert get_groups(api, **{"$top": "1"}) == everything[:1]
    assert get_groups(api, **{"$skip": "1"}) == everything[1:]
    assert get_groups(api, **{"$top": "1", "$skip": "1"}) == everything[1:2]
    assert get_groups(api, **{"$top": "0"}) == []


@pytest.mark.parametrize(
    "params",
    [{"$filter": "name gt 'Sales'"}, {"$top": "-1"}, {"$skip": "x"}],
    ids=["bad-filter", "negative-top", "non-numeric-skip"],
)
def test_get_groups_rejects_bad_queries(api: Api, params: dict[str, str]) -> None:
    """Get Groups answers 400 BadRequest to an unreadable $filter and a bad $top or $skip."""
    response = call(api, "GET", f"{api.prefix(None)}/groups", params=params)
    assert_error(response, 400, "BadRequest")


# -- errors and headers -----------------------------------------------------------------------


def test_errors_have_the_service_shape_and_a_request_id(api: Api) -> None:
    """Unknown routes, wrong methods and missing tokens get the error shape and a RequestId."""
    unknown = call(api, "GET", f"{api.prefix(None)}/nothing-here")
    assert_error(unknown, 404, "NotFound")
    wrong_method = call(api, "PATCH", f"{api.prefix(None)}/datasets")
    assert_error(wrong_method, 405, "MethodNotAllowed")
    with requests.Session() as session:
        session.trust_env = False
        anonymous = session.get(f"{api.prefix(None)}/datasets", timeout=60)
    assert anonymous.headers.get("RequestId")
    assert_error(anonymous, 401, "PowerBINotAuthorizedException")
    ids = {r.headers["RequestId"] for r in (unknown, wrong_method, anonymous)}
    assert len(ids) == 3, "every answer has its own RequestId"


# -- must stay last: it checks what the tests above covered -----------------------------------


def test_zz_every_operation_checked_against_spec() -> None:
    """Every one of the spec's 17 operationIds had a success answer checked by assert_conforms."""
    operations = set(spec_operations())
    assert len(operations) == 17, sorted(operations)
    assert operations - CHECKED == set(), "operations never checked against the spec"
    assert operations == CHECKED
