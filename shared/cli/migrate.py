"""``python -m shared migrate --dataset D``: make a dataset's tables ready in the Eventhouse and
route them there (issue 18, "Moving to Fabric").

1. Load ``DATASETS_DIR/<D>.json`` with the runtime's loader
   (:func:`shared.engine.schema.load_definitions`); choose every table, or ``--tables``.
2. Work out the routing file that results: the existing ``<D>.destinations.json`` (kept as it
   is: ``default``, ``eventhouse``, other tables) with each chosen table set to
   ``["powerbi", "eventhouse"]``, or ``["eventhouse"]`` with ``--eventhouse-only``; checked with
   the runtime's :func:`~shared.engine.routing.parse_routing` before anything is done, which also
   gives the database and the table prefix.
3. Ask the Eventhouse (read only): does it answer (``.show version``), does the database exist
   (``.show tables``), which chosen tables exist and with which columns (``.show table T schema
   as json``). A column the definition types otherwise stops the whole command before any change:
   ``.create-merge table`` would refuse it ("Any column ... that exists in T, but with a
   different data type will cause the command to fail",
   https://learn.microsoft.com/kusto/management/create-merge-table-command).
4. Unless ``--dry-run``: :meth:`EventhouseClient.ensure_table` per table (``.create-merge
   table``, the JSON mapping, the streaming policy where it is ours to set; all idempotent),
   then the routing file, written atomically and only when it changes.

Rows already in Power BI are not copied: the push-dataset API has no operation that reads rows
(its operations create and list datasets and tables, add rows and delete them all;
``/work/shared/reference/powerbi-push-api.md`` §2), so the KQL table starts empty and fills from
the next push on.

Exit codes: 0 done (or nothing to do), 2 a problem named on one line (settings, an unknown
dataset or table, a routing file that cannot be used, the Eventhouse unreachable, a missing
database, a conflicting column), 1 the Eventhouse refused a command (its answer printed).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shared.destinations.kusto_schema import (
    MAPPING_NAME,
    KustoTable,
    canonical_type,
    compare_columns,
    kusto_table,
)
from shared.engine.routing import EVENTHOUSE, POWERBI, ROUTING_SUFFIX, Routing, parse_routing
from shared.engine.schema import DatasetDefinition, load_definitions
from shared.errors import AuthError, ConfigError, NotFoundError, PushError, TransientError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.destinations.eventhouse import EventhouseClient

#: What the command says about rows already in Power BI (also in the README).
NOT_COPIED = (
    "rows already in Power BI are not copied: the push-dataset API cannot read rows back, so "
    "the KQL table fills from the next push on"
)


class MigrateError(Exception):
    """A problem the operator must fix first, told on one line (exit 2)."""


# --- the routing file ---------------------------------------------------------------------


def wanted_destinations(eventhouse_only: bool) -> list[str]:
    """The destinations migrate gives a table: both, or the Eventhouse alone."""
    return [EVENTHOUSE] if eventhouse_only else [POWERBI, EVENTHOUSE]


def merge_routing(
    existing: Mapping[str, Any] | None, tables: Sequence[str], destinations: Sequence[str]
) -> dict[str, Any]:
    """The routing file's content once each of ``tables`` goes to ``destinations``: every other
    key of ``existing`` (``default``, ``eventhouse``, other tables) kept as it is, in its order;
    new tables appended. Pure: ``existing`` is not changed. Running it on its own result gives
    the same result (idempotent)."""
    body: dict[str, Any] = json.loads(json.dumps(dict(existing))) if existing else {}
    chosen = dict(body.get("tables") or {})
    for table in tables:
        chosen[table] = list(destinations)
    body["tables"] = chosen
    return body


def read_routing_body(path: Path) -> dict[str, Any] | None:
    """The existing routing file's JSON object, or None when there is no file; a
    :class:`MigrateError` naming it when it cannot be read (it is then left alone)."""
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MigrateError(f"{path}: cannot be read as JSON ({exc}); fix or remove it") from None
    if not isinstance(body, dict):
        raise MigrateError(f"{path}: must be a JSON object; fix or remove it")
    return body


def write_atomically(path: Path, body: Mapping[str, Any]) -> None:
    """Write ``body`` as JSON to ``path`` through a temporary file in the same directory and
    ``os.replace`` (atomic on POSIX and Windows), so a reader (the app at its next cold start)
    sees the old file or the new one, never half of one."""
    text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- the Eventhouse side ------------------------------------------------------------------


@dataclass(frozen=True)
class TableState:
    """A dataset table against its KQL table: ``exists``; ``added`` the definition's columns
    the KQL table lacks (``.create-merge`` adds them); ``conflicts`` columns typed otherwise
    (``.create-merge`` refuses them), each as ``"c is long in the KQL database, string in the
    definition"``."""

    table: str
    kusto: KustoTable
    exists: bool
    added: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


def live_tables(client: EventhouseClient, database: str) -> set[str]:
    """The tables of ``database`` (``.show tables``); a :class:`NotFoundError` when the
    database does not exist."""
    return {str(row.get("TableName")) for row in client.execute(".show tables", database)}


def inspect(
    client: EventhouseClient, database: str, targets: Mapping[str, KustoTable]
) -> list[TableState]:
    """Each of ``targets`` (dataset table -> KQL table) as the database has it (read only)."""
    present = live_tables(client, database)
    states: list[TableState] = []
    for table, target in targets.items():
        if target.name not in present:
            states.append(TableState(table, target, exists=False))
            continue
        added, conflicts = compare_columns(target, client.columns(target.name, database))
        states.append(TableState(table, target, True, added, conflicts))
    return states


# --- the command --------------------------------------------------------------------------


@dataclass
class Plan:
    """What migrate does for one dataset (and, after a run, did)."""

    dataset: str
    database: str
    routing_path: Path
    before: dict[str, Any] | None
    after: dict[str, Any]
    routing: Routing
    definition: DatasetDefinition
    tables: list[TableState] = field(default_factory=list)

    @property
    def routing_changes(self) -> bool:
        """Whether the routing file would be written (absent, or different content)."""
        return self.before != self.after

    def destinations_before(self, table: str) -> list[str]:
        """A table's destinations under the existing file (Power BI only without one)."""
        if self.before is None:
            return [POWERBI]
        chosen = (self.before.get("tables") or {}).get(table)
        if chosen is not None:
            return list(chosen)
        return list(self.before.get("default") or [POWERBI])


def add_parser(commands: Any) -> None:
    """The ``migrate`` subcommand's arguments."""
    parser = commands.add_parser(
        "migrate",
        help="create a dataset's tables in the Eventhouse and route them there",
        description="From DATASETS_DIR/<dataset>.json: create (or extend) each table in the "
        "KQL database (EVENTHOUSE_URI, EVENTHOUSE_DATABASE), then write <dataset>.destinations"
        ".json so those tables go to Power BI and the Eventhouse (or the Eventhouse only). "
        "Idempotent. Rows already in Power BI are not copied.",
    )
    parser.add_argument("--dataset", required=True, help="the dataset's name (its definition's)")
    parser.add_argument("--tables", help="comma-separated table names (default: every table)")
    parser.add_argument(
        "--eventhouse-only",
        action="store_true",
        help='route the tables to ["eventhouse"] only (default: ["powerbi", "eventhouse"])',
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be done; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")


def prepare(
    settings: Settings,
    dataset: str,
    tables: Sequence[str] | None,
    eventhouse_only: bool,
) -> Plan:
    """The plan without asking the Eventhouse: the definition, the chosen tables, the routing
    file before and after (checked). A :class:`MigrateError` for anything the operator fixes."""
    if settings.eventhouse is None:
        raise MigrateError(
            "EVENTHOUSE_URI is not set: set it to the KQL database's query URI (Fabric: the "
            "Eventhouse's Query URI; Azure Data Explorer: the cluster URI), and "
            "EVENTHOUSE_DATABASE to the database"
        )
    try:
        definitions = load_definitions(settings.datasets_dir)
    except ConfigError as error:
        raise MigrateError(str(error)) from None
    definition: DatasetDefinition | None = definitions.get(dataset)
    if definition is None:
        known = ", ".join(sorted(definitions)) or "none"
        raise MigrateError(
            f"no definition of dataset {dataset!r} in {settings.datasets_dir} (datasets: {known}); "
            "python -m shared infer writes one"
        )
    chosen = list(definition.tables) if not tables else list(dict.fromkeys(tables))
    unknown = [t for t in chosen if t not in definition.tables]
    if unknown:
        raise MigrateError(
            f"dataset {dataset!r} has no table {unknown[0]!r} (tables: "
            f"{', '.join(definition.tables)})"
        )
    path = settings.datasets_dir / f"{dataset}{ROUTING_SUFFIX}"
    before = read_routing_body(path)
    after = merge_routing(before, chosen, wanted_destinations(eventhouse_only))
    try:
        routing = parse_routing(after, str(path), definition, settings)
    except ConfigError as error:
        raise MigrateError(str(error)) from None
    route = routing.eventhouse
    assert route is not None  # every chosen table goes to the Eventhouse: parse_routing checked
    try:
        targets = {t: kusto_table(definition.tables[t], route.table(t)) for t in chosen}
    except ConfigError as error:
        raise MigrateError(f"{path}: {error.message}") from None
    plan = Plan(dataset, route.database, path, before, after, routing, definition)
    # Until the Eventhouse is asked, every table is "to create".
    plan.tables = [TableState(t, k, exists=False) for t, k in targets.items()]
    return plan


def _unreachable(error: PushError, uri: str) -> MigrateError | None:
    """The one-line error for an Eventhouse that cannot be reached or refuses the identity."""
    if isinstance(error, TransientError) and error.status is None:
        return MigrateError(
            f"the Eventhouse at {uri} is unreachable ({error}); check EVENTHOUSE_URI and that "
            "this machine reaches it"
        )
    if isinstance(error, AuthError):
        return MigrateError(
            f"the Eventhouse at {uri} refused this identity ({error}); creating tables needs "
            "Database User (or Admin) on the database"
        )
    return None


def execute(
    plan: Plan,
    client: EventhouseClient,
    *,
    dry_run: bool,
    progress: Callable[[str], None],
) -> Plan:
    """Ask the Eventhouse, refuse conflicts, then (unless ``dry_run``) make each table ready
    and write the routing file. ``progress`` receives one line per step."""
    uri = client.uri
    try:
        client.ping()
    except PushError as error:
        raise (_unreachable(error, uri) or error) from None
    try:
        plan.tables = inspect(client, plan.database, {s.table: s.kusto for s in plan.tables})
    except NotFoundError:
        raise MigrateError(
            f"database {plan.database!r} does not exist at {uri}: create it (Fabric: a KQL "
            "database in the Eventhouse), or name another in EVENTHOUSE_DATABASE or "
            f"{plan.routing_path.name}'s eventhouse.database"
        ) from None
    except PushError as error:
        raise (_unreachable(error, uri) or error) from None
    for state in plan.tables:
        if state.conflicts:
            raise MigrateError(
                f"KQL table {state.kusto.name!r} in {plan.database} already exists with "
                f"{state.conflicts[0]}; nothing was changed (rename or drop that column or "
                "table, or use a table_prefix in the routing file)"
            )
    verb = "would " if dry_run else ""
    for state in plan.tables:
        line = f"{state.table} -> {plan.database}.{state.kusto.name}: {_action(state, verb)}"
        if not dry_run:
            client.ensure_table(
                plan.definition, state.table, database=plan.database, name=state.kusto.name
            )
            line += f", mapping {MAPPING_NAME}"
        progress(line)
    summary = ", ".join(
        f"{t}: {'+'.join(plan.destinations_before(t))} -> {'+'.join(plan.after['tables'][t])}"
        for t in (s.table for s in plan.tables)
    )
    if not plan.routing_changes:
        progress(f"{plan.routing_path}: unchanged ({summary})")
    elif dry_run:
        progress(f"{plan.routing_path}: would write ({summary})")
    else:
        write_atomically(plan.routing_path, plan.after)
        progress(f"{plan.routing_path}: written ({summary})")
    return plan


def _action(state: TableState, verb: str) -> str:
    if not state.exists:
        done = "create" if verb else "created"
        return f"{verb}{done} ({len(state.kusto.columns)} columns)"
    if state.added:
        done = "add" if verb else "added"
        return f"exists; {verb}{done} column(s) {', '.join(state.added)}"
    return "exists with the definition's columns"


def report(plan: Plan, dry_run: bool) -> dict[str, Any]:
    """The run as JSON."""
    return {
        "dataset": plan.dataset,
        "database": plan.database,
        "dry_run": dry_run,
        "tables": [
            {
                "table": s.table,
                "kusto_table": s.kusto.name,
                "existed": s.exists,
                "columns_added": list(s.added) if s.exists else [c for c, _ in s.kusto.columns],
                "destinations_before": plan.destinations_before(s.table),
                "destinations": plan.after["tables"][s.table],
            }
            for s in plan.tables
        ],
        "routing_file": str(plan.routing_path),
        "routing_changed": plan.routing_changes,
        "rows_copied": 0,
        "note": NOT_COPIED,
    }


def run(
    args: argparse.Namespace,
    env: Mapping[str, str],
    *,
    stdout: TextIO,
    stderr: TextIO,
    client_factory: Callable[[Settings], EventhouseClient] | None = None,
) -> int:
    """The ``migrate`` command over the settings in ``env``; see the module for exit codes."""
    try:
        settings = Settings.from_env(env)
        tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
        plan = prepare(settings, args.dataset, tables, args.eventhouse_only)
        client = (client_factory or _client)(settings)
        # Progress goes with the text report, or to stderr beside a JSON one.
        out = stderr if args.json else stdout
        with client:
            execute(
                plan,
                client,
                dry_run=args.dry_run,
                progress=lambda line: print(line, file=out, flush=True),
            )
    except MigrateError as error:
        print(f"migrate: {error}", file=stderr)
        return 2
    except ConfigError as error:
        print(f"migrate: configuration error: {error}", file=stderr)
        return 2
    except PushError as error:
        print(f"migrate: the Eventhouse refused: {error}", file=stderr)
        return 1
    if args.json:
        print(json.dumps(report(plan, args.dry_run), indent=2, ensure_ascii=False), file=stdout)
    else:
        print(f"note: {NOT_COPIED}", file=stdout)
    return 0


def _client(settings: Settings) -> EventhouseClient:
    from shared.destinations.eventhouse import EventhouseClient
    from shared.stores import storage

    return EventhouseClient.from_settings(settings, storage.managed_identity)


__all__ = [
    "NOT_COPIED",
    "MigrateError",
    "Plan",
    "TableState",
    "add_parser",
    "canonical_type",
    "compare_columns",
    "execute",
    "inspect",
    "live_tables",
    "merge_routing",
    "prepare",
    "read_routing_body",
    "report",
    "run",
    "wanted_destinations",
    "write_atomically",
]
