"""``python -m shared migrate``'s pure parts: the routing file's merge (existing keys kept,
idempotent), the column comparison, the atomic write, and the one-line errors that stop it
before the Eventhouse is asked (the Eventhouse side: tests/integration/test_migrate.py)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from shared.cli.migrate import (
    MigrateError,
    compare_columns,
    merge_routing,
    prepare,
    run,
    write_atomically,
)
from shared.destinations.kusto_schema import KustoTable
from shared.settings import Settings

DEFINITION = {
    "name": "Shop",
    "tables": [
        {"name": "Orders", "columns": [{"name": "Id", "dataType": "Int64"}]},
        {"name": "Stock", "columns": [{"name": "Sku", "dataType": "String"}]},
    ],
}
EVENTHOUSE = {"EVENTHOUSE_URI": "https://h.kusto.windows.net", "EVENTHOUSE_DATABASE": "Db"}


def datasets(tmp_path: Path, routing: Any = None) -> Path:
    folder = tmp_path / "datasets"
    folder.mkdir()
    (folder / "Shop.json").write_text(json.dumps(DEFINITION))
    if routing is not None:
        text = routing if isinstance(routing, str) else json.dumps(routing)
        (folder / "Shop.destinations.json").write_text(text)
    return folder


def settings(folder: Path, **env: str) -> Settings:
    return Settings.from_env({"DATASETS_DIR": str(folder), **env})


def test_merge_keeps_every_other_key_and_is_idempotent() -> None:
    existing = {
        "default": ["powerbi"],
        "tables": {"Stock": ["eventhouse"]},
        "eventhouse": {"database": "Other", "table_prefix": "shop_"},
    }
    merged = merge_routing(existing, ["Orders"], ["powerbi", "eventhouse"])

    assert merged == {
        "default": ["powerbi"],
        "tables": {"Stock": ["eventhouse"], "Orders": ["powerbi", "eventhouse"]},
        "eventhouse": {"database": "Other", "table_prefix": "shop_"},
    }
    assert list(merged) == ["default", "tables", "eventhouse"]  # the file's order kept
    assert merge_routing(merged, ["Orders"], ["powerbi", "eventhouse"]) == merged
    assert existing["tables"] == {"Stock": ["eventhouse"]}  # not changed in place
    assert merge_routing(None, ["Orders", "Stock"], ["eventhouse"]) == {
        "tables": {"Orders": ["eventhouse"], "Stock": ["eventhouse"]}
    }


def test_columns_compare_by_kusto_type_whatever_the_spelling() -> None:
    target = KustoTable("T", (("Id", "long"), ("Price", "real"), ("Note", "string")))

    assert compare_columns(target, {"Id": "long", "Price": "double", "Note": "string"}) == ((), ())
    assert compare_columns(target, {"Id": "long"}) == (("Price", "Note"), ())
    added, conflicts = compare_columns(target, {"Id": "string", "Extra": "int"})
    assert added == ("Price", "Note")
    assert conflicts == ("column 'Id' is string in the KQL database, long in the definition",)


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "Shop.destinations.json"
    path.write_text("old")
    write_atomically(path, {"tables": {"Orders": ["eventhouse"]}})

    assert json.loads(path.read_text()) == {"tables": {"Orders": ["eventhouse"]}}
    assert [p.name for p in tmp_path.iterdir()] == ["Shop.destinations.json"]


def test_prepare_routes_the_chosen_tables_and_keeps_the_rest(tmp_path: Path) -> None:
    folder = datasets(tmp_path, {"eventhouse": {"table_prefix": "shop_"}})
    plan = prepare(settings(folder, **EVENTHOUSE), "Shop", ["Stock"], eventhouse_only=True)

    assert plan.database == "Db"
    assert [(s.table, s.kusto.name) for s in plan.tables] == [("Stock", "shop_Stock")]
    assert plan.after == {
        "eventhouse": {"table_prefix": "shop_"},
        "tables": {"Stock": ["eventhouse"]},
    }
    assert plan.destinations_before("Stock") == ["powerbi"] and plan.routing_changes


@pytest.mark.parametrize(
    ("env", "dataset", "tables", "routing", "expected"),
    [
        ({}, "Shop", None, None, "EVENTHOUSE_URI is not set"),
        (EVENTHOUSE, "Shoop", None, None, "no definition of dataset 'Shoop'"),
        (EVENTHOUSE, "Shop", ["Order"], None, "dataset 'Shop' has no table 'Order'"),
        (EVENTHOUSE, "Shop", None, "{not json", "Shop.destinations.json: cannot be read as JSON"),
        (EVENTHOUSE, "Shop", None, {"tables": {"Gone": ["powerbi"]}}, "tables.Gone"),
        (
            {"EVENTHOUSE_URI": "https://h.kusto.windows.net"},
            "Shop",
            None,
            None,
            "no database is named",
        ),
    ],
)
def test_prepare_refuses_with_a_message_naming_the_problem(
    tmp_path: Path,
    env: dict[str, str],
    dataset: str,
    tables: list[str] | None,
    routing: Any,
    expected: str,
) -> None:
    folder = datasets(tmp_path, routing)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(MigrateError) as raised:
        prepare(settings(folder, **env), dataset, tables, eventhouse_only=False)
    assert expected in str(raised.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_run_prints_one_line_and_exits_2_before_any_connection(tmp_path: Path) -> None:
    """The command's error path: exit 2, one line on stderr, no client ever built."""
    folder = datasets(tmp_path)
    args = argparse.Namespace(
        dataset="Shop", tables="Orders,Nope", eventhouse_only=False, dry_run=False, json=False
    )
    out, err = io.StringIO(), io.StringIO()

    def no_client(_: Settings) -> Any:
        raise AssertionError("no connection may be made")

    code = run(
        args,
        {"DATASETS_DIR": str(folder), **EVENTHOUSE},
        stdout=out,
        stderr=err,
        client_factory=no_client,
    )

    assert code == 2 and out.getvalue() == ""
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("migrate: dataset 'Shop' has no table 'Nope'")
