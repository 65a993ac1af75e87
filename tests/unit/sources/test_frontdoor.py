"""The Power BI surface's pure parts (shared/sources/frontdoor.py): paths, keys, the answer to
rows that cannot be stored. Its operations run against the emulator in
tests/integration/test_frontdoor.py."""

from __future__ import annotations

from typing import Any

import pytest

from shared.engine.schema import DatasetDefinition
from shared.errors import RowProblem
from shared.settings import Settings
from shared.sources.frontdoor import (
    _authenticate,
    _differences,
    _row_problems,
    parse_path,
)
from shared.sources.webhook import WebRequest


@pytest.mark.parametrize(
    ("path", "workspace", "parts"),
    [
        ("datasets", None, ("datasets",)),
        ("/datasets//abc/tables/", None, ("datasets", "abc", "tables")),
        ("groups", None, ("groups",)),
        ("groups/g-1/datasets", "g-1", ("datasets",)),
        (
            "GROUPS/g-1//datasets/d/tables/My%20Table/rows",
            "g-1",
            ("datasets", "d", "tables", "My Table", "rows"),
        ),
        ("", None, ()),
    ],
)
def test_paths_in_both_forms_with_empty_segments(
    path: str, workspace: str | None, parts: tuple[str, ...]
) -> None:
    parsed = parse_path(path)
    assert (parsed.workspace, parsed.parts) == (workspace, parts)


def _request(authorization: str | None) -> WebRequest:
    headers = {} if authorization is None else {"authorization": authorization}
    return WebRequest("GET", b"", headers)


@pytest.mark.parametrize(
    ("keys", "authorization", "allowed"),
    [
        ("k1,k2", "Bearer k2", True),
        ("k1,k2", "bearer k1", True),  # the scheme is case-insensitive, as HTTP says
        ("k1,k2", "Bearer k3", False),
        ("k1,k2", "Bearer k1k2", False),
        ("k1,k2", "Bearer ", False),
        ("k1,k2", "Basic k1", False),
        ("k1,k2", None, False),
        ("", "Bearer anything", False),  # no keys configured: closed
    ],
)
def test_only_a_configured_key_opens_the_surface(
    keys: str, authorization: str | None, allowed: bool
) -> None:
    settings = Settings.from_env({"FRONTDOOR_KEYS": keys})
    refused = _authenticate(settings, _request(authorization))
    if allowed:
        assert refused is None
    else:
        assert refused is not None and refused.status == 401
        assert refused.body["error"]["code"] == "Unauthorized"
        assert "k1" not in str(refused.body)  # a key is never echoed
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_rows_that_cannot_be_stored_are_named_row_and_column() -> None:
    answer = _row_problems(
        [RowProblem(1, "2 columns refused: A: x; B: y", "A"), RowProblem(4, "not an object")], 5
    )
    assert answer.status == 400
    error: dict[str, Any] = answer.body["error"]
    assert error["code"] == "BadRequest"
    assert error["message"] == "2 of 5 rows cannot be stored (rows 1, 4); nothing was sent"
    assert [d["target"] for d in error["details"]] == ["rows[1].A", "rows[4]"]


def test_a_second_create_matches_only_the_same_tables_and_columns() -> None:
    definition = DatasetDefinition.from_body(
        {"name": "D", "tables": [{"name": "T", "columns": [{"name": "a", "dataType": "int"}]}]}
    )
    same = [{"name": "T", "columns": [{"name": "a", "dataType": "Int64"}]}]
    retyped = [{"name": "T", "columns": [{"name": "a", "dataType": "Double"}]}]
    other_table = [{"name": "U", "columns": [{"name": "a", "dataType": "Int64"}]}]

    assert _differences(definition, same) == ""
    assert "has columns" in _differences(definition, retyped)
    assert "tables ['U'] here" in _differences(definition, other_table)
