"""The emulated KQL database: tables, JSON mappings, value coercion, management commands and
a small query subset. No HTTP here (that is ``emulator/kusto.py``).

Sources (cited as in /work/notes-kusto-facts.md): [DXD] MicrosoftDocs/dataexplorer-docs under
``data-explorer/``; [INV] "Ingestion behavior of invalid data",
https://learn.microsoft.com/azure/data-explorer/ingest-invalid-data.

What the emulator does with values that do not fit a column ([INV], "Failure without error
code"): "Value not matching the table schema data type. For example: floating point value
ingested into an int column" -> null; "Mapped field not in data" -> null; a string over 1 MB is
truncated to 1 MB ([DXD] kusto/query/scalar-data-types/string.md); "Malformed records in JSON
data ingested with format=json" are ignored. Where the docs are silent the emulator is strict
and takes the value as not matching (null): a JSON string in a numeric, bool or decimal column,
a number in a string or datetime column, a bool anywhere but a bool column.
"""

from __future__ import annotations

import json
import operator
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

#: Kusto scalar types and their aliases ([DXD] kusto/query/scalar-data-types/index.md).
TYPE_ALIASES = {
    "bool": "bool",
    "boolean": "bool",
    "datetime": "datetime",
    "date": "datetime",
    "decimal": "decimal",
    "dynamic": "dynamic",
    "guid": "guid",
    "uuid": "guid",
    "uniqueid": "guid",
    "int": "int",
    "long": "long",
    "real": "real",
    "double": "real",
    "string": "string",
    "timespan": "timespan",
    "time": "timespan",
}
#: The .NET type names v1 answers carry in ``DataType`` ([DXD] kusto/api/rest/response.md:
#: "the approximate .NET Type").
DOTNET_TYPES = {
    "bool": "Boolean",
    "datetime": "DateTime",
    "decimal": "Decimal",
    "dynamic": "Object",
    "guid": "Guid",
    "int": "Int32",
    "long": "Int64",
    "real": "Double",
    "string": "String",
    "timespan": "TimeSpan",
}
#: "if a single string value in a record exceeds 1MB (measured using UTF-8 encoding), the value
#: is truncated, and ingestion succeeds" ([DXD] kusto/query/scalar-data-types/string.md).
MAX_STRING_BYTES = 1024 * 1024
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_TIMESPAN = re.compile(r"^-?(\d+\.)?\d{1,2}:\d{2}:\d{2}(\.\d{1,7})?$")
_NAME = r"(?:\[\s*'[^']+'\s*\]|\[\s*\"[^\"]+\"\s*\]|[A-Za-z_][\w]*)"


class KustoError(Exception):
    """A refusal in Kusto's error shape ([DXD] kusto/api/rest/response-v2.md):
    ``{"error": {"code", "message", "@type", "@message", "@context", "@permanent"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: str,
        error_type: str = "Kusto.Data.Exceptions.KustoBadRequestException",
        permanent: bool = True,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.error_type = error_type
        self.permanent = permanent

    def body(self, context: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer; ``context`` is the ``@context`` object (ids, timestamp)."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "@type": self.error_type,
                "@message": self.detail,
                "@context": context,
                "@permanent": self.permanent,
            }
        }


#: The summary message of a 400 ([DXD] kusto/api/rest/response-v2.md, its error example).
BAD_REQUEST = "Request is invalid and cannot be executed."


def bad_request(detail: str, code: str = "General_BadRequest", error_type: str = "") -> KustoError:
    """A permanent 400 ("400 BadRequest: Request is badly formed and failed (permanently)",
    [DXD] kusto/api/rest/response.md)."""
    return KustoError(
        400,
        code,
        BAD_REQUEST,
        detail,
        error_type or "Kusto.Data.Exceptions.KustoBadRequestException",
    )


def syntax_error(detail: str) -> KustoError:
    """What Kusto answers text it cannot parse (a permanent 400, SyntaxException)."""
    return bad_request(
        f"Syntax error: {detail}", error_type="Kusto.Data.Exceptions.SyntaxException"
    )


def semantic_error(detail: str) -> KustoError:
    """A query that parses but names what does not exist (the docs' SEM0100 example)."""
    return bad_request(
        f"Semantic error: {detail}", error_type="Kusto.Data.Exceptions.SemanticException"
    )


def table_not_found(database: str, table: str) -> KustoError:
    """``TableNotFoundException``, 400 ``BadRequest_TableNotExist``, permanent
    ([DXD] kusto/api/netfx/kusto-data-client-errors.md)."""
    return bad_request(
        f"Table '{table}' was not found in database '{database}'.",
        "BadRequest_TableNotExist",
        "Kusto.Data.Exceptions.TableNotFoundException",
    )


def unquote_name(name: str) -> str:
    """``T``, ``['T']`` or ``["T"]`` -> ``T``."""
    name = name.strip()
    if name.startswith("["):
        return name[1:-1].strip()[1:-1]
    return name


# -- values -----------------------------------------------------------------------------------


def coerce(kusto_type: str, value: Any) -> Any:
    """A JSON value (floats parsed as Decimal) as stored in a column of ``kusto_type``; None
    when it does not match (see the module docstring for what the docs say and where the
    emulator chose)."""
    if value is None:
        return None
    if kusto_type == "dynamic":
        return value
    if isinstance(value, bool):
        return value if kusto_type == "bool" else None
    if kusto_type in ("long", "int"):
        low, high = _INT64 if kusto_type == "long" else _INT32
        return value if isinstance(value, int) and low <= value <= high else None
    if kusto_type == "real":
        return float(value) if isinstance(value, int | Decimal) else None
    if kusto_type == "decimal":
        return Decimal(value) if isinstance(value, int | Decimal) else None
    if kusto_type == "string":
        if not isinstance(value, str):
            return None
        encoded = value.encode("utf-8")
        if len(encoded) > MAX_STRING_BYTES:
            return encoded[:MAX_STRING_BYTES].decode("utf-8", errors="ignore")
        return value
    if not isinstance(value, str):
        return None
    if kusto_type == "datetime":
        return parse_datetime(value)
    if kusto_type == "guid":
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return None
    if kusto_type == "timespan":
        return value if _TIMESPAN.match(value) else None
    return None


def parse_datetime(text: str) -> datetime | None:
    """An ISO 8601 string as an aware UTC datetime; a string without an offset is taken as UTC
    ("A datetime value in Kusto is always in the UTC time zone", [DXD] datetime.md)."""
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    # Kusto keeps 100 ns ticks (7 digits); Python's parser takes at most 6.
    cleaned = re.sub(r"(\.\d{6})\d+", r"\1", cleaned)
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_json(kusto_type: str, value: Any) -> Any:
    """A stored value as Kusto writes it in a result ("Scalar data types that can't be
    represented in JSON, such as datetime and timespan, are represented as JSON strings",
    [DXD] kusto/api/rest/response.md); decimals as strings, which the Python client reads back
    with ``Decimal(...)``."""
    if value is None:
        return None
    if kusto_type == "datetime":
        text: str = value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
        return text
    if kusto_type == "decimal":
        return str(value)
    return value


# -- tables and mappings ----------------------------------------------------------------------


@dataclass
class MappingColumn:
    """One element of a JSON mapping ([DXD] kusto/management/json-mapping.md)."""

    column: str
    path: str | None
    const: Any = None
    datatype: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As the service echoes a mapping: the ``Properties`` form."""
        properties = {"Path": self.path} if self.path is not None else {"ConstValue": self.const}
        out: dict[str, Any] = {"Column": self.column, "Properties": properties}
        if self.datatype:
            out["DataType"] = self.datatype
        return out


@dataclass
class KustoTable:
    """A table: ordered columns, rows as lists in column order, its mappings and policy."""

    name: str
    columns: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    mappings: dict[str, list[MappingColumn]] = field(default_factory=dict)
    #: None: no table-level policy (the database's applies).
    streaming: bool | None = None

    def column_type(self, name: str) -> str | None:
        return next((t for c, t in self.columns if c == name), None)

    def cslschema(self) -> str:
        return ",".join(f"{c}:{t}" for c, t in self.columns)

    def json_schema(self, database: str) -> str:
        """The ``Schema`` cell of ``.show table T schema as json``."""
        return json.dumps(
            {
                "Name": self.name,
                "OrderedColumns": [
                    {"Name": c, "Type": f"System.{DOTNET_TYPES[t]}", "CslType": t}
                    for c, t in self.columns
                ],
            }
        )


@dataclass
class KustoDatabase:
    """A database and its database-level streaming-ingestion policy."""

    name: str
    tables: dict[str, KustoTable] = field(default_factory=dict)
    streaming: bool = False


def parse_columns(text: str) -> list[tuple[str, str]]:
    """``a:long, ['b c']:string`` -> [(name, type)]; unknown types are a syntax error."""
    columns: list[tuple[str, str]] = []
    for part in _split_top(text, ","):
        name, sep, kind = part.rpartition(":")
        if not sep or not name.strip():
            raise syntax_error(f"A column must be written name:type, not {part.strip()!r}.")
        kusto_type = TYPE_ALIASES.get(kind.strip().lower())
        if kusto_type is None:
            raise syntax_error(f"Unknown data type {kind.strip()!r}.")
        column = unquote_name(name)
        if any(c == column for c, _ in columns):
            raise bad_request(f"Column '{column}' is specified more than once.")
        columns.append((column, kusto_type))
    if not columns:
        raise syntax_error("A table needs at least one column.")
    return columns


def parse_mapping(text: str) -> list[MappingColumn]:
    """A JSON mapping in the current form (``Properties.Path``/``ConstValue``) or the legacy
    flat form (``path``) ([DXD] create-or-alter-ingestion-mapping-command.md; the flat form is
    in ingest-json-formats.md). Field names are case-insensitive. ``Transform`` is refused:
    the emulator applies none."""
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise bad_request(f"The ingestion mapping is not valid JSON: {exc}.") from None
    if not isinstance(items, list) or not items:
        raise bad_request("An ingestion mapping must be a non-empty JSON array.")
    out: list[MappingColumn] = []
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("Each ingestion mapping element must be a JSON object.")
        fields = {k.lower(): v for k, v in item.items()}
        properties = {k.lower(): v for k, v in (fields.get("properties") or {}).items()}
        column = fields.get("column")
        if not isinstance(column, str) or not column:
            raise bad_request("An ingestion mapping element needs 'Column'.")
        if "transform" in properties or "transform" in fields:
            raise bad_request("Mapping transformations are not supported by the emulator.")
        path = properties.get("path", fields.get("path"))
        const = properties.get("constvalue", fields.get("constvalue"))
        if path is None and const is None:
            raise bad_request(f"Mapping of column '{column}' needs a Path or a ConstValue.")
        if path is not None and (not isinstance(path, str) or not path.startswith("$")):
            raise bad_request(f"Mapping of column '{column}': Path must start with '$'.")
        datatype = fields.get("datatype")
        if datatype is not None and TYPE_ALIASES.get(str(datatype).lower()) is None:
            raise bad_request(f"Mapping of column '{column}': unknown datatype {datatype!r}.")
        out.append(MappingColumn(column, path, const, datatype and TYPE_ALIASES[datatype.lower()]))
    return out


_PATH_PART = re.compile(r"\.([A-Za-z_][\w]*)|\[\s*'([^']*)'\s*\]|\[\s*\"([^\"]*)\"\s*\]|\[(\d+)\]")


def json_path(document: Any, path: str) -> Any:
    """The value at a JSONPath of the simple kind mappings use (``$``, ``$.a.b``, ``$['a b']``,
    ``$.a[0]``); None when absent ("Mapped field not in data" -> null, [INV])."""
    rest = path[1:]
    value = document
    position = 0
    while position < len(rest):
        match = _PATH_PART.match(rest, position)
        if match is None:
            raise bad_request(f"Unsupported JSON path {path!r}.")
        position = match.end()
        key, quoted, double, index = match.groups()
        if index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                return None
            value = value[int(index)]
            continue
        name = key or quoted if key or quoted is not None else double
        if not isinstance(value, dict) or name not in value:
            return None
        value = value[name]
    return value


def parse_records(data: bytes, data_format: str) -> list[Any]:
    """The records of a ``json`` or ``multijson`` payload ([DXD] ingestion supported formats:
    json is one object per line; multijson a JSON array of property bags or several of them
    separated by whitespace). For ``json``, malformed lines are ignored; for ``multijson`` a
    malformed payload fails ``BadRequest_InvalidBlob`` ([INV]). No records at all fails
    ``BadRequest_NoRecordsOrWrongFormat`` ([INV])."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid_blob("The data is not UTF-8.") from None
    records: list[Any] = []
    if data_format == "json":
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                value = json.loads(line, parse_float=Decimal)
            except ValueError:
                continue  # [INV]: "Malformed records are ignored and not ingested"
            if isinstance(value, dict):
                records.append(value)
    elif data_format == "multijson":
        decoder = json.JSONDecoder(parse_float=Decimal)
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position >= len(text):
                break
            try:
                value, position = decoder.raw_decode(text, position)
            except ValueError as exc:
                raise invalid_blob(f"Malformed JSON: {exc}.") from None
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, dict) for item in items):
                raise invalid_blob("multijson records must be JSON objects.")
            records.extend(items)
    else:
        raise bad_request(
            f"The emulator ingests the json and multijson formats only, not {data_format!r}."
        )
    if not records:
        raise KustoError(
            400,
            "BadRequest_NoRecordsOrWrongFormat",
            BAD_REQUEST,
            "The input stream produced 0 bytes or no records.",
        )
    return records


def invalid_blob(detail: str) -> KustoError:
    """[INV]: "Invalid or corrupted format ... BadRequest_InvalidBlob"."""
    return KustoError(400, "BadRequest_InvalidBlob", BAD_REQUEST, detail)


def map_records(
    table: KustoTable,
    records: list[Any],
    mapping: list[MappingColumn] | None,
    add_columns: bool = False,
) -> list[list[Any]]:
    """Rows in the table's column order. Without a mapping, the identity mapping: each column
    from the property of the same name ([DXD] kusto/management/mappings.md "identity
    mapping"). ``add_columns`` (queued ingestion only): a mapped column missing from the table
    is added at the end when the mapping gives its datatype ([DXD] mappings.md, "For queued
    ingestion"); otherwise it is a permanent error."""
    if mapping is None:
        mapping = [MappingColumn(name, f"$['{name}']") for name, _ in table.columns]
    for element in mapping:
        if table.column_type(element.column) is None:
            if add_columns and element.datatype:
                table.columns.append((element.column, element.datatype))
                for stored in table.rows:
                    stored.append(None)
            else:
                raise bad_request(
                    f"Mapping column '{element.column}' is not a column of table '{table.name}'.",
                    "BadRequest_InvalidMapping",
                )
    index = {name: i for i, (name, _) in enumerate(table.columns)}
    rows: list[list[Any]] = []
    for record in records:
        row: list[Any] = [None] * len(table.columns)
        for element in mapping:
            position = index[element.column]
            raw = element.const if element.path is None else json_path(record, element.path)
            row[position] = coerce(table.columns[position][1], raw)
        rows.append(row)
    return rows


# -- the query subset -------------------------------------------------------------------------


def _split_top(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quotes, brackets and parentheses."""
    parts: list[str] = []
    depth = 0
    quote = ""
    current: list[str] = []
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()] if separator == "," else parts


@dataclass
class Result:
    """A query result: columns (name, Kusto type) and rows of stored values."""

    columns: list[tuple[str, str]]
    rows: list[list[Any]]


_LITERAL = re.compile(
    r"^(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<bool>true|false)|datetime\((?P<dt>[^)]*)\)|(?P<null>null))$"
)
_WHERE = re.compile(rf"^where\s+(?P<col>{_NAME})\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<lit>.+)$")
_ORDER = re.compile(r"^(?:order|sort)\s+by\s+(?P<keys>.+)$")
_TAKE = re.compile(r"^(?:take|limit)\s+(?P<n>\d+)$")
_SUMMARIZE = re.compile(rf"^summarize\s+(?:(?P<alias>{_NAME})\s*=\s*)?count\(\s*\)$")
_PROJECT = re.compile(r"^project\s+(?P<cols>.+)$")
#: The subset served, for error messages and the module docs.
SUPPORTED_QUERY = (
    "T | count | take N | limit N | where col (==|!=|<|<=|>|>=) literal | "
    "order by col [asc|desc], ... | sort by ... | project col, ... | summarize [name=]count()"
)


def _literal(text: str) -> Any:
    match = _LITERAL.match(text.strip())
    if match is None:
        raise syntax_error(
            f"Unsupported literal {text.strip()!r}; the emulator serves {SUPPORTED_QUERY}."
        )
    if match["dq"] is not None or match["sq"] is not None:
        return match["dq"] if match["dq"] is not None else match["sq"]
    if match["num"] is not None:
        number = match["num"]
        return int(number) if re.fullmatch(r"-?\d+", number) else Decimal(number)
    if match["bool"] is not None:
        return match["bool"] == "true"
    if match["dt"] is not None:
        parsed = parse_datetime(match["dt"])
        if parsed is None:
            raise syntax_error(f"Invalid datetime literal {match['dt']!r}.")
        return parsed
    return None


def _comparable(kusto_type: str, literal: Any) -> Any:
    if kusto_type in ("real",) and isinstance(literal, int | Decimal):
        return float(literal)
    if kusto_type == "decimal" and isinstance(literal, int | Decimal):
        return Decimal(literal)
    if kusto_type in ("long", "int") and isinstance(literal, Decimal):
        return float(literal)
    return literal


def run_query(database: KustoDatabase, text: str) -> Result:
    """Run the supported subset of KQL (:data:`SUPPORTED_QUERY`) over one database."""
    stages = [s.strip() for s in _split_top(text.strip().rstrip(";"), "|")]
    if not stages or not stages[0]:
        raise syntax_error("The query is empty.")
    source = stages[0]
    if not re.fullmatch(_NAME, source):
        raise syntax_error(
            f"The emulator serves only queries of the form {SUPPORTED_QUERY}, not {text!r}."
        )
    name = unquote_name(source)
    table = database.tables.get(name)
    if table is None:
        raise semantic_error(
            f"SEM0100: Failed to resolve table or column expression named '{name}'"
        )
    result = Result(list(table.columns), [list(r) for r in table.rows])
    for stage in stages[1:]:
        result = _stage(result, stage)
    return result


def _column(result: Result, name: str) -> int:
    column = unquote_name(name)
    for i, (c, _) in enumerate(result.columns):
        if c == column:
            return i
    raise semantic_error(f"SEM0100: Failed to resolve scalar expression named '{column}'")


def _stage(result: Result, stage: str) -> Result:
    if stage == "count":
        return Result([("Count", "long")], [[len(result.rows)]])
    if match := _TAKE.match(stage):
        return Result(result.columns, result.rows[: int(match["n"])])
    if match := _SUMMARIZE.match(stage):
        alias = unquote_name(match["alias"]) if match["alias"] else "count_"
        return Result([(alias, "long")], [[len(result.rows)]])
    if match := _PROJECT.match(stage):
        positions = [_column(result, c) for c in _split_top(match["cols"], ",")]
        return Result(
            [result.columns[i] for i in positions], [[r[i] for i in positions] for r in result.rows]
        )
    if match := _WHERE.match(stage):
        position = _column(result, match["col"])
        literal = _comparable(result.columns[position][1], _literal(match["lit"]))
        op = match["op"]
        return Result(
            result.columns, [r for r in result.rows if _compare(r[position], op, literal)]
        )
    if match := _ORDER.match(stage):
        rows = list(result.rows)
        keys = []
        for key in _split_top(match["keys"], ","):
            words = key.split()
            direction = words[1].lower() if len(words) > 1 else "desc"
            if len(words) > 2 or direction not in ("asc", "desc"):
                raise syntax_error(f"Unsupported sort key {key.strip()!r}.")
            keys.append((_column(result, words[0]), direction == "desc"))
        # Kusto sorts descending by default, nulls last when descending and first when
        # ascending ([DXD] kusto/query/sort-operator.md). Stable sorts applied last key first.
        for position, descending in reversed(keys):
            present = [r for r in rows if r[position] is not None]
            absent = [r for r in rows if r[position] is None]
            present.sort(key=operator.itemgetter(position), reverse=descending)
            rows = present + absent if descending else absent + present
        return Result(result.columns, rows)
    raise syntax_error(f"Unsupported operator {stage!r}; the emulator serves {SUPPORTED_QUERY}.")


def _compare(value: Any, op: str, literal: Any) -> bool:
    if value is None or literal is None:
        return op == "!=" and (value is None) != (literal is None)
    try:
        if op == "==":
            return bool(value == literal)
        if op == "!=":
            return bool(value != literal)
        if op == "<":
            return bool(value < literal)
        if op == "<=":
            return bool(value <= literal)
        if op == ">":
            return bool(value > literal)
        return bool(value >= literal)
    except TypeError:
        raise semantic_error(
            f"Cannot compare a value of type {type(value).__name__} with {literal!r}."
        ) from None
