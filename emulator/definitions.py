"""Checks of Create Dataset and Put Table bodies, as the service applies them.

Property names are case-sensitive and unknown properties are refused with 400 (reference §3.1,
the ``compatibilityLevel`` example). Names follow the OpenAPI patterns of ``Table.name`` and
``Column.name``; counts follow the limits page (75 tables, columns, relationships).
"""

from __future__ import annotations

from typing import Any

from emulator import limits
from emulator.errors import ApiError, bad_request
from emulator.store import Column, Table
from emulator.values import canonical_type

_DATASET_PROPS = {"name", "tables", "relationships", "datasources", "defaultMode"}
_TABLE_PROPS = {"name", "columns", "rows", "measures", "isHidden", "description", "source"}
_COLUMN_PROPS = {
    "name",
    "dataType",
    "formatString",
    "sortByColumn",
    "dataCategory",
    "isHidden",
    "summarizeBy",
}
_MEASURE_PROPS = {"name", "expression", "formatString", "description", "isHidden"}
_RELATIONSHIP_PROPS = {
    "name",
    "crossFilteringBehavior",
    "fromTable",
    "fromColumn",
    "toTable",
    "toColumn",
}
MODES = {
    "asazure": "AsAzure",
    "asonprem": "AsOnPrem",
    "push": "Push",
    "streaming": "Streaming",
    "pushstreaming": "PushStreaming",
}
RETENTION = {"none": "None", "basicfifo": "basicFIFO"}


def _unknown(props: dict[str, Any], allowed: set[str], type_name: str, target: str) -> None:
    for key in props:
        if key not in allowed:
            raise bad_request(
                f"The property '{key}' does not exist on type "
                f"'Microsoft.PowerBI.ServiceContracts.Api.{type_name}'. Make sure to only use "
                "property names that are defined by the type.",
                target,
            )


def _table_name_ok(name: str) -> bool:
    # Table.name pattern: TAB, LF, CR, space, '#', '-', 0-9, '@', A-Z, '^', '_', a-z, '~' and any
    # non-ASCII character except surrogates and U+FFFE/U+FFFF; 1 to 100 characters.
    if not 1 <= len(name) <= limits.MAX_TABLE_NAME_LENGTH:
        return False
    for char in name:
        code = ord(char)
        if code >= 0x7F:
            if 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
                return False
            continue
        if not (char in "\t\n\r #-@^_~" or char.isalnum()):
            return False
    return True


def _column_name_ok(name: str) -> bool:
    # Column.name pattern: TAB, LF, CR and anything from U+0020 up, minus surrogates/FFFE/FFFF.
    return bool(name) and all(
        c in "\t\n\r"
        or (ord(c) >= 0x20 and not 0xD800 <= ord(c) <= 0xDFFF and ord(c) not in (0xFFFE, 0xFFFF))
        for c in name
    )


def _string(value: Any, field: str, target: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"'{field}' is required and must be a string.", target)
    return value


def _list(value: Any, field: str, target: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"'{field}' must be an array.", target)
    return value


def parse_table(body: Any, target: str = "table") -> Table:
    """Check one table definition and return it, or raise a 400 naming the problem."""
    if not isinstance(body, dict):
        raise bad_request("A table must be a JSON object.", target)
    _unknown(body, _TABLE_PROPS, "Table", target)
    name = _string(body.get("name"), "name", target)
    if not _table_name_ok(name):
        raise bad_request(
            f"Table name '{name[:100]}' is not valid: 1 to 100 characters, letters, digits, "
            "space and # - @ ^ _ ~ only.",
            target,
        )
    columns_in = _list(body.get("columns"), "columns", target)
    if not columns_in:
        raise bad_request(f"Table '{name}' must have at least one column.", target)
    if len(columns_in) > limits.MAX_COLUMNS:
        raise bad_request(
            f"Table '{name}' has {len(columns_in)} columns; at most {limits.MAX_COLUMNS} are "
            "allowed.",
            target,
        )
    columns: list[Column] = []
    seen: set[str] = set()
    for index, column in enumerate(columns_in):
        where = f"{target}.columns[{index}]"
        if not isinstance(column, dict):
            raise bad_request("A column must be a JSON object.", where)
        _unknown(column, _COLUMN_PROPS, "Column", where)
        column_name = _string(column.get("name"), "name", where)
        if not _column_name_ok(column_name):
            raise bad_request(f"Column name {column_name!r} is not valid.", where)
        if column_name in seen:
            raise bad_request(f"Column '{column_name}' appears twice in '{name}'.", where)
        seen.add(column_name)
        data_type = canonical_type(column.get("dataType"))
        if data_type is None:
            raise bad_request(
                f"Column '{column_name}' has unsupported dataType {column.get('dataType')!r}; use "
                "Int64, Double, Decimal, Boolean, DateTime or String.",
                where,
            )
        columns.append(Column(column_name, data_type, dict(column)))
    for index, measure in enumerate(_list(body.get("measures"), "measures", target)):
        where = f"{target}.measures[{index}]"
        if not isinstance(measure, dict):
            raise bad_request("A measure must be a JSON object.", where)
        _unknown(measure, _MEASURE_PROPS, "Measure", where)
        _string(measure.get("name"), "name", where)
        _string(measure.get("expression"), "expression", where)
    return Table(name=name, columns=columns, definition=dict(body))


def parse_dataset(body: Any) -> tuple[str, str, list[Table]]:
    """Check a Create Dataset body; return ``(name, mode, tables)`` or raise a 400."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "dataset")
    _unknown(body, _DATASET_PROPS, "Dataset", "dataset")
    name = _string(body.get("name"), "name", "dataset")
    if not name.strip():
        raise bad_request("The dataset name must not be empty.", "dataset")
    mode_in = body.get("defaultMode", "Push")
    mode = MODES.get(mode_in.lower()) if isinstance(mode_in, str) else None
    if mode is None:
        raise bad_request(
            f"defaultMode {mode_in!r} is not one of AsAzure, AsOnPrem, Push, Streaming, "
            "PushStreaming.",
            "dataset",
        )
    if mode == "Streaming":
        raise ApiError(
            400,
            "FeatureDeprecatedError",
            "Creation of streaming dataset is deprecated. We recommend exploring Real-Time "
            "Intelligence in Microsoft Fabric.",
        )
    tables_in = _list(body.get("tables"), "tables", "dataset")
    if not tables_in:
        raise bad_request("A dataset needs at least one table.", "dataset")
    if len(tables_in) > limits.MAX_TABLES:
        raise bad_request(
            f"The dataset has {len(tables_in)} tables; at most {limits.MAX_TABLES} are allowed.",
            "dataset",
        )
    tables = [parse_table(t, f"dataset.tables[{i}]") for i, t in enumerate(tables_in)]
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise bad_request("Table names must be unique in a dataset.", "dataset")
    relationships = _list(body.get("relationships"), "relationships", "dataset")
    if len(relationships) > limits.MAX_RELATIONSHIPS:
        raise bad_request(
            f"The dataset has {len(relationships)} relationships; at most "
            f"{limits.MAX_RELATIONSHIPS} are allowed.",
            "dataset",
        )
    by_name = {t.name: t.column_types() for t in tables}
    for index, rel in enumerate(relationships):
        where = f"dataset.relationships[{index}]"
        if not isinstance(rel, dict):
            raise bad_request("A relationship must be a JSON object.", where)
        _unknown(rel, _RELATIONSHIP_PROPS, "Relationship", where)
        for side in ("from", "to"):
            table = _string(rel.get(f"{side}Table"), f"{side}Table", where)
            column = _string(rel.get(f"{side}Column"), f"{side}Column", where)
            if column not in by_name.get(table, {}):
                raise bad_request(f"Relationship refers to unknown column {table}.{column}.", where)
    return name, mode, tables


def parse_retention(value: str | None) -> str:
    """The ``defaultRetentionPolicy`` query value, canonical; None when absent."""
    if value is None or value == "":
        return "None"
    retention = RETENTION.get(value.lower())
    if retention is None:
        raise bad_request(
            f"defaultRetentionPolicy {value!r} is not one of None, basicFIFO.",
            "defaultRetentionPolicy",
        )
    return retention
