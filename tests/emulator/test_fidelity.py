"""Where the emulator once parted from Power BI: ``$filter`` literals, the data type names Get
Tables answers, empty path segments, and the sequence-number header (not emulated, on purpose).

Every success answer still goes through the spec's schema (``assert_conforms``)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest

from tests.emulator.conftest import WORKSPACE_ID, Api
from tests.emulator.test_operations import (
    GROUPS,
    assert_conforms,
    assert_error,
    call,
    create,
    get_groups,
    op,
    table_url,
)

# -- $filter: OData string literals -------------------------------------------------------------


def add_workspace(api: Api, name: str) -> str:
    added = api.session.post(f"{api.emulator.base}/_emulator/workspaces", json={"name": name})
    assert added.status_code == 201, added.text
    workspace_id: str = added.json()["id"]
    return workspace_id


def quoted(text: str) -> str:
    """``text`` as an OData string literal: in single quotes, each quote doubled."""
    return "'" + text.replace("'", "''") + "'"


def names(groups: list[dict[str, Any]]) -> list[str]:
    return [g["name"] for g in groups]


def test_filter_keywords_inside_a_literal_are_text(api: Api) -> None:
    """``name eq 'Sales and Marketing'`` is one comparison: ``and`` / ``or`` inside quotes do
    not split the expression (they gave 400 before)."""
    tag = uuid.uuid4().hex[:8]
    sales = add_workspace(api, f"Sales and Marketing {tag}")
    research = add_workspace(api, f"Research or Development {tag}")
    found = get_groups(api, **{"$filter": f"name eq 'Sales and Marketing {tag}'"})
    assert [g["id"] for g in found] == [sales]
    found = get_groups(api, **{"$filter": f"name eq 'Research or Development {tag}'"})
    assert [g["id"] for g in found] == [research]
    # both literals in one expression, joined by a real "or"
    either = get_groups(
        api,
        **{
            "$filter": f"name eq 'Sales and Marketing {tag}' or "
            f"contains(name, ' or Development {tag}')"
        },
    )
    assert sorted(g["id"] for g in either) == sorted([sales, research])


def test_filter_doubled_quote_is_one_quote(api: Api) -> None:
    """``''`` inside a literal stands for one quote, also next to a keyword and at the ends."""
    tag = uuid.uuid4().hex[:8]
    odd = f"'O'Brien's and Sons' {tag}"
    workspace = add_workspace(api, odd)
    assert [g["id"] for g in get_groups(api, **{"$filter": f"name eq {quoted(odd)}"})] == [
        workspace
    ]
    needle = quoted(f"'s and Sons' {tag}")
    inside = get_groups(api, **{"$filter": f"contains(name,{needle})"})
    assert names(inside) == [odd]


def test_filter_and_binds_tighter_than_or_and_parentheses_group(api: Api) -> None:
    """OData precedence: ``a or b and c`` is ``a or (b and c)``; parentheses override it."""
    tag = uuid.uuid4().hex[:8]
    alpha = add_workspace(api, f"alpha {tag}")
    beta = add_workspace(api, f"beta {tag}")
    a, b = f"name eq 'alpha {tag}'", f"contains(name,'beta {tag}')"
    never = "name eq 'no such workspace'"
    loose = get_groups(api, **{"$filter": f"{a} or {b} and {never}"})
    assert [g["id"] for g in loose] == [alpha]
    grouped = get_groups(api, **{"$filter": f"({a} or {b}) and {never}"})
    assert grouped == []
    both = get_groups(api, **{"$filter": f"({a} or {b}) and contains(name,'{tag}')"})
    assert sorted(g["id"] for g in both) == sorted([alpha, beta])


@pytest.mark.parametrize(
    "expression",
    [
        "name eq 'Sales",  # not closed
        "name eq 'it''s",  # not closed after a doubled quote
        "name eq 'a' and",  # nothing after and
        "(name eq 'a'",  # unbalanced
        "name eq 'a' 'b'",  # two literals
        "description eq 'a'",  # not a supported property
        "name ne 'a'",  # not a supported operator
    ],
)
def test_filter_that_cannot_be_read_is_400(api: Api, expression: str) -> None:
    """An expression outside the subset, or not well formed, is refused, not half-applied."""
    response = call(api, "GET", f"{api.prefix(None)}/groups", params={"$filter": expression})
    assert_error(response, 400, "BadRequest")


# -- data types: the service's own names ----------------------------------------------------------

#: How a client may spell each type (Microsoft's samples use several) -> what Power BI answers.
SPELLINGS = {
    "int": "Int64",
    "INT64": "Int64",
    "string": "String",
    "STRING": "String",
    "bool": "Boolean",
    "boolean": "Boolean",
    "datetime": "DateTime",
    "dateTime": "DateTime",
    "double": "Double",
    "DOUBLE": "Double",
    "decimal": "Decimal",
}


def spelled_table(name: str = "T") -> dict[str, Any]:
    return {
        "name": name,
        "columns": [
            {"name": f"c{i}", "dataType": spelling, "formatString": "0"}
            for i, spelling in enumerate(SPELLINGS)
        ],
    }


def answered_types(table: dict[str, Any]) -> dict[str, str]:
    return {column["name"]: column["dataType"] for column in table["columns"]}


EXPECTED_TYPES = {f"c{i}": name for i, name in enumerate(SPELLINGS.values())}


@GROUPS
def test_get_tables_answers_normalised_type_names(api: Api, group: str | None) -> None:
    """Get Tables answers Int64 / String / Boolean / DateTime / Double / Decimal whatever the
    case or alias the table was created with; the column's other properties are kept."""
    dataset_id = create(api, group, tables=[spelled_table()])["id"]
    response = call(api, "GET", f"{api.prefix(group)}/datasets/{dataset_id}/tables")
    assert_conforms(op("GetTables", group), 200, response)
    (table,) = response.json()["value"]
    assert answered_types(table) == EXPECTED_TYPES
    assert {column["formatString"] for column in table["columns"]} == {"0"}


@GROUPS
def test_put_table_answers_normalised_type_names(api: Api, group: str | None) -> None:
    """Put Table's answer, and Get Tables after it, use the normalised names too."""
    dataset_id = create(api, group)["id"]
    body = spelled_table()
    put = call(api, "PUT", table_url(api, group, dataset_id, "T"), json=body)
    assert_conforms(op("PutTable", group), 200, put)
    assert answered_types(put.json()) == EXPECTED_TYPES
    listed = call(api, "GET", f"{api.prefix(group)}/datasets/{dataset_id}/tables")
    assert answered_types(listed.json()["value"][0]) == EXPECTED_TYPES


# -- empty path segments ------------------------------------------------------------------------


def doubled(url: str, at: str) -> str:
    """``url`` with the slash before ``at`` doubled (``myorg/datasets`` -> ``myorg//datasets``)."""
    assert f"/{at}" in url, (url, at)
    return url.replace(f"/{at}", f"//{at}", 1)


@GROUPS
def test_every_push_route_tolerates_empty_segments(api: Api, group: str | None) -> None:
    """Each push operation, in both URL forms, answers as usual with ``//`` in its path (as
    one public client has always sent ``.../myorg//datasets...``) and with a trailing ``/``."""
    prefix = api.prefix(group)
    body = {
        "name": f"slashes-{uuid.uuid4().hex[:8]}",
        "tables": [{"name": "T", "columns": [{"name": "c0", "dataType": "Int64"}]}],
    }
    created = call(api, "POST", doubled(f"{prefix}/datasets", "datasets"), json=body)
    assert_conforms(op("PostDataset", group), 201, created)
    dataset_id = created.json()["id"]
    dataset = f"{prefix}/datasets/{dataset_id}"
    listed = call(api, "GET", doubled(f"{prefix}/datasets", "datasets") + "/")
    assert_conforms(op("GetDatasets", group), 200, listed)
    assert dataset_id in [d["id"] for d in listed.json()["value"]]
    got = call(api, "GET", doubled(dataset, dataset_id))
    assert_conforms(op("GetDataset", group), 200, got)
    assert got.json()["id"] == dataset_id
    tables = call(api, "GET", doubled(f"{dataset}/tables", "tables"))
    assert_conforms(op("GetTables", group), 200, tables)
    put = call(
        api,
        "PUT",
        doubled(f"{dataset}/tables/T", "T"),
        json={"name": "T", "columns": [{"name": "c0", "dataType": "Int64"}]},
    )
    assert_conforms(op("PutTable", group), 200, put)
    rows_url = f"{dataset}/tables/T/rows"
    posted = call(
        api,
        "POST",
        doubled(doubled(rows_url, "rows"), "tables"),
        json={"rows": [{"c0": 1}, {"c0": 2}]},
    )
    assert_conforms(op("PostRows", group), 200, posted)
    assert api.state(dataset_id)["tables"][0]["rows"] == 2
    deleted_rows = call(api, "DELETE", doubled(rows_url, "rows"))
    assert_conforms(op("DeleteRows", group), 200, deleted_rows)
    assert api.state(dataset_id)["tables"][0]["rows"] == 0
    deleted = call(api, "DELETE", doubled(dataset, "datasets"))
    assert_conforms(op("DeleteDataset", group), 200, deleted)
    assert call(api, "GET", dataset).status_code == 404


def test_groups_and_the_group_segment_tolerate_empty_segments(api: Api) -> None:
    """``myorg//groups`` (with its query string kept) and ``groups//{id}/datasets`` answer."""
    groups = call(
        api,
        "GET",
        f"{api.emulator.base}/v1.0/myorg//groups",
        params={"$filter": f"id eq '{WORKSPACE_ID}'"},
    )
    assert_conforms("Groups_GetGroups", 200, groups)
    assert [g["id"] for g in groups.json()["value"]] == [WORKSPACE_ID]
    listed = call(api, "GET", f"{api.emulator.api}/groups//{WORKSPACE_ID}///datasets")
    assert_conforms(op("GetDatasets", WORKSPACE_ID), 200, listed)


def test_empty_segments_change_nothing_else(api: Api) -> None:
    """A path with ``//`` still needs a token, an unknown one is still 404 and a wrong method
    still 405, in the service's error shape."""
    doubled_url = f"{api.emulator.base}/v1.0/myorg//datasets"
    anonymous = api.session.get(doubled_url, headers={"Authorization": ""}, timeout=10)
    assert anonymous.status_code in (401, 403), anonymous.text
    unknown = call(api, "GET", f"{api.emulator.base}/v1.0/myorg//no-such-thing")
    assert_error(unknown, 404, "NotFound")
    wrong = call(api, "PATCH", doubled_url, json={})
    assert_error(wrong, 405, "MethodNotAllowed")


# -- sequence numbers: not emulated, and saying so --------------------------------------------

SEQUENCE = "X-PowerBI-PushData-SequenceNumber"


@GROUPS
def test_a_repeated_sequence_number_is_stored_again_and_flagged(
    api: Api, group: str | None
) -> None:
    """The emulator does not deduplicate on the preview header (README, "What it does not
    emulate"): a batch re-sent with the same or an older number is stored again, answered 200
    as the spec says, flagged with ``x-emulator-ignored`` and counted, so a client that relies
    on the header sees in the emulator that it is not relied upon."""
    dataset_id = create(api, group)["id"]
    url = api.rows_url(dataset_id, "T", group)
    for number in ("7", "7", "3"):
        response = call(api, "POST", url, json={"rows": [{"c0": 1}]}, headers={SEQUENCE: number})
        assert_conforms(op("PostRows", group), 200, response)
        assert response.headers.get("x-emulator-ignored") == SEQUENCE
    plain = call(api, "POST", url, json={"rows": [{"c0": 2}]})
    assert_conforms(op("PostRows", group), 200, plain)
    assert "x-emulator-ignored" not in plain.headers
    state = api.state(dataset_id)
    assert state["tables"][0]["rows"] == 4
    assert state["counters"]["sequence_numbers_ignored"] == 3
    assert state["counters"]["posts_accepted"] == 4


def test_the_sequence_numbers_route_is_not_served(api: Api) -> None:
    """``GET .../tables/{table}/sequenceNumbers`` (seen only in third-party clients) is not
    in the spec and not served: 404 in the service's error shape."""
    dataset_id = create(api, None)["id"]
    response = call(
        api, "GET", f"{api.prefix(None)}/datasets/{dataset_id}/tables/T/sequenceNumbers"
    )
    assert_error(response, 404, "NotFound")


def test_empty_segments_keep_an_encoded_table_name(api: Api) -> None:
    """The path is collapsed as sent, so a table name with a space, ``#`` or a non-ASCII
    letter (percent-encoded) still names its table."""
    name = "Sales #1 é"
    dataset_id = create(api, None, tables=[spelled_table(name)])["id"]
    url = f"{api.prefix(None)}//datasets/{dataset_id}/tables/{quote(name)}//rows"
    response = call(api, "POST", url, json={"rows": [{"c0": 1}]})
    assert_conforms(op("PostRows", None), 200, response)
    assert api.state(dataset_id)["tables"][0]["rows"] == 1
