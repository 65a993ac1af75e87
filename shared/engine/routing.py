"""Where each table's rows go: Power BI, an Eventhouse (KQL database), or both (issue 18).

The dataset definition (``datasets/<Dataset>.json``) stays Power BI's own Create Dataset body
(an unknown property there is a 400 from the service), so destinations are a third file beside
it and its ingest profile, ``datasets/<Dataset>.destinations.json``::

    {"default": ["powerbi"],
     "tables": {"Product": ["powerbi", "eventhouse"]},
     "eventhouse": {"database": "Sales", "table_prefix": ""}}

- ``default``: the destinations of every table not listed under ``tables`` (default
  ``["powerbi"]``, today's behaviour);
- ``tables``: a table's own destinations, a non-empty list of :data:`DESTINATIONS`;
- ``eventhouse``: where that destination writes: ``database`` (default ``EVENTHOUSE_DATABASE``)
  and ``table_prefix`` (prepended to each table's name in the KQL database, default none).

No file: every table goes to Power BI only, exactly as before the file existed.

Everything is checked when the file is read, against the dataset's definition and the settings:
an unknown key or destination, a table the definition lacks, a table routed to the Eventhouse
while ``EVENTHOUSE_URI`` is not set or no database is named. The error
(:class:`RoutingError`, a :class:`~shared.errors.ConfigError`) names the file and the key. As
for profiles, one broken file does not stop the other datasets: :func:`load_routing` keeps the
error, and the rows of that dataset are refused with it when they come (dead-lettered, so
that a replay delivers them once the file is fixed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.engine.schema import DatasetDefinition
from shared.errors import ConfigError
from shared.settings import Settings

#: Suffix of a routing file beside its definition.
ROUTING_SUFFIX: Final = ".destinations.json"
#: The destinations a table may be routed to, in the order they are delivered.
POWERBI: Final = "powerbi"
EVENTHOUSE: Final = "eventhouse"
DESTINATIONS: Final = (POWERBI, EVENTHOUSE)
#: Without a file, or a table without an entry and no ``default``: today's behaviour.
DEFAULT: Final = (POWERBI,)

_FILE_KEYS: Final = frozenset({"default", "tables", "eventhouse"})
_EVENTHOUSE_KEYS: Final = frozenset({"database", "table_prefix"})


class RoutingError(ConfigError):
    """A routing file that cannot be used: ``where`` (the file) and ``key`` (the field)."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        super().__init__(where, f"{key}: {problem}")
        self.where = where
        self.key = key
        # "setting <file>" would mislead: the file is not a setting.
        self.message = f"{where}: {key}: {problem}"
        self.args = (self.message,)


@dataclass(frozen=True)
class EventhouseRoute:
    """Where the Eventhouse destination writes a dataset's tables."""

    database: str
    table_prefix: str = ""

    def table(self, name: str) -> str:
        """The KQL table that receives the rows of Power BI table ``name``."""
        return f"{self.table_prefix}{name}"


@dataclass(frozen=True)
class Routing:
    """A dataset's destinations per table (see the module). ``source`` is the file, or None
    for the default (no file)."""

    dataset: str
    default: tuple[str, ...] = DEFAULT
    tables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    eventhouse: EventhouseRoute | None = None
    source: str | None = None

    def destinations(self, table: str) -> tuple[str, ...]:
        """The destinations of ``table``'s rows, in delivery order."""
        return self.tables.get(table, self.default)

    def uses(self, destination: str) -> bool:
        """Whether any table of the dataset goes to ``destination``."""
        return destination in self.default or any(
            destination in chosen for chosen in self.tables.values()
        )


def _destinations(value: Any, where: str, key: str) -> tuple[str, ...]:
    """A list of destination names, checked: non-empty, known, each once; in delivery order."""
    if not isinstance(value, list) or not value:
        raise RoutingError(
            where, key, f"must be a non-empty list of destinations ({', '.join(DESTINATIONS)})"
        )
    for name in value:
        if name not in DESTINATIONS:
            raise RoutingError(
                where,
                key,
                f"unknown destination {name!r}; use {' or '.join(map(repr, DESTINATIONS))}",
            )
    if len(set(value)) != len(value):
        raise RoutingError(where, key, "names a destination twice")
    # One order whatever the file says, so accounting and logs read the same everywhere.
    return tuple(name for name in DESTINATIONS if name in value)


def parse_routing(
    body: Any, where: str, definition: DatasetDefinition | None, settings: Settings
) -> Routing:
    """A routing file's content (``body``, parsed JSON) checked against the dataset's
    ``definition`` and ``settings``; a :class:`RoutingError` naming ``where`` and the key."""
    if not isinstance(body, dict):
        raise RoutingError(where, "(file)", "must be a JSON object")
    unknown = sorted(set(body) - _FILE_KEYS)
    if unknown:
        raise RoutingError(where, unknown[0], f"unknown key; use {', '.join(sorted(_FILE_KEYS))}")
    if definition is None:
        raise RoutingError(
            where,
            "(file)",
            "there is no dataset definition beside it (the tables cannot be checked, and an "
            "Eventhouse table is created from the definition)",
        )
    default = _destinations(body["default"], where, "default") if "default" in body else DEFAULT
    tables_body = body.get("tables", {})
    if not isinstance(tables_body, dict):
        raise RoutingError(where, "tables", "must be an object: table name -> destinations")
    tables: dict[str, tuple[str, ...]] = {}
    for table, value in tables_body.items():
        if table not in definition.tables:
            raise RoutingError(
                where,
                f"tables.{table}",
                f"dataset {definition.name!r} has no such table (tables: "
                f"{', '.join(sorted(definition.tables))})",
            )
        tables[table] = _destinations(value, where, f"tables.{table}")
    options = body.get("eventhouse", {})
    if not isinstance(options, dict):
        raise RoutingError(where, "eventhouse", "must be an object (database, table_prefix)")
    unknown = sorted(set(options) - _EVENTHOUSE_KEYS)
    if unknown:
        raise RoutingError(
            where,
            f"eventhouse.{unknown[0]}",
            f"unknown key; use {', '.join(sorted(_EVENTHOUSE_KEYS))}",
        )
    for key in _EVENTHOUSE_KEYS & set(options):
        if not isinstance(options[key], str):
            raise RoutingError(where, f"eventhouse.{key}", "must be a string")
    routing = Routing(definition.name, default, tables, None, where)
    if not routing.uses(EVENTHOUSE):
        return routing
    key = (
        "default"
        if EVENTHOUSE in default
        else next(f"tables.{t}" for t, chosen in tables.items() if EVENTHOUSE in chosen)
    )
    try:
        eventhouse = settings.require_eventhouse()
    except ConfigError as error:
        raise RoutingError(where, key, f"routes rows to the Eventhouse, but {error}") from error
    database = options.get("database") or eventhouse.database
    if not database:
        raise RoutingError(
            where,
            "eventhouse.database",
            f"{key} routes rows to the Eventhouse, but no database is named (set it here, or "
            "EVENTHOUSE_DATABASE)",
        )
    route = EventhouseRoute(database, options.get("table_prefix", ""))
    return Routing(definition.name, default, tables, route, where)


def read_routing(path: Path, definition: DatasetDefinition | None, settings: Settings) -> Routing:
    """One routing file, read and checked (:func:`parse_routing`)."""
    where = str(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RoutingError(where, "(file)", f"cannot be read as JSON: {exc}") from None
    return parse_routing(body, where, definition, settings)


def load_routing(
    directory: Path, definitions: Mapping[str, DatasetDefinition], settings: Settings
) -> dict[str, Routing | RoutingError]:
    """The routing files of ``directory``: dataset name -> its routing, or the
    :class:`RoutingError` of a file that cannot be used (raised when that dataset's rows come:
    one broken file must not stop the others). A dataset without a file is not listed (it
    goes to Power BI only)."""
    found: dict[str, Routing | RoutingError] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"*{ROUTING_SUFFIX}")):
        name = path.name[: -len(ROUTING_SUFFIX)]
        try:
            found[name] = read_routing(path, definitions.get(name), settings)
        except RoutingError as error:
            found[name] = error
    return found


__all__ = [
    "DEFAULT",
    "DESTINATIONS",
    "EVENTHOUSE",
    "POWERBI",
    "ROUTING_SUFFIX",
    "EventhouseRoute",
    "Routing",
    "RoutingError",
    "load_routing",
    "parse_routing",
    "read_routing",
]
