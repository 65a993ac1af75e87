"""Dataset definitions and compiled row validators.

A definition is Power BI's own Create Dataset body (``datasets/<name>.json``). For each table a
:class:`RowValidator` is compiled once: a column-name -> coercer map, so validating a row is one
dictionary walk with no per-value type dispatch. It coerces what is unambiguous (numeric strings
to numbers, ``"true"``/``"false"`` to booleans, ISO 8601 and ``MM/dd/yyyy`` strings to ISO 8601
UTC date-times, an empty string to null for non-string columns) and refuses what Power BI would
refuse, with the row's index, the column and the reason.

Value rules: "Dataset properties", https://learn.microsoft.com/en-us/power-bi/developer/automation/api-dataset-properties
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import limits
from shared.errors import ConfigError, RowProblem

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
DOUBLE_MAX = 1.7976931348623157e308
#: Decimal is "precision=28, scale=4": at most 24 digits before the point.
DECIMAL_MAX = 1e24

TYPES = ("Int64", "Double", "Decimal", "Boolean", "DateTime", "String")
_ALIASES = {name.lower(): name for name in TYPES} | {"int": "Int64", "bool": "Boolean"}


def canonical_type(name: object) -> str | None:
    """The canonical name of a Power BI column type (case-insensitive, with aliases), or None."""
    return _ALIASES.get(name.strip().lower()) if isinstance(name, str) else None


class Rejected(ValueError):
    """A value that cannot be coerced to its column's type; the message says why."""


def _int64(value: Any) -> int:
    if type(value) is int:
        result = value
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            raise Rejected(f"expected a whole number, got {value[:40]!r}") from None
    elif type(value) is float and value.is_integer():
        result = int(value)
    else:
        raise Rejected(f"expected a whole number, got {_describe(value)}")
    if not INT64_MIN < result < INT64_MAX:
        raise Rejected("Int64.MaxValue, Int64.MinValue and values beyond them are not allowed")
    return result


def _double(value: Any) -> float:
    if type(value) is float or type(value) is int:
        try:
            result = float(value)
        except OverflowError:
            raise Rejected("the number is beyond the range of a Double") from None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise Rejected(f"expected a number, got {value[:40]!r}") from None
    else:
        raise Rejected(f"expected a number, got {_describe(value)}")
    if math.isnan(result):
        raise Rejected("NaN is not supported")
    if not -DOUBLE_MAX < result < DOUBLE_MAX:
        raise Rejected("Double.MaxValue, Double.MinValue and infinities are not allowed")
    return result


def _decimal(value: Any) -> float:
    result = _double(value)
    if abs(result) >= DECIMAL_MAX:
        raise Rejected("Decimal allows 28 digits with 4 after the point")
    return result


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "false"):
            return text == "true"
    raise Rejected(f"expected true or false, got {_describe(value)}")


_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")


def _datetime(value: Any) -> str:
    if not isinstance(value, str):
        raise Rejected(f"expected a date-time string, got {_describe(value)}")
    text = value.strip()
    try:
        match = _US_DATE.fullmatch(text)
        if match:
            month, day, year, hour, minute, second = match.groups()
            moment = datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
            )
        else:
            moment = datetime.fromisoformat(text)
        # A value without an offset is taken as UTC, the only zone the bundle writes.
        moment = moment.astimezone(UTC) if moment.tzinfo else moment
    except (ValueError, OverflowError):  # OverflowError: outside years 1-9999 once in UTC
        raise Rejected(f"expected an ISO 8601 or MM/dd/yyyy date-time, got {text[:40]!r}") from None
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _string(value: Any) -> str:
    if type(value) is str:
        result = value
    elif type(value) is bool:
        result = "True" if value else "False"  # as .NET writes booleans
    elif type(value) in (int, float):
        result = repr(value)
    else:
        raise Rejected(f"expected text, got {_describe(value)}")
    # A str of at most 2,000 code points cannot exceed 4,000 UTF-16 units: skip the encode.
    if len(result) > limits.MAX_STRING_LENGTH // 2:
        try:
            units = len(result.encode("utf-16-le")) // 2
        except UnicodeEncodeError:
            raise Rejected("text contains an unpaired surrogate") from None
        if units > limits.MAX_STRING_LENGTH:
            raise Rejected(
                f"text of {units:,} characters; Power BI allows {limits.MAX_STRING_LENGTH:,}"
            )
    return result


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {str(value)[:40]!r}"


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "Int64": _int64,
    "Double": _double,
    "Decimal": _decimal,
    "Boolean": _boolean,
    "DateTime": _datetime,
    "String": _string,
}


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str


@dataclass(frozen=True)
class TableSchema:
    """A table's columns, with types in canonical form."""

    name: str
    columns: tuple[Column, ...]

    def validator(self) -> RowValidator:
        return RowValidator(self)


class RowValidator:
    """Validates and coerces rows of one table. Build once per table and reuse."""

    def __init__(self, table: TableSchema) -> None:
        self.table = table
        self._coercers = {c.name: _COERCERS[c.data_type] for c in table.columns}
        self._nullable_empty = {c.name for c in table.columns if c.data_type != "String"}

    def __call__(self, row: Any, index: int) -> dict[str, Any] | RowProblem:
        """The row as it will be sent, or the first problem found in it."""
        if not isinstance(row, dict):
            return RowProblem(index, f"a row must be a JSON object, got {_describe(row)}")
        coercers = self._coercers
        out: dict[str, Any] = {}
        for column, value in row.items():
            coercer = coercers.get(column)
            if coercer is None:
                return RowProblem(
                    index, f"table {self.table.name!r} has no column {str(column)[:100]!r}", column
                )
            if value is None or (value == "" and column in self._nullable_empty):
                out[column] = None
                continue
            try:
                out[column] = coercer(value)
            except Rejected as exc:
                return RowProblem(index, str(exc), column)
        return out


@dataclass(frozen=True)
class DatasetDefinition:
    """A Create Dataset body and the table schemas compiled from it."""

    name: str
    body: dict[str, Any]
    tables: dict[str, TableSchema] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any, source: str = "definition") -> DatasetDefinition:
        """Check a Create Dataset body; a malformed one is a :class:`ConfigError`."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ConfigError(source, "a dataset definition needs a 'name' and 'tables'")
        tables: dict[str, TableSchema] = {}
        tables_in = body.get("tables") or []
        if not isinstance(tables_in, list):
            raise ConfigError(source, "'tables' must be an array")
        for table in tables_in:
            if (
                not isinstance(table, dict)
                or not isinstance(table.get("name"), str)
                or not isinstance(table.get("columns") or [], list)
            ):
                raise ConfigError(source, "every table needs a 'name' and a 'columns' array")
            columns = []
            for column in table.get("columns") or []:
                data_type = (
                    canonical_type(column.get("dataType")) if isinstance(column, dict) else None
                )
                if data_type is None or not isinstance(column.get("name"), str):
                    raise ConfigError(
                        source,
                        f"table {table['name']!r}: column {column!r} needs a 'name' and a "
                        "dataType of Int64, Double, Decimal, Boolean, DateTime or String",
                    )
                columns.append(Column(column["name"], data_type))
            if not columns:
                raise ConfigError(source, f"table {table['name']!r} has no columns")
            if len(columns) > limits.MAX_COLUMNS:
                raise ConfigError(
                    source, f"table {table['name']!r} has more than {limits.MAX_COLUMNS} columns"
                )
            tables[table["name"]] = TableSchema(table["name"], tuple(columns))
        if not tables or len(tables) > limits.MAX_TABLES:
            raise ConfigError(source, f"a dataset needs 1 to {limits.MAX_TABLES} tables")
        return cls(body["name"], body, tables)


def load_definitions(directory: Path) -> dict[str, DatasetDefinition]:
    """Every ``*.json`` definition in ``directory``, by dataset name (not the ingest profiles,
    ``*.profile.json``, that may stand beside them: see :mod:`shared.engine.profile`)."""
    definitions: dict[str, DatasetDefinition] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name.endswith(".profile.json"):
            continue
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(path), f"cannot read the definition: {exc}") from exc
        definition = DatasetDefinition.from_body(body, str(path))
        if definition.name in definitions:
            raise ConfigError(str(path), f"a second definition of dataset {definition.name!r}")
        definitions[definition.name] = definition
    return definitions
