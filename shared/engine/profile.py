"""Ingest profiles: how a table's files and payloads are read, declared beside its definition.

A dataset definition (``datasets/<Dataset>.json``) stays Power BI's own Create Dataset body. Its
ingest profile is a second file, ``datasets/<Dataset>.profile.json``, with one entry per table::

    {"tables": {"Weather": {
        "nullTokens": ["NA", "-"],
        "dateFormats": ["MMM d yyyy"], "timeZone": "Europe/Paris",
        "decimalSeparator": ",", "thousandsSeparator": ".",
        "trueWords": ["yes", "y"], "falseWords": ["no", "n"],
        "csv": {"delimiter": ";", "quote": "\\"", "header": true, "skipLines": 0},
        "encoding": "cp1252",
        "matchCase": false, "ignore": ["Comment"],
        "columns": {
            "Temp": {"from": "temperature_c", "nullTokens": ["-999"]},
            "Station": {"constant": "KSEA"},
            "LoadedAt": {"derived": "ingestionTime"}
        }}}}

A blob (metadata ``profile``, JSON) or a request (``?profile=`` or an envelope's ``profile``)
may override a table's entry for itself: its keys replace the declared ones, and its
``columns`` entries replace the declared entries of the same columns.

Every option is checked when the profile is read, against the table's schema: an unknown
option, a pattern that does not compile, a mapping to a column the table lacks. The error
(:class:`ProfileError`) names the file and the field, and nothing is read with a profile that
failed: a half-applied profile would store values the owner did not mean.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.engine.schema import Rejected, TableSchema, coerce
from shared.engine.textvalues import (
    DEFAULT_NULL_TOKENS,
    ColumnReader,
    PatternError,
    compile_boolean,
    compile_datetime,
    compile_iso,
    compile_number,
    compile_rewrite,
)
from shared.errors import ValidationError

#: Suffix of a profile file beside its definition.
PROFILE_SUFFIX = ".profile.json"

#: Encodings a profile may declare. UTF-8 (with or without BOM) and UTF-16 with a BOM are
#: recognised without one; the 8-bit code pages must be declared, since any byte is valid in
#: them and guessing would silently misread text.
ENCODINGS = {
    "utf-8": "utf-8-sig",
    "utf-8-sig": "utf-8-sig",
    "utf-16": "utf-16",
    "cp1252": "cp1252",
    "windows-1252": "cp1252",
    "latin-1": "latin-1",
    "iso-8859-1": "latin-1",
}
DELIMITERS = (",", ";", "\t", "|")
#: Derived columns and the column types each may fill.
DERIVED = {
    "ingestionTime": ("DateTime", "String"),
    "sourceFile": ("String",),
    "lineNumber": ("Int64", "Double", "Decimal", "String"),
}
NUMERIC = ("Int64", "Double", "Decimal")

_VALUE_OPTIONS = {
    "nullTokens",
    "dateFormats",
    "timeZone",
    "decimalSeparator",
    "thousandsSeparator",
    "trueWords",
    "falseWords",
}
_TABLE_OPTIONS = _VALUE_OPTIONS | {"csv", "encoding", "matchCase", "ignore", "columns"}
_COLUMN_OPTIONS = _VALUE_OPTIONS | {"from", "constant", "derived"}
_CSV_OPTIONS = {"delimiter", "quote", "header", "columnNames", "skipLines"}


class ProfileError(ValidationError):
    """A profile that cannot be used; ``where`` names the file (or request) and ``field`` the
    option, e.g. ``tables.Weather.columns.Temp.nullTokens``."""

    def __init__(self, where: str, field_path: str, problem: str) -> None:
        super().__init__(f"ingest profile {where}: {field_path}: {problem}")
        self.where = where
        self.field = field_path


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file is split: ``delimiter`` None means detected from the first lines."""

    delimiter: str | None = None
    quote: str = '"'
    header: bool = True
    column_names: tuple[str, ...] = ()
    skip_lines: int = 0


@dataclass(frozen=True)
class ColumnRule:
    """How one target column is filled: read from ``source`` through ``parse`` (None: the
    engine's own coercion), or a ``constant``, or ``derived`` from where the row came from."""

    source: str | None
    null_tokens: frozenset[str]
    parse: Callable[[str], Any] | None = None
    constant: Any = None
    derived: str | None = None
    #: For a date pattern a whole column can be rewritten with (see
    #: :func:`shared.engine.textvalues.compile_rewrite`): the engine's fast path.
    rewrite: ColumnReader | None = None


@dataclass(frozen=True, eq=False)
class TableProfile:
    """A table's compiled profile: the reader's settings and one rule per target column."""

    table: str
    encoding: str | None = None
    csv: CsvDialect = field(default_factory=CsvDialect)
    match_case: bool = True
    ignore: frozenset[str] = frozenset()
    columns: Mapping[str, ColumnRule] = field(default_factory=dict)
    #: The profile as written (after overrides), for logs and dead letters.
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def numbered(self) -> bool:
        """Whether a column is the row's line number (the readers then give it)."""
        return any(rule.derived == "lineNumber" for rule in self.columns.values())


def _suggest(name: str, options: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _strings(value: Any, where: str, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(where, path, "must be an array of strings")
    return list(value)


def _one_char(value: Any, where: str, path: str, allowed: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or len(value) != 1 or (allowed and value not in allowed):
        choice = f" one of {list(allowed)!r}" if allowed else " one character"
        raise ProfileError(where, path, f"must be{choice}, got {value!r}")
    return value


def _check_keys(entry: Any, options: set[str], where: str, path: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ProfileError(where, path, "must be an object")
    for key in entry:
        if key not in options:
            raise ProfileError(
                where, f"{path}.{key}", f"unknown option{_suggest(str(key), options)}"
            )
    return entry


def _value_parser(
    data_type: str, options: Mapping[str, Any], where: str, path: str
) -> Callable[[str], Any] | None:
    """The reader a column's (merged) value options ask for, checked against its type."""
    formats = options.get("dateFormats")
    decimal = options.get("decimalSeparator")
    thousands = options.get("thousandsSeparator")
    trues, falses = options.get("trueWords"), options.get("falseWords")
    if data_type == "DateTime" and (formats is not None or "timeZone" in options):
        zone = options.get("timeZone")
        try:
            # ISO 8601 is always read too, last: it cannot be mistaken for another pattern.
            iso = compile_iso(zone)
        except PatternError as exc:
            raise ProfileError(where, f"{path}.timeZone", str(exc)) from None
        readers = []
        for number, pattern in enumerate(_strings(formats or [], where, f"{path}.dateFormats")):
            try:
                readers.append(compile_datetime(pattern, zone))
            except PatternError as exc:
                raise ProfileError(where, f"{path}.dateFormats[{number}]", str(exc)) from None
        return _first_of([*readers, iso], [*(formats or []), "ISO 8601"])
    if (decimal is not None or thousands is not None) and data_type in NUMERIC:
        decimal = _one_char(decimal or ".", where, f"{path}.decimalSeparator", (".", ","))
        if thousands is not None:
            thousands = _one_char(thousands, where, f"{path}.thousandsSeparator")
        try:
            return compile_number(decimal, thousands)
        except PatternError as exc:
            raise ProfileError(where, f"{path}.thousandsSeparator", str(exc)) from None
    if (trues is not None or falses is not None) and data_type == "Boolean":
        try:
            return compile_boolean(
                _strings(trues or [], where, f"{path}.trueWords"),
                _strings(falses or [], where, f"{path}.falseWords"),
            )
        except PatternError as exc:
            raise ProfileError(where, f"{path}.trueWords", str(exc)) from None
    return None


def _first_of(readers: list[Callable[[str], str]], formats: list[str]) -> Callable[[str], str]:
    if len(readers) == 1:
        return readers[0]

    def read(text: str) -> str:
        for reader in readers:
            try:
                return reader(text)
            except ValueError:
                continue
        raise ValueError(f"expected a date-time like one of {formats!r}, got {text[:40]!r}")

    return read


def compile_profile(
    table: TableSchema, entry: Mapping[str, Any], where: str, path: str | None = None
) -> TableProfile:
    """Check ``entry`` (one table's profile, overrides already merged) against ``table`` and
    compile it. Raises :class:`ProfileError` naming ``where`` and the field."""
    path = path or f"tables.{table.name}"
    entry = _check_keys(entry, _TABLE_OPTIONS, where, path)
    types = {column.name: column.data_type for column in table.columns}

    encoding = entry.get("encoding")
    if encoding is not None:
        if not isinstance(encoding, str) or encoding.lower() not in ENCODINGS:
            raise ProfileError(
                where, f"{path}.encoding", f"must be one of {sorted(ENCODINGS)}, got {encoding!r}"
            )
        encoding = ENCODINGS[encoding.lower()]

    csv_entry = _check_keys(entry.get("csv", {}), _CSV_OPTIONS, where, f"{path}.csv")
    delimiter = csv_entry.get("delimiter", "auto")
    header = csv_entry.get("header", True)
    skip = csv_entry.get("skipLines", 0)
    if not isinstance(header, bool):
        raise ProfileError(where, f"{path}.csv.header", "must be true or false")
    if not isinstance(skip, int) or isinstance(skip, bool) or not 0 <= skip <= 1000:
        raise ProfileError(where, f"{path}.csv.skipLines", "must be a whole number, 0 to 1000")
    names = tuple(_strings(csv_entry.get("columnNames", []), where, f"{path}.csv.columnNames"))
    if not header and not names:
        raise ProfileError(
            where, f"{path}.csv.columnNames", "is required when the file has no header row"
        )
    dialect = CsvDialect(
        None
        if delimiter == "auto"
        else _one_char(delimiter, where, f"{path}.csv.delimiter", DELIMITERS),
        _one_char(csv_entry.get("quote", '"'), where, f"{path}.csv.quote"),
        header,
        names,
        skip,
    )

    match_case = entry.get("matchCase", True)
    if not isinstance(match_case, bool):
        raise ProfileError(where, f"{path}.matchCase", "must be true or false")
    ignore = frozenset(_strings(entry.get("ignore", []), where, f"{path}.ignore"))

    # The table-wide value options are checked where they are written (a bad pattern is named
    # at tables.T.dateFormats[0], not at the first column that inherits it).
    for data_type in ("DateTime", "Double", "Boolean"):
        _value_parser(data_type, entry, where, path)
    table_tokens = entry.get("nullTokens")
    if table_tokens is not None:
        table_tokens = frozenset(_strings(table_tokens, where, f"{path}.nullTokens"))
    columns_entry = entry.get("columns", {})
    if not isinstance(columns_entry, dict):
        raise ProfileError(where, f"{path}.columns", "must be an object: column -> rule")
    for name in columns_entry:
        if name not in types:
            raise ProfileError(
                where,
                f"{path}.columns.{name}",
                f"table {table.name!r} has no column {name!r}{_suggest(str(name), set(types))}",
            )
    rules: dict[str, ColumnRule] = {}
    for name, data_type in types.items():
        column_path = f"{path}.columns.{name}"
        own = _check_keys(columns_entry.get(name, {}), _COLUMN_OPTIONS, where, column_path)
        fills = [key for key in ("from", "constant", "derived") if key in own]
        if len(fills) > 1:
            raise ProfileError(where, column_path, f"gives {' and '.join(fills)}; choose one")
        if "derived" in own:
            if own["derived"] not in DERIVED:
                raise ProfileError(
                    where, f"{column_path}.derived", f"must be one of {list(DERIVED)!r}"
                )
            if data_type not in DERIVED[own["derived"]]:
                raise ProfileError(
                    where,
                    f"{column_path}.derived",
                    f"{own['derived']} cannot fill a {data_type} column (it fills "
                    f"{' or '.join(DERIVED[own['derived']])})",
                )
        constant = own.get("constant")
        if constant is not None:
            try:
                constant = coerce(data_type, constant)
            except Rejected as exc:
                raise ProfileError(where, f"{column_path}.constant", str(exc)) from None
        source = own.get("from", name)
        if not isinstance(source, str):
            raise ProfileError(where, f"{column_path}.from", "must be a column name")
        merged = {key: entry[key] for key in _VALUE_OPTIONS if key in entry} | {
            key: own[key] for key in _VALUE_OPTIONS if key in own
        }
        if "nullTokens" in own:
            tokens = frozenset(_strings(own["nullTokens"], where, f"{column_path}.nullTokens"))
        elif data_type == "String":
            # Text keeps its text ("NA" may be a name) unless its column declares tokens.
            tokens = frozenset()
        else:
            tokens = table_tokens if table_tokens is not None else DEFAULT_NULL_TOKENS
        formats = merged.get("dateFormats")
        rules[name] = ColumnRule(
            None if fills and fills[0] != "from" else source,
            tokens,
            _value_parser(data_type, merged, where, column_path),
            constant,
            own.get("derived"),
            compile_rewrite(formats[0], merged.get("timeZone"))
            if data_type == "DateTime" and isinstance(formats, list) and len(formats) == 1
            else None,
        )
    readers: dict[str, str] = {}
    for name, rule in rules.items():
        if rule.source is None:
            continue
        key = rule.source if match_case else rule.source.casefold()
        if key in readers:
            raise ProfileError(
                where,
                f"{path}.columns.{name}.from",
                f"{rule.source!r} is already read into {readers[key]!r}; a file column fills "
                "one table column",
            )
        readers[key] = name
        if (rule.source if match_case else key) in (
            ignore if match_case else {i.casefold() for i in ignore}
        ):
            raise ProfileError(
                where, f"{path}.ignore", f"{rule.source!r} is both ignored and read into {name!r}"
            )
    return TableProfile(table.name, encoding, dialect, match_case, ignore, rules, dict(entry))


def merge(declared: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A table entry with ``override`` applied: its keys replace the declared ones, except
    ``columns`` and ``csv``, merged one level down."""
    merged = dict(declared)
    for key, value in override.items():
        if key in ("columns", "csv") and isinstance(value, dict):
            merged[key] = {**(declared.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def load_profiles(directory: Path) -> dict[str, dict[str, Any] | ProfileError]:
    """The profile files of ``directory``, as written: dataset name -> table -> entry, or the
    :class:`ProfileError` of a file that cannot be used (raised when that dataset's rows
    come: one broken file must not stop the others). Checked only in shape here;
    :func:`compile_profile` checks each entry against its table."""
    profiles: dict[str, dict[str, Any] | ProfileError] = {}
    if not directory.is_dir():
        return profiles
    for path in sorted(directory.glob(f"*{PROFILE_SUFFIX}")):
        name = path.name[: -len(PROFILE_SUFFIX)]
        try:
            profiles[name] = read_profile(path)
        except ProfileError as exc:
            profiles[name] = exc
    return profiles


def read_profile(path: Path) -> dict[str, Any]:
    """One profile file's tables (table -> entry), checked in shape."""
    where = str(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(where, "(file)", f"cannot be read as JSON: {exc}") from None
    body = _check_keys(body, {"tables"}, where, "(file)")
    tables = body.get("tables")
    if not isinstance(tables, dict):
        raise ProfileError(where, "tables", "must be an object: table name -> profile")
    return tables


def parse_override(text: str, where: str) -> dict[str, Any]:
    """A per-blob or per-request override given as JSON text (blob metadata, a query
    parameter): a :class:`ProfileError` when it is not a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ProfileError(where, "profile", f"is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProfileError(where, "profile", "must be a JSON object (a table's profile)")
    return value
