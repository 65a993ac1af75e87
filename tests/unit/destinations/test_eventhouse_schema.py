"""KQL tables and JSON mappings from a Power BI dataset definition (shared/destinations/
kusto_schema.py): the type map, identifier quoting, the commands' exact text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.destinations.kusto_schema import (
    KUSTO_TYPES,
    MAPPING_NAME,
    kql_string,
    kusto_table,
    quote_name,
    tables_of,
)
from shared.engine.schema import TYPES, DatasetDefinition
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def definition(columns: list[dict[str, str]], table: str = "Sales") -> DatasetDefinition:
    return DatasetDefinition.from_body(
        {"name": "D", "tables": [{"name": table, "columns": columns}]}
    )


def test_every_power_bi_type_has_its_kusto_type() -> None:
    """Int64->long, Double->real, Decimal->decimal, Boolean->bool, DateTime->datetime,
    String->string (scalar-data-types), and no Power BI type is left out."""
    assert set(KUSTO_TYPES) == set(TYPES)
    assert KUSTO_TYPES == {
        "Int64": "long",
        "Double": "real",
        "Decimal": "decimal",
        "Boolean": "bool",
        "DateTime": "datetime",
        "String": "string",
    }


def test_sales_marketing_table_and_mapping() -> None:
    """The repository's own definition, as the emulator and a real cluster receive it."""
    body = json.loads((ROOT / "datasets" / "SalesMarketing.json").read_text(encoding="utf-8"))
    product = tables_of(DatasetDefinition.from_body(body))["Product"]
    assert product.create_merge() == (
        ".create-merge table Product (ProductID:long, Manufacturer:string, Category:string, "
        "Segment:string, Product:string, IsCompete:bool)"
    )
    assert product.mapping()[0] == {
        "column": "ProductID",
        "datatype": "long",
        "Properties": {"Path": "$['ProductID']"},
    }
    assert product.create_mapping() == (
        ".create-or-alter table Product ingestion json mapping "
        f"\"{MAPPING_NAME}\" '{product.mapping_json().replace(chr(39), chr(92) + chr(39))}'"
    )
    assert product.enable_streaming() == ".alter table Product policy streamingingestion enable"
    assert product.commands(streaming_policy=False) == [
        product.create_merge(),
        product.create_mapping(),
    ]
    assert len(product.commands(streaming_policy=True)) == 3


def test_the_mapping_literal_reads_back_as_the_mapping() -> None:
    """The mapping travels inside a KQL string literal: undoing its escapes gives the JSON."""
    table = kusto_table(
        definition(
            [{"name": "Unit Price", "dataType": "Decimal"}, {"name": "at", "dataType": "DateTime"}]
        ).tables["Sales"]
    )
    literal = table.create_mapping().split(f'"{MAPPING_NAME}" ', 1)[1]
    assert literal.startswith("'") and literal.endswith("'")
    unescaped = literal[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    assert json.loads(unescaped) == [
        {"column": "Unit Price", "datatype": "decimal", "Properties": {"Path": "$['Unit Price']"}},
        {"column": "at", "datatype": "datetime", "Properties": {"Path": "$['at']"}},
    ]


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("Product", "Product"),
        ("Sales_2024", "Sales_2024"),
        ("where", "['where']"),  # a keyword
        ("count", "['count']"),
        ("1day", "['1day']"),  # a literal
        ("Unit Price", "['Unit Price']"),
        ("a.b-c", "['a.b-c']"),
        ("_private", "['_private']"),
        ("Größe", "['Größe']"),
    ],
)
def test_names_are_quoted_where_needed(name: str, quoted: str) -> None:
    assert quote_name(name) == quoted


@pytest.mark.parametrize(
    "name", ["", "Price ($)", "a;b", "a:b", "it's", "back\\slash", "__x", "x__", "x" * 1025]
)
def test_a_name_kusto_cannot_hold_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        quote_name(name)


def test_a_definition_with_an_impossible_column_is_a_config_error_naming_it() -> None:
    bad = definition(
        [{"name": "Price ($)", "dataType": "Double"}, {"name": "Ok", "dataType": "Int64"}]
    )
    with pytest.raises(ConfigError) as caught:
        kusto_table(bad.tables["Sales"])
    assert "'Price ($)'" in str(caught.value) and "'Ok'" not in str(caught.value)


def test_a_prefix_names_the_kusto_tables() -> None:
    tables = tables_of(definition([{"name": "n", "dataType": "Int64"}]), prefix="Shop_")
    assert tables["Sales"].name == "Shop_Sales"
    assert tables["Sales"].create_merge() == ".create-merge table Shop_Sales (['n']:long)"


def test_kql_string_escapes() -> None:
    assert kql_string("a'b\\c\nd") == "'a\\'b\\\\c\\nd'"
