"""KQL tables and JSON ingestion mappings from a Power BI dataset definition (issue 18).

The same ``datasets/<name>.json`` that creates a push dataset creates its tables in a KQL
database: one ``.create-merge table`` command and one ``.create-or-alter ... ingestion json
mapping`` per table, both idempotent, so running them again (every cold start, every new
column) is harmless:

- ``.create-merge table``: "Any column in <columns specification> that didn't previously exist
  in T will be added to the end of T's schema"; existing columns are never removed; "Any
  column ... that exists in T, but with a different data type will cause the command to fail"
  (https://learn.microsoft.com/kusto/management/create-merge-table-command).
- ``.create-or-alter table T ingestion json mapping "M" '...'``: "If the ingestion mapping
  doesn't exist, the command will create it. If the ingestion mapping already exists, the
  command will modify it" (https://learn.microsoft.com/kusto/management/create-or-alter-ingestion-mapping-command).
  Streaming ingestion only takes a pre-created mapping by reference ("Individual streaming
  ingestion requests don't accommodate inline data mappings",
  https://learn.microsoft.com/azure/data-explorer/ingest-data-streaming).

Names: identifiers of letters, digits, underscores, spaces, dots and dashes, 1 to 1024 long;
one with a special character, or that is a keyword or a literal (``where``, ``1day``), is
written ``['name']`` ("Identifier naming rules" and "Reference identifiers in queries",
https://learn.microsoft.com/kusto/query/schema-entities/entity-names). A Power BI name Kusto
cannot hold (``Price ($)``) is refused with a :class:`~shared.errors.ConfigError` naming it,
rather than renamed behind the user's back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shared.engine.schema import DatasetDefinition, TableSchema
from shared.errors import ConfigError

#: Power BI push column types (shared.engine.schema.TYPES) to Kusto scalar types
#: (https://learn.microsoft.com/kusto/query/scalar-data-types/): ``long`` is the signed 64-bit
#: integer, ``real`` the 64-bit float (alias ``double``), ``decimal`` "a 128-bit wide, decimal
#: number" (Power BI's Decimal is precision 28, scale 4, which it holds exactly), ``bool``,
#: ``datetime`` (always UTC; the validator already writes date-times as ISO 8601 UTC) and
#: ``string``.
KUSTO_TYPES: Final[dict[str, str]] = {
    "Int64": "long",
    "Double": "real",
    "Decimal": "decimal",
    "Boolean": "bool",
    "DateTime": "datetime",
    "String": "string",
}

#: The one JSON mapping each table gets (mappings belong to a table, so one name serves all).
MAPPING_NAME: Final = "powerbi_push_json"

#: An identifier that never needs quoting: the entity-names page's convention for names that
#: cannot be a keyword or a literal ("Use names that start with an uppercase letter (A to Z)"),
#: followed by letters, digits and underscores only.
_PLAIN = re.compile(r"[A-Z][A-Za-z0-9_]*")


def valid_name(name: str) -> bool:
    """Whether ``name`` can name a Kusto table or column (entity-names.md's rules; the
    ``__`` prefix and suffix are reserved: "KQL reserves all identifiers that start or end with
    a sequence of two underscore characters")."""
    return (
        0 < len(name) <= 1024
        and all(c.isalnum() or c in "_ .-" for c in name)
        and not name.startswith("__")
        and not name.endswith("__")
    )


def quote_name(name: str) -> str:
    """``name`` as a KQL identifier: bare when plain, else ``['name']``. Raises ValueError for a
    name Kusto cannot hold (the only characters needing an escape, ``'`` and ``\\``, are
    among those)."""
    if not valid_name(name):
        raise ValueError(f"{name!r} cannot name a Kusto table or column")
    return name if _PLAIN.fullmatch(name) else f"['{name}']"


def kql_string(text: str) -> str:
    """``text`` as a single-quoted KQL string literal: backslash and quote escaped, and line
    breaks written as ``\\n`` ("String data type", https://learn.microsoft.com/kusto/query/scalar-data-types/string)."""
    escaped = (
        text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    )
    return f"'{escaped}'"


@dataclass(frozen=True)
class KustoTable:
    """One table's commands: created or extended, its JSON mapping, its streaming policy."""

    name: str
    columns: tuple[tuple[str, str], ...]

    def create_merge(self) -> str:
        """``.create-merge table T (a:long, ['b c']:string)``."""
        spec = ", ".join(f"{quote_name(c)}:{t}" for c, t in self.columns)
        return f".create-merge table {quote_name(self.name)} ({spec})"

    def mapping(self) -> list[dict[str, object]]:
        """The JSON mapping: each column from the row's property of the same name. The
        documented current form (``column``, ``datatype``, ``Properties.Path``; json-mapping.md);
        ``$['name']`` reads a property whatever characters it has."""
        return [
            {"column": c, "datatype": t, "Properties": {"Path": f"$['{c}']"}}
            for c, t in self.columns
        ]

    def mapping_json(self) -> str:
        """The mapping as compact JSON."""
        return json.dumps(self.mapping(), separators=(",", ":"), ensure_ascii=False)

    def create_mapping(self) -> str:
        """``.create-or-alter table T ingestion json mapping "powerbi_push_json" '[...]'``."""
        return (
            f".create-or-alter table {quote_name(self.name)} ingestion json mapping "
            f'"{MAPPING_NAME}" {kql_string(self.mapping_json())}'
        )

    def enable_streaming(self) -> str:
        """``.alter table T policy streamingingestion enable`` (ingest-data-streaming.md, "Enable
        streaming ingestion on a table"). Needed on Azure Data Explorer, where the cluster's
        streaming capability must also be on; a Fabric Eventhouse has streaming on already ("If
        you're using Fabric or a free cluster, streaming ingestion is automatically enabled",
        https://learn.microsoft.com/kusto/api/get-started/app-managed-streaming-ingest)."""
        return f".alter table {quote_name(self.name)} policy streamingingestion enable"

    def commands(self, *, streaming_policy: bool) -> list[str]:
        """Every command that makes the table ready, in order; all idempotent."""
        out = [self.create_merge(), self.create_mapping()]
        if streaming_policy:
            out.append(self.enable_streaming())
        return out


def kusto_table(schema: TableSchema, name: str | None = None) -> KustoTable:
    """The Kusto table for a dataset table (named ``name``, default the same name). A name
    Kusto cannot hold is a :class:`ConfigError` that names it."""
    target = schema.name if name is None else name
    if not valid_name(target):
        raise ConfigError(
            "destinations",
            f"table {target!r} cannot be a Kusto table name: use 1 to 1024 letters, digits, "
            "spaces, dots, dashes or underscores (not starting or ending with '__')",
        )
    bad = [c.name for c in schema.columns if not valid_name(c.name)]
    if bad:
        raise ConfigError(
            "destinations",
            f"table {schema.name!r}: column(s) {', '.join(map(repr, bad))} cannot be Kusto "
            "column names: use letters, digits, spaces, dots, dashes or underscores",
        )
    return KustoTable(target, tuple((c.name, KUSTO_TYPES[c.data_type]) for c in schema.columns))


def tables_of(definition: DatasetDefinition, prefix: str = "") -> dict[str, KustoTable]:
    """Every table of a definition, by its Power BI name; ``prefix`` goes before each Kusto
    table name (several datasets in one database)."""
    return {name: kusto_table(schema, prefix + name) for name, schema in definition.tables.items()}


__all__ = [
    "KUSTO_TYPES",
    "MAPPING_NAME",
    "KustoTable",
    "kql_string",
    "kusto_table",
    "quote_name",
    "tables_of",
    "valid_name",
]


def compare_columns(
    target: KustoTable, live: Mapping[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The definition's columns (``target``) against a KQL table's (``live``: name -> type):
    those missing from it, and those typed otherwise (each described)."""
    added: list[str] = []
    conflicts: list[str] = []
    for column, kusto_type in target.columns:
        found = live.get(column)
        if found is None:
            added.append(column)
        elif canonical_type(found) != canonical_type(kusto_type):
            conflicts.append(
                f"column {column!r} is {canonical_type(found)} in the KQL database, "
                f"{kusto_type} in the definition"
            )
    return tuple(added), tuple(conflicts)


#: Spellings of the same Kusto type (https://learn.microsoft.com/kusto/query/scalar-data-types/:
#: ``real`` alias ``double``, ``bool`` alias ``boolean``, ``datetime`` alias ``date``), and the
#: .NET names a schema may carry; compared by the canonical name.
_ALIASES: dict[str, str] = {
    "double": "real",
    "boolean": "bool",
    "date": "datetime",
    "int64": "long",
    "system.int64": "long",
    "system.double": "real",
    "system.decimal": "decimal",
    "system.data.sqltypes.sqldecimal": "decimal",
    "system.boolean": "bool",
    "system.sbyte": "bool",
    "system.datetime": "datetime",
    "system.string": "string",
}


def canonical_type(name: str) -> str:
    """A Kusto type name in one spelling (``double`` -> ``real``)."""
    lowered = name.strip().lower()
    return _ALIASES.get(lowered, lowered)
