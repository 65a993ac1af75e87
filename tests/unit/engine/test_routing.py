"""Routing files: destinations per table, read and checked (shared/engine/routing.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import Target
from shared.engine.routing import (
    DEFAULT,
    EventhouseRoute,
    RoutingError,
    load_routing,
    parse_routing,
    read_routing,
)
from shared.engine.schema import load_definitions
from shared.errors import ConfigError
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[3]
SALES = load_definitions(REPO / "datasets")["SalesMarketing"]
WITH_EVENTHOUSE = Settings.from_env(
    {"EVENTHOUSE_URI": "https://example.kusto.windows.net", "EVENTHOUSE_DATABASE": "Default"}
)
WITHOUT = Settings.from_env({})
WHERE = "datasets/SalesMarketing.destinations.json"


def parse(body: Any, settings: Settings = WITH_EVENTHOUSE) -> Any:
    return parse_routing(body, WHERE, SALES, settings)


def refused(body: Any, settings: Settings = WITH_EVENTHOUSE) -> RoutingError:
    with pytest.raises(RoutingError) as caught:
        parse(body, settings)
    assert isinstance(caught.value, ConfigError)  # callers that catch settings errors see it
    assert WHERE in str(caught.value)
    return caught.value


def test_the_brief_example_routes_one_table_to_both() -> None:
    routing = parse(
        {
            "default": ["powerbi"],
            "tables": {"Product": ["powerbi", "eventhouse"]},
            "eventhouse": {"database": "Sales"},
        }
    )
    assert routing.destinations("Product") == ("powerbi", "eventhouse")
    assert routing.destinations("Other") == ("powerbi",)  # the default
    assert routing.eventhouse == EventhouseRoute("Sales", "")
    assert routing.source == WHERE


def test_destinations_come_in_one_order_whatever_the_file_says() -> None:
    routing = parse({"default": ["eventhouse", "powerbi"]})
    assert routing.destinations("Product") == ("powerbi", "eventhouse")


def test_the_database_defaults_to_the_setting_and_the_prefix_applies() -> None:
    routing = parse({"default": ["eventhouse"], "eventhouse": {"table_prefix": "pbi_"}})
    assert routing.eventhouse is not None
    assert routing.eventhouse.database == "Default"
    assert routing.eventhouse.table("Product") == "pbi_Product"


def test_powerbi_only_needs_no_eventhouse_settings() -> None:
    routing = parse({"tables": {"Product": ["powerbi"]}}, WITHOUT)
    assert routing.destinations("Product") == DEFAULT
    assert routing.eventhouse is None


def test_an_unknown_destination_is_named_with_its_key() -> None:
    error = refused({"tables": {"Product": ["powerbi", "kafka"]}})
    assert error.key == "tables.Product" and "'kafka'" in str(error)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"default": []}, "default"),
        ({"default": "powerbi"}, "default"),
        ({"default": ["powerbi", "powerbi"]}, "default"),
        ({"tables": []}, "tables"),
        ({"routes": {}}, "routes"),
        ({"eventhouse": {"cluster": "x"}}, "eventhouse.cluster"),
        ({"eventhouse": {"database": 5}}, "eventhouse.database"),
        ([], "(file)"),
    ],
)
def test_malformed_entries_are_named(body: Any, key: str) -> None:
    assert refused(body).key == key


def test_a_table_the_definition_lacks_is_named() -> None:
    error = refused({"tables": {"Products": ["powerbi"]}})
    assert error.key == "tables.Products" and "Product" in str(error)


def test_eventhouse_without_its_uri_names_the_file_key_and_setting() -> None:
    error = refused({"tables": {"Product": ["eventhouse"]}}, WITHOUT)
    assert error.key == "tables.Product" and "EVENTHOUSE_URI" in str(error)


def test_eventhouse_without_a_database_anywhere_is_named() -> None:
    settings = Settings.from_env({"EVENTHOUSE_URI": "https://example.kusto.windows.net"})
    error = refused({"default": ["eventhouse"]}, settings)
    assert error.key == "eventhouse.database" and "EVENTHOUSE_DATABASE" in str(error)


def test_a_file_without_a_definition_is_refused() -> None:
    with pytest.raises(RoutingError) as caught:
        parse_routing({"default": ["powerbi"]}, "datasets/Nope.destinations.json", None, WITHOUT)
    assert "no dataset definition" in str(caught.value)


def test_load_keeps_a_broken_file_apart_and_definitions_ignore_routing_files(
    tmp_path: Path,
) -> None:
    shutil.copy(REPO / "datasets" / "SalesMarketing.json", tmp_path / "SalesMarketing.json")
    (tmp_path / "SalesMarketing.destinations.json").write_text(
        json.dumps({"default": ["powerbi", "eventhouse"]}), encoding="utf-8"
    )
    (tmp_path / "Other.destinations.json").write_text("{not json", encoding="utf-8")
    definitions = load_definitions(tmp_path)
    assert list(definitions) == ["SalesMarketing"]  # the routing files are not definitions
    found = load_routing(tmp_path, definitions, WITH_EVENTHOUSE)
    assert isinstance(found["Other"], RoutingError) and found["Other"].key == "(file)"
    sales = found["SalesMarketing"]
    assert not isinstance(sales, RoutingError)
    assert sales.destinations("Product") == ("powerbi", "eventhouse")
    assert read_routing(tmp_path / "SalesMarketing.destinations.json", SALES, WITH_EVENTHOUSE) == (
        sales
    )


def test_no_directory_means_no_routing(tmp_path: Path) -> None:
    assert load_routing(tmp_path / "missing", {}, WITHOUT) == {}


def test_the_runtime_builds_an_eventhouse_client_only_for_a_routed_table(tmp_path: Path) -> None:
    from shared.runtime import build_ingestor

    shutil.copy(REPO / "datasets" / "SalesMarketing.json", tmp_path / "SalesMarketing.json")
    env = {
        "DATASETS_DIR": str(tmp_path),
        "EVENTHOUSE_URI": "https://example.kusto.windows.net",
        "EVENTHOUSE_DATABASE": "Sales",
        "PACING": "local",
    }
    alone = build_ingestor(Settings.from_env(env), env, dead_letters=False)
    assert alone.eventhouse is None and alone.routing == {}
    assert alone.destinations_of(Target("SalesMarketing", "Product")) == ("powerbi",)
    (tmp_path / "SalesMarketing.destinations.json").write_text(
        json.dumps({"tables": {"Product": ["powerbi", "eventhouse"]}}), encoding="utf-8"
    )
    routed = build_ingestor(Settings.from_env(env), env, dead_letters=False)
    assert routed.eventhouse is not None
    assert routed.destinations_of(Target("SalesMarketing", "Product")) == (
        "powerbi",
        "eventhouse",
    )
    assert routed.destinations_of(Target("SalesMarketing", "Product"), ["eventhouse"]) == (
        "eventhouse",
    )
    with pytest.raises(ConfigError):
        routed.destinations_of(Target("SalesMarketing", "Product"), ["kafka"])
