"""The Kusto (Azure Data Explorer / Fabric Eventhouse KQL database) surface of the emulator:
the endpoints azure-kusto-data and azure-kusto-ingest 6.0.4 call, answered in the shapes they
parse. Facts and sources: /work/notes-kusto-facts.md ([AKP] the client sources, [DXD] the
dataexplorer-docs; section numbers below are that file's).

====================================  ===================================================
``GET /v1/rest/auth/metadata``        404: the client then uses public-cloud defaults (§1.1)
``POST /v1/rest/mgmt``                management commands (§1.4), :data:`COMMANDS`
``POST /v2/rest/query``               the KQL subset of ``kusto_engine.SUPPORTED_QUERY`` (§1.3)
``POST /v1/rest/ingest/{db}/{t}``     streaming ingestion (§1.5), json and multijson
``/_emulator/kusto/...``              emulator-only: state, faults, flush, databases, reset
====================================  ===================================================

Queued ingestion (§1.7): ``.get ingestion resources`` hands out SAS URLs of a container and
queues in Azure Storage (Azurite in tests; the ingest client's URL parsing works with Azurite's
path-style URLs, checked in tests/emulator/test_kusto_queued.py). A worker polls the
``SecuredReadyForAggregationQueue``, batches messages per table for ``batch_seconds`` (or up to
the item and size caps), reads each blob, applies the mapping, appends the rows and deletes the
messages; a failed blob is reported on the ``FailedIngestionsQueue`` in the shape
``azure.kusto.ingest.status.FailureMessage`` reads.

Tables are kept in memory, not in the ``--db`` SQLite file: the file holds Power BI state whose
schema tests pin, and a KQL database here is a test double refilled by each run; persisting it
is left for when someone needs it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from emulator.faults import FaultPlan
from emulator.identity import TokenIssuer, TokenRejected
from emulator.kusto_engine import (
    BAD_REQUEST,
    DOTNET_TYPES,
    KustoDatabase,
    KustoError,
    KustoTable,
    MappingColumn,
    Result,
    bad_request,
    map_records,
    parse_columns,
    parse_mapping,
    parse_records,
    run_query,
    syntax_error,
    table_not_found,
    to_json,
    unquote_name,
)

log = logging.getLogger("emulator.kusto")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The Kusto audiences accepted besides the cluster's own URI: the public-cloud default the
#: client uses when the auth metadata is 404 (§2.2, [AKP] data/_cloud_settings.py
#: DEFAULT_KUSTO_SERVICE_RESOURCE_ID) and the one of the docs' az-cli examples (§2.2).
KUSTO_AUDIENCES = ("https://kusto.kusto.windows.net", "https://api.kusto.windows.net")
#: "The data size limit for a streaming ingestion request is 4 MB" ([DXD]
#: ingest-data-streaming.md, §3.1). Applied to the body as sent (gzip): the Python client
#: decides streaming vs queued on the compressed size with the same 4 MiB constant
#: (MAX_STREAMING_SIZE_IN_BYTES, §1.8), and the managed-streaming article's limit is on the
#: payload "regardless of format or compression".
MAX_STREAMING_BYTES = 4 * 1024 * 1024
#: Cap on a decompressed streaming body or queued blob: "If a single string value in a record,
#: or the entire record, exceeds the allowed data limit of 64MB, ingestion fails" ([DXD]
#: string.md); a larger whole payload is refused rather than held in memory.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
#: Batching defaults of the service: "5 minutes maximum delay time, 500 items, total size of
#: 1 GB" ([DXD] kusto/management/batching-policy.md, §3.4). The emulator's delay defaults to
#: one second (tests); the item and size caps are the service's.
DEFAULT_BATCH_SECONDS = 1.0
MAX_BATCH_ITEMS = 500
MAX_BATCH_RAW_BYTES = 1024 * 1024 * 1024
#: Ingestion resource names (§1.7.2; the ingest client needs all five non-empty).
CONTAINER = "kusto-tempstorage"
READY_QUEUE = "readyforaggregation-secured"
FAILED_QUEUE = "failedingestions"
SUCCESS_QUEUE = "successfulingestions"
STATUS_TABLE = "ingestionsstatus"
#: What ``.show version`` reports (§1.4: columns of the SDK's fixture).
BUILD_VERSION = "1.0.0.0"
#: Emulator-only streaming capability values (see :class:`KustoConfig`).
STREAMING_MODES = ("policy", "on", "off")


@dataclass
class KustoConfig:
    """How the Kusto surface starts."""

    #: Databases that exist (the service refuses others: 400 BadRequest_DatabaseNotExist).
    databases: list[str] = field(default_factory=lambda: ["Sales"])
    #: "policy": streaming needs the table or database policy (ADX, [DXD]
    #: streaming-ingestion-policy.md); "on": always enabled ("If you're using Fabric or a free
    #: cluster, streaming ingestion is automatically enabled", app-managed-streaming-ingest.md);
    #: "off": the cluster capability is off, the endpoint answers 404 (§3.2).
    streaming: str = "policy"
    #: Storage connection string for queued ingestion (Azurite); None: queued ingestion is off
    #: and ``.get ingestion resources`` is refused.
    storage: str | None = None
    batch_seconds: float = DEFAULT_BATCH_SECONDS
    poll_seconds: float = 0.2


class KustoService:
    """The state and routes of the Kusto surface."""

    def __init__(
        self,
        config: KustoConfig,
        tokens: TokenIssuer,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        if config.streaming not in STREAMING_MODES:
            raise ValueError(f"streaming must be one of {', '.join(STREAMING_MODES)}")
        self.config = config
        self.tokens = tokens
        self.changed = changed
        self.databases: dict[str, KustoDatabase] = {}
        for name in config.databases:
            self.add_database(name)
        self.faults = FaultPlan()
        self.counters: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []
        #: Per table (``(database, table)``, lower-cased database): the streaming ingestions
        #: that stored rows and then answered 500 (``accept_then_fail``), as the positions of
        #: those rows, so a test can tell a duplicate the client could not avoid (it was told
        #: the rows failed) from one it made (Power BI's surface keeps the same, app.py).
        self.answers_lost: dict[tuple[str, str], list[dict[str, int]]] = {}
        self.storage = KustoStorage(config.storage) if config.storage else None
        #: Database roles by principal (a token's ``appid`` or ``oid``), set through
        #: ``/_emulator/kusto/principals``; empty: every authenticated caller is an admin.
        self.principals: dict[str, frozenset[str]] = {}
        #: Who created each table (``(database, table)``, lower-cased database): Kusto makes
        #: a table's creator its Table Admin ([DXD] access-control/role-based-access-control).
        self.table_admins: dict[tuple[str, str], set[str]] = {}
        self.batches: dict[tuple[str, ...], Batch] = {}
        self._worker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add_database(self, name: str) -> KustoDatabase:
        """Create a database (no-op when it exists, case-insensitively as Kusto names are)."""
        existing = self._database_or_none(name)
        if existing is not None:
            return existing
        database = KustoDatabase(name)
        self.databases[name.lower()] = database
        return database

    def _database_or_none(self, name: str) -> KustoDatabase | None:
        return self.databases.get(name.lower())

    def database(self, name: str | None) -> KustoDatabase:
        """The database, or ``DatabaseNotFoundException`` (400 ``BadRequest_DatabaseNotExist``,
        permanent; [DXD] kusto-data-client-errors.md, §3.3)."""
        database = self._database_or_none(name or "")
        if database is None:
            raise bad_request(
                f"Database '{name}' was not found.",
                "BadRequest_DatabaseNotExist",
                "Kusto.Data.Exceptions.DatabaseNotFoundException",
            )
        return database

    def table(self, database: KustoDatabase, name: str) -> KustoTable:
        table = database.tables.get(name)
        if table is None:
            raise table_not_found(database.name, name)
        return table

    def count(self, key: str, amount: int = 1) -> None:
        self.counters[key] += amount
        self.changed()

    # -- routes -----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register the Kusto routes and the worker's start and stop."""
        app.router.add_get("/v1/rest/auth/metadata", self.auth_metadata)
        app.router.add_post("/v1/rest/mgmt", self._kusto(self.mgmt, "Mgmt"))
        app.router.add_post("/v2/rest/query", self._kusto(self.query, "Query"))
        app.router.add_post(
            "/v1/rest/ingest/{database}/{table}", self._kusto(self.ingest, "StreamingIngest")
        )
        app.router.add_get("/_emulator/kusto/state", self.state)
        app.router.add_get("/_emulator/kusto/faults", self.get_faults)
        app.router.add_put("/_emulator/kusto/faults", self.set_faults)
        app.router.add_delete("/_emulator/kusto/faults", self.clear_faults)
        app.router.add_post("/_emulator/kusto/flush", self.flush)
        app.router.add_post("/_emulator/kusto/databases", self.post_database)
        app.router.add_post("/_emulator/kusto/reset", self.reset)
        app.router.add_get("/_emulator/kusto/principals", self.get_principals)
        app.router.add_put("/_emulator/kusto/principals", self.set_principals)
        app.router.add_delete("/_emulator/kusto/principals", self.clear_principals)
        app.router.add_get("/_emulator/kusto/tables/{database}/{table}/rows", self.rows)
        app.on_startup.append(lambda _app: self.start())
        app.on_shutdown.append(lambda _app: self.stop())

    async def start(self) -> None:
        """Create the storage resources and start polling the ingestion queue."""
        if self.storage is not None:
            await self.storage.prepare()
            self._worker = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self.storage is not None:
            await self.storage.close()

    def _kusto(self, handler: Handler, operation: str) -> Handler:
        """Wrap a Kusto handler: the token check, faults, Kusto's error shape, and the headers
        every answer carries ("x-ms-client-request-id ... x-ms-activity-id", [DXD]
        response-v2.md)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            client_request_id = request.headers.get("x-ms-client-request-id") or str(uuid.uuid4())
            activity_id = str(uuid.uuid4())
            try:
                request["kusto_claims"] = self._authenticate(request)
                response = await self._with_faults(request, handler, operation)
            except KustoError as exc:
                if exc.status == 429:
                    self.count("throttled")
                if exc.status in (401, 403):
                    self.count("auth_failures")
                response = web.json_response(
                    exc.body(
                        {
                            "timestamp": datetime.now(UTC).isoformat(),
                            "serviceAlias": "EMULATOR",
                            "clientRequestId": client_request_id,
                            "activityId": activity_id,
                        }
                    ),
                    status=exc.status,
                )
                if exc.status == 401:
                    response.headers["WWW-Authenticate"] = 'Bearer realm="", error="invalid_token"'
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.path)
                response = web.json_response(
                    KustoError(
                        500,
                        "General_InternalServerError",
                        "An internal error occurred.",
                        "The emulator failed; see its log.",
                        "Kusto.Data.Exceptions.KustoServiceException",
                        permanent=False,
                    ).body({"clientRequestId": client_request_id, "activityId": activity_id}),
                    status=500,
                )
            response.headers["x-ms-client-request-id"] = client_request_id
            response.headers["x-ms-activity-id"] = activity_id
            return response

        return wrapped

    def audiences(self, request: web.Request) -> tuple[str, ...]:
        """Accepted ``aud`` values: the defaults and the cluster's own URI, "the cluster URI
        without port information and path" ([DXD] authenticate-with-msal.md, §2.2)."""
        host = request.url.host or "127.0.0.1"
        own = tuple(f"{scheme}://{host}" for scheme in ("https", "http"))
        return tuple(a + tail for a in (*KUSTO_AUDIENCES, *own) for tail in ("", "/"))

    def _authenticate(self, request: web.Request) -> dict[str, Any]:
        try:
            return self.tokens.verify(request.headers.get("Authorization"), self.audiences(request))
        except TokenRejected as exc:
            # Kusto answers an absent or unacceptable token 401 ("Client needs to authenticate
            # first", [DXD] response.md); the client turns any 401 into KustoServiceError
            # ("401. Missing adequate access rights.", §1.6).
            raise KustoError(
                401,
                "Unauthorized",
                "Request is not authorized.",
                exc.message,
                "Kusto.Data.Exceptions.KustoClientAuthenticationException",
            ) from None

    def _authorize(
        self, request: web.Request, role: str, db: str | None, operation: str, table: str = ""
    ) -> None:
        """Refuse the caller 403 unless one of its database roles allows ``role`` (see
        :data:`ROLES`); no principals configured: everyone may do everything, as before."""
        if not self.principals:
            return
        claims: dict[str, Any] = request.get("kusto_claims") or {}
        keys = {str(claims[k]) for k in ("appid", "oid") if claims.get(k)}
        granted: set[str] = set()
        for key in keys:
            for held in self.principals.get(key, frozenset()):
                granted |= ROLES[held]
        if role in granted:
            return
        if role in ("admin", "ingestor") and keys & self.table_admins.get(
            ((db or "").lower(), table), set()
        ):
            return  # the table's creator is its Table Admin, which includes Table Ingestor
        who = f"aadapp={claims.get('appid')}" if claims.get("appid") else "the caller"
        raise KustoError(
            403,
            "Forbidden",
            "Caller is not authorized to perform this action",
            f"Principal '{who}' is not authorized to perform operation '{operation}' on "
            f"'{db or 'the cluster'}' (it needs the {role} role; it has "
            f"{', '.join(sorted(self._held(keys))) or 'none'}).",
            "Kusto.DataNode.Exceptions.UnauthorizedDatabaseAccessException",
        )

    def _held(self, keys: set[str]) -> set[str]:
        return {role for key in keys for role in self.principals.get(key, frozenset())}

    async def _with_faults(
        self, request: web.Request, handler: Handler, operation: str
    ) -> web.StreamResponse:
        plan = self.faults
        fault = plan.draw() if plan.all_operations or operation == "StreamingIngest" else None
        delay = plan.draw_latency()
        if delay:
            await asyncio.sleep(delay)
        if fault is None:
            return await handler(request)
        self.count(f"fault_{fault}")
        if fault == "throttle":
            await request.read()
            # 429 TooManyRequests: "Request has been denied because of throttling" ([DXD]
            # response.md); KustoRequestThrottledException, "Permanence: False" ([DXD]
            # kusto-data-client-errors.md). No Retry-After: none is documented (§3.3).
            raise KustoError(
                429,
                "TooManyRequests",
                "Request has been denied because of throttling.",
                "The request was throttled (injected by the emulator's fault plan).",
                "Kusto.Data.Exceptions.KustoRequestThrottledException",
                permanent=False,
            )
        if fault in ("error_500", "error_503"):
            await request.read()
            status = 500 if fault == "error_500" else 503
            raise KustoError(
                status,
                "General_InternalServerError" if status == 500 else "ServiceUnavailable",
                "Service encountered an error." if status == 500 else "Service is unavailable.",
                f"Injected {status} (the emulator's fault plan).",
                "Kusto.Data.Exceptions.KustoServiceException",
                permanent=False,
            )
        if fault == "drop":
            await request.read()
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        # accept_then_fail: the work is done, then the answer is lost (a 500 after the fact).
        done = await handler(request)
        if operation == "StreamingIngest":
            self._answer_lost(request, done)
        raise KustoError(
            500,
            "General_InternalServerError",
            "Service encountered an error.",
            "Injected: the request was processed, then the answer failed.",
            "Kusto.Data.Exceptions.KustoServiceException",
            permanent=False,
        )

    def _answer_lost(self, request: web.Request, done: web.StreamResponse) -> None:
        """Record the rows a streaming ingestion stored before its answer was replaced by a
        500: the last ``ConsumedRecordsCount`` rows of the table (the handler extends the
        table and answers without awaiting in between, so no other request's rows follow)."""
        body = getattr(done, "body", None)
        if not isinstance(body, bytes):
            return
        database = self._database_or_none(request.match_info["database"])
        table = database.tables.get(request.match_info["table"]) if database else None
        if database is None or table is None:
            return
        count = int(json.loads(body)["Tables"][0]["Rows"][0][0])
        key = (database.name.lower(), table.name)
        self.answers_lost.setdefault(key, []).append(
            {"offset": len(table.rows) - count, "count": count}
        )

    async def auth_metadata(self, request: web.Request) -> web.Response:
        """404: "not all proxies implement the metadata endpoint", and the client then uses
        the public-cloud defaults (audience https://kusto.kusto.windows.net) (§1.1)."""
        return web.Response(status=404, text="")

    # -- query and management ---------------------------------------------------------------

    async def _request_body(self, request: web.Request) -> tuple[str | None, str]:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise bad_request("The request body is not valid JSON.") from None
        if not isinstance(body, dict) or not isinstance(body.get("csl"), str):
            raise bad_request("The request body must be a JSON object with 'csl'.")
        db = body.get("db")
        return (db if isinstance(db, str) else None), body["csl"]

    async def query(self, request: web.Request) -> web.Response:
        """``POST /v2/rest/query``: a frame array (§1.3)."""
        db, csl = await self._request_body(request)
        self._authorize(request, "viewer", db, "query")
        self.count("queries")
        result = run_query(self.database(db), csl)
        frames = [
            {"FrameType": "DataSetHeader", "IsProgressive": False, "Version": "v2.0"},
            {
                "FrameType": "DataTable",
                "TableId": 0,
                "TableKind": "PrimaryResult",
                "TableName": "PrimaryResult",
                "Columns": [{"ColumnName": c, "ColumnType": t} for c, t in result.columns],
                "Rows": _json_rows(result),
            },
            {"FrameType": "DataSetCompletion", "HasErrors": False, "Cancelled": False},
        ]
        return web.json_response(frames)

    async def mgmt(self, request: web.Request) -> web.Response:
        """``POST /v1/rest/mgmt``: a management command, answered as one v1 table (§1.4)."""
        db, csl = await self._request_body(request)
        role, table = required_role(csl.strip())
        self._authorize(request, role, db, csl.strip().split("\n", 1)[0][:60], table)
        creating = (
            role == "user"
            and bool(table)
            and (self._database_or_none(db or "") is not None)
            and table not in self.database(db).tables
        )
        self.count("commands")
        result = self.command(db, csl.strip())
        if role == "admin" and csl.lower().split()[:1] == [".drop"]:
            self.table_admins.pop(((db or "").lower(), table), None)
        if creating and table in self.database(db).tables:
            claims: dict[str, Any] = request.get("kusto_claims") or {}
            self.table_admins.setdefault(((db or "").lower(), table), set()).update(
                str(claims[k]) for k in ("appid", "oid") if claims.get(k)
            )
        self.changed()
        return web.json_response(
            {
                "Tables": [
                    {
                        "TableName": "Table_0",
                        "Columns": [
                            {"ColumnName": c, "DataType": DOTNET_TYPES[t], "ColumnType": t}
                            for c, t in result.columns
                        ],
                        "Rows": _json_rows(result),
                    }
                ]
            }
        )

    def command(self, db: str | None, csl: str) -> Result:
        """Run one management command (see :data:`COMMANDS`)."""
        words = csl.split()
        head = " ".join(words[:2]).lower()
        if head == ".get ingestion" and csl.lower().split() == [".get", "ingestion", "resources"]:
            return self._ingestion_resources()
        if csl.lower().split() == [".get", "kusto", "identity", "token"]:
            token, _ = self.tokens.issue(
                audience=KUSTO_AUDIENCES[0], subject="kusto-identity", app_id="kusto-identity"
            )
            return Result([("AuthorizationContext", "string")], [[token]])
        if csl.lower().split() == [".show", "version"]:
            return Result(
                [
                    ("BuildVersion", "string"),
                    ("BuildTime", "datetime"),
                    ("ServiceType", "string"),
                    ("ProductVersion", "string"),
                ],
                [[BUILD_VERSION, datetime(2026, 1, 1, tzinfo=UTC), "Engine", "emulator"]],
            )
        for pattern, method in _COMMAND_PATTERNS:
            match = pattern.match(csl)
            if match:
                return method(self, self.database(db), match)
        raise syntax_error(
            f"SYN0002: A recognition error occurred: the emulator serves {', '.join(COMMANDS)}; "
            f"not {csl[:200]!r}."
        )

    def _ingestion_resources(self) -> Result:
        if self.storage is None:
            raise bad_request(
                "Queued ingestion is not configured in the emulator (no storage connection; "
                "see python -m emulator --help, EMULATOR_KUSTO_STORAGE_CONNECTION)."
            )
        return Result(
            [("ResourceTypeName", "string"), ("StorageRoot", "string")],
            [[kind, url] for kind, url in self.storage.resources().items()],
        )

    def _create_merge(self, database: KustoDatabase, match: Any) -> Result:
        name = unquote_name(match["table"])
        columns = parse_columns(match["columns"])
        table = database.tables.get(name)
        if table is None:
            table = database.tables[name] = KustoTable(name, list(columns))
        else:
            # [DXD] create-merge-table-command.md: new columns are appended, missing ones kept,
            # "a different data type will cause the command to fail".
            for column, kusto_type in columns:
                existing = table.column_type(column)
                if existing is not None and existing != kusto_type:
                    raise bad_request(
                        f"Column '{column}' of table '{name}' is of type '{existing}'; "
                        f"'.create-merge table' cannot change it to '{kusto_type}'.",
                        error_type="Kusto.Data.Exceptions.KustoBadRequestException",
                    )
            for column, kusto_type in columns:
                if table.column_type(column) is None:
                    table.columns.append((column, kusto_type))
                    for row in table.rows:
                        row.append(None)
        return _schema_result(database, table, json_schema=True)

    def _create_mapping(self, database: KustoDatabase, match: Any) -> Result:
        table = self.table(database, unquote_name(match["table"]))
        name = _string_literals(match["name"])
        mapping = parse_mapping(_string_literals(match["mapping"]))
        for element in mapping:
            if table.column_type(element.column) is None and not element.datatype:
                raise bad_request(
                    f"Mapping column '{element.column}' is not in table '{table.name}' and "
                    "has no DataType.",
                    "BadRequest_InvalidMapping",
                )
        table.mappings[name] = mapping
        return _mappings_result(database, table, {name: mapping})

    def _show_mappings(self, database: KustoDatabase, match: Any) -> Result:
        table = self.table(database, unquote_name(match["table"]))
        return _mappings_result(database, table, table.mappings)

    def _show_tables(self, database: KustoDatabase, match: Any) -> Result:
        return Result(
            [
                ("TableName", "string"),
                ("DatabaseName", "string"),
                ("Folder", "string"),
                ("DocString", "string"),
            ],
            [[t.name, database.name, "", ""] for t in database.tables.values()],
        )

    def _show_schema(self, database: KustoDatabase, match: Any) -> Result:
        table = self.table(database, unquote_name(match["table"]))
        return _schema_result(database, table, json_schema=match["kind"].lower() != "cslschema")

    def _alter_policy(self, database: KustoDatabase, match: Any) -> Result:
        enabled = _policy_value(match["value"])
        if match["entity"].lower() == "table":
            table = self.table(database, unquote_name(match["name"]))
            table.streaming = enabled
            entity = f"[{database.name}].[{table.name}]"
        else:
            if unquote_name(match["name"]).lower() != database.name.lower():
                self.database(unquote_name(match["name"]))
            self.database(unquote_name(match["name"])).streaming = enabled
            entity = f"[{unquote_name(match['name'])}]"
        return Result(
            [
                ("PolicyName", "string"),
                ("EntityName", "string"),
                ("Policy", "string"),
                ("ChildEntities", "string"),
                ("EntityType", "string"),
            ],
            [
                [
                    "StreamingIngestionPolicy",
                    entity,
                    json.dumps({"IsEnabled": enabled}),
                    "",
                    match["entity"].capitalize(),
                ]
            ],
        )

    def _drop_table(self, database: KustoDatabase, match: Any) -> Result:
        name = unquote_name(match["table"])
        self.answers_lost.pop((database.name.lower(), name), None)
        if database.tables.pop(name, None) is None and not match["ifexists"]:
            raise table_not_found(database.name, name)
        return self._show_tables(database, match)

    # -- streaming ingestion ----------------------------------------------------------------

    def streaming_enabled(self, database: KustoDatabase, table: KustoTable) -> bool:
        """The table policy if set, else the database's ([DXD] streaming-ingestion-policy.md:
        a database policy "applies to all existing and future tables"); always on in "on"."""
        if self.config.streaming == "on":
            return True
        return table.streaming if table.streaming is not None else database.streaming

    async def ingest(self, request: web.Request) -> web.Response:
        """``POST /v1/rest/ingest/{db}/{table}?streamFormat=&mappingName=`` (§1.5)."""
        try:
            self._authorize(
                request,
                "ingestor",
                request.match_info["database"],
                "StreamingIngest",
                request.match_info["table"],
            )
        except KustoError:
            await request.read()  # the body is the client's to send in full before the answer
            raise
        if self.config.streaming == "off":
            # The cluster capability is off: 404, which the client reports as "The ingestion
            # endpoint does not exist. Please enable streaming ingestion on your cluster." (§3.2)
            await request.read()
            raise KustoError(
                404,
                "NotFound",
                "The requested endpoint does not exist.",
                "Streaming ingestion is not enabled on this cluster.",
                permanent=True,
            )
        # The limit is on the body as sent (gzip). aiohttp inflates a gzip body as it reads it,
        # so the sent size is the Content-Length, which the client sends for its in-memory
        # streams; a chunked body is held to the inflated cap only.
        if request.content_length is not None and request.content_length > MAX_STREAMING_BYTES:
            await request.read()
            raise _payload_too_large(request.content_length)
        try:
            # StreamReader.read(n) returns what has arrived so far (up to n), not n bytes: read
            # until the end (or past the cap), or a body that arrives in pieces is cut short.
            pieces: list[bytes] = []
            size = 0
            while size <= MAX_INFLATED_BYTES:
                piece = await request.content.read(MAX_INFLATED_BYTES + 1 - size)
                if not piece:
                    break
                pieces.append(piece)
                size += len(piece)
            body = b"".join(pieces)
        except ContentEncodingError as exc:
            raise KustoError(
                400, "BadRequest_InvalidBlob", BAD_REQUEST, f"The body is not valid gzip: {exc}."
            ) from None
        if len(body) > MAX_INFLATED_BYTES:
            raise bad_request(f"The decompressed body exceeds {MAX_INFLATED_BYTES:,} bytes.")
        self.count("streaming_requests")
        database = self.database(request.match_info["database"])
        table = self.table(database, request.match_info["table"])
        if not self.streaming_enabled(database, table):
            # Policy off: 400 BadRequest_StreamingIngestionPolicyNotEnabled (§3.2). The exact
            # body is not in the docs; a 400 is "failed (permanently)" ([DXD] response.md), so
            # it is marked permanent and the managed client re-raises it (§1.8).
            raise bad_request(
                f"Streaming ingestion policy is not enabled for the table '{table.name}' "
                f"in database '{database.name}'.",
                "BadRequest_StreamingIngestionPolicyNotEnabled",
                "Kusto.DataNode.Exceptions.StreamingIngestionPolicyNotEnabledException",
            )
        data_format = request.query.get("streamFormat", "").lower()
        if not data_format:
            raise bad_request("The 'streamFormat' parameter is required.")
        mapping_name = request.query.get("mappingName")
        if data_format in ("json", "multijson") and not mapping_name:
            # "mappingName: Optional, but Required if streamFormat is one of JSON, MultiJSON,
            # or Avro" ([DXD] kusto/api/rest/streaming-ingest.md).
            raise bad_request("'mappingName' is required for the JSON and MultiJSON formats.")
        if request.query.get("sourceKind", "").lower() == "uri":
            # Streaming from a blob (§1.5: ``&sourceKind=uri``, body ``{"sourceUri": ...}``;
            # the managed client tries it for blobs up to 4 MB, §1.8).
            try:
                source = json.loads(body)["sourceUri"]
            except (ValueError, KeyError, TypeError):
                raise bad_request("sourceKind=uri needs a JSON body with 'sourceUri'.") from None
            body = await KustoStorage.download(str(source))
            if body[:2] == b"\x1f\x8b":
                body = _gunzip(body)
        mapping = self._mapping(table, mapping_name)
        rows = map_records(table, parse_records(body, data_format), mapping)
        table.rows.extend(rows)
        self.count("streaming_rows", len(rows))
        self.count("rows_ingested", len(rows))
        # The body the SDK's own mocks answer with (§1.5); the client discards it.
        return web.json_response(
            {
                "Tables": [
                    {
                        "TableName": "Table_0",
                        "Columns": [
                            {"ColumnName": "ConsumedRecordsCount", "DataType": "Int64"},
                            {"ColumnName": "UpdatePolicyStatus", "DataType": "String"},
                            {"ColumnName": "UpdatePolicyFailureCode", "DataType": "String"},
                            {"ColumnName": "UpdatePolicyFailureReason", "DataType": "String"},
                        ],
                        "Rows": [[len(rows), "Inactive", "Unknown", None]],
                    }
                ]
            }
        )

    def _mapping(self, table: KustoTable, name: str | None) -> list[MappingColumn] | None:
        if name is None:
            return None
        mapping = table.mappings.get(name)
        if mapping is None:
            # MappingNotFoundException: 400 BadRequest_MappingReferenceWasNotFound, permanent
            # ([DXD] kusto-data-client-errors.md, §3.3).
            raise bad_request(
                f"Mapping reference '{name}' of type 'json' in table '{table.name}' could not "
                "be found.",
                "BadRequest_MappingReferenceWasNotFound",
                "Kusto.Data.Exceptions.MappingNotFoundException",
            )
        return mapping

    # -- queued ingestion -------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll(flush=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queued ingestion: polling failed")
            await asyncio.sleep(self.config.poll_seconds)

    async def poll(self, flush: bool) -> int:
        """Receive the waiting messages, then ingest the batches that are due (all of them
        when ``flush``). Returns the number of rows ingested."""
        assert self.storage is not None
        async with self._lock:
            visibility = int(self.config.batch_seconds) + 300
            for message in await self.storage.receive(visibility):
                self._enqueue(message)
            now = time.monotonic()
            due = [
                key
                for key, batch in self.batches.items()
                if flush
                or now - batch.opened >= self.config.batch_seconds
                or len(batch.items) >= MAX_BATCH_ITEMS
                or batch.raw_bytes >= MAX_BATCH_RAW_BYTES
            ]
            ingested = 0
            for key in due:
                ingested += await self._ingest_batch(self.batches.pop(key))
            return ingested

    def _enqueue(self, message: QueuedMessage) -> None:
        self.count("queued_messages")
        try:
            info = json.loads(base64.b64decode(message.content, validate=True))
            properties = info.get("AdditionalProperties") or {}
            key = (
                str(info["DatabaseName"]),
                str(info["TableName"]),
                str(properties.get("format", "csv")).lower(),
                str(properties.get("ingestionMappingReference", "")),
                str(properties.get("ingestionMapping", "")),
            )
            blob_path = str(info["BlobPath"])
        except (ValueError, KeyError, TypeError, binascii.Error, AttributeError):
            self.failures.append({"reason": "unreadable ingestion message", "message": message.id})
            self.count("failed_ingestions")
            asyncio.get_running_loop().create_task(self.storage_delete(message))
            return
        batch = self.batches.setdefault(key, Batch(opened=time.monotonic()))
        batch.items.append((message, info, blob_path))
        size = info.get("RawDataSize")
        batch.raw_bytes += size if isinstance(size, int) else 0

    async def storage_delete(self, message: QueuedMessage) -> None:
        assert self.storage is not None
        await self.storage.delete(message)

    async def _ingest_batch(self, batch: Batch) -> int:
        assert self.storage is not None
        ingested = 0
        for message, info, blob_path in batch.items:
            try:
                rows = await self._ingest_blob(info, blob_path)
                ingested += rows
                self.count("queued_blobs")
                self.count("rows_ingested", rows)
            except KustoError as exc:
                await self._report_failure(info, blob_path, exc.code, exc.detail)
            except Exception as exc:  # a blob that cannot be read, storage errors
                log.warning("queued ingestion of a blob failed: %s", type(exc).__name__)
                await self._report_failure(info, blob_path, "BadRequest_InvalidBlob", str(exc))
            await self.storage.delete(message)
        return ingested

    async def _ingest_blob(self, info: dict[str, Any], blob_path: str) -> int:
        assert self.storage is not None
        database = self.database(str(info["DatabaseName"]))
        table = self.table(database, str(info["TableName"]))
        properties = info.get("AdditionalProperties") or {}
        inline = properties.get("ingestionMapping")
        mapping = (
            parse_mapping(inline)
            if inline
            else self._mapping(table, properties.get("ingestionMappingReference"))
        )
        data = await self.storage.download(blob_path)
        if data[:2] == b"\x1f\x8b":  # gzip, as the client compresses JSON (§1.7.5)
            data = _gunzip(data)
        records = parse_records(data, str(properties.get("format", "csv")).lower())
        rows = map_records(table, records, mapping, add_columns=True)
        table.rows.extend(rows)
        return len(rows)

    async def _report_failure(
        self, info: dict[str, Any], blob_path: str, code: str, detail: str
    ) -> None:
        """Record a failed blob and post it to the FailedIngestionsQueue with the fields
        ``azure.kusto.ingest.status.FailureMessage`` reads."""
        assert self.storage is not None
        self.count("failed_ingestions")
        failure = {
            "OperationId": str(uuid.uuid4()),
            "Database": info.get("DatabaseName"),
            "Table": info.get("TableName"),
            "FailedOn": datetime.now(UTC).isoformat(),
            "IngestionSourceId": info.get("Id"),
            "IngestionSourcePath": urlsplit(blob_path)._replace(query="").geturl(),
            "Details": detail,
            "ErrorCode": code,
            "FailureStatus": "Permanent",
            "RootActivityId": str(uuid.uuid4()),
            "OriginatesFromUpdatePolicy": False,
            "ShouldRetry": False,
        }
        self.failures.append(failure)
        await self.storage.report_failure(json.dumps(failure))

    # -- emulator-only admin API ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Databases, tables, row counts, policies and counters."""
        return {
            "streaming": self.config.streaming,
            "queued": self.storage is not None,
            "batch_seconds": self.config.batch_seconds,
            "databases": [
                {
                    "name": database.name,
                    "streaming_policy": database.streaming,
                    "tables": [
                        {
                            "name": table.name,
                            "columns": [{"name": c, "type": t} for c, t in table.columns],
                            "rows": len(table.rows),
                            "mappings": sorted(table.mappings),
                            "streaming_policy": table.streaming,
                            "answersLost": list(
                                self.answers_lost.get((database.name.lower(), table.name), [])
                            ),
                        }
                        for table in database.tables.values()
                    ],
                }
                for database in self.databases.values()
            ],
            "counters": dict(self.counters),
            "pending_messages": sum(len(b.items) for b in self.batches.values()),
            "failures": self.failures[-20:],
        }

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def rows(self, request: web.Request) -> web.Response:
        database = self._database_or_none(request.match_info["database"])
        table = database.tables.get(request.match_info["table"]) if database else None
        if table is None:
            return web.json_response({"error": "no such table"}, status=404)
        result = Result(table.columns, table.rows)
        names = [c for c, _ in table.columns]
        return web.json_response(
            {"rows": [dict(zip(names, r, strict=True)) for r in _json_rows(result)]}
        )

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        """Replace the fault plan (emulator/faults.py's form; without ``all_operations`` the
        faults apply to streaming ingestion only)."""
        from emulator.faults import FaultConfigError

        try:
            self.faults = FaultPlan.from_json(await request.json())
        except (FaultConfigError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults.to_json())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults = FaultPlan()
        return web.json_response(self.faults.to_json())

    async def flush(self, request: web.Request) -> web.Response:
        """Ingest every queued message now, without waiting for the batching delay."""
        if self.storage is None:
            return web.json_response({"error": "queued ingestion is not configured"}, status=409)
        rows = await self.poll(flush=True)
        return web.json_response({"rows": rows, "counters": dict(self.counters)})

    async def post_database(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return web.json_response({"error": 'send {"name": "..."}'}, status=400)
        self.add_database(name.strip())
        self.changed()
        return web.json_response(self.snapshot())

    async def get_principals(self, request: web.Request) -> web.Response:
        return web.json_response({k: sorted(v) for k, v in self.principals.items()})

    async def set_principals(self, request: web.Request) -> web.Response:
        """Replace the database roles: ``{"<appid or oid>": ["ingestor", "viewer"], ...}``
        (roles: :data:`ROLES`; they hold in every database, as ``.add database ... ingestors``
        given for each would)."""
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "send a JSON object"}, status=400)
        if not isinstance(body, dict) or not all(
            isinstance(roles, list) and roles and all(r in ROLES for r in roles)
            for roles in body.values()
        ):
            return web.json_response(
                {"error": f"send {{principal: [roles]}}, roles among {', '.join(ROLES)}"},
                status=400,
            )
        self.principals = {str(k): frozenset(v) for k, v in body.items()}
        self.changed()
        return web.json_response({k: sorted(v) for k, v in self.principals.items()})

    async def clear_principals(self, request: web.Request) -> web.Response:
        self.principals = {}
        self.changed()
        return web.json_response({})

    async def reset(self, request: web.Request) -> web.Response:
        """Drop every table, policy and counter (the databases stay)."""
        for database in self.databases.values():
            database.tables.clear()
            database.streaming = False
        self.counters.clear()
        self.failures.clear()
        self.answers_lost.clear()
        self.table_admins.clear()
        self.changed()
        return web.json_response(self.snapshot())


# -- helpers ----------------------------------------------------------------------------------


@dataclass
class QueuedMessage:
    """A received queue message: what deleting it needs, and its (base64) content."""

    id: str
    pop_receipt: str
    content: str


@dataclass
class Batch:
    """Messages waiting for one (database, table, format, mapping)."""

    opened: float
    items: list[tuple[QueuedMessage, dict[str, Any], str]] = field(default_factory=list)
    raw_bytes: int = 0


class KustoStorage:
    """The storage behind queued ingestion: SAS URLs to hand out, and the worker's access."""

    def __init__(self, connection_string: str) -> None:
        parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
        self.connection_string = connection_string
        self.account = parts["AccountName"]
        self.key = parts["AccountKey"]
        self.blob_endpoint = parts.get("BlobEndpoint", "").rstrip("/")
        self.queue_endpoint = parts.get("QueueEndpoint", "").rstrip("/")
        self.table_endpoint = parts.get("TableEndpoint", "").rstrip("/")
        if not self.blob_endpoint or not self.queue_endpoint:
            raise ValueError(
                "the Kusto storage connection string needs BlobEndpoint and QueueEndpoint"
            )
        self._queues: dict[str, Any] = {}

    async def prepare(self) -> None:
        """Create the container, queues and status table (idempotent)."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob.aio import BlobServiceClient
        from azure.storage.queue.aio import QueueClient

        async with BlobServiceClient.from_connection_string(self.connection_string) as blobs:
            with contextlib.suppress(ResourceExistsError):
                await blobs.create_container(CONTAINER)
        for name in (READY_QUEUE, FAILED_QUEUE, SUCCESS_QUEUE):
            client = QueueClient.from_connection_string(self.connection_string, name)
            with contextlib.suppress(ResourceExistsError):
                await client.create_queue()
            self._queues[name] = client
        if self.table_endpoint:
            from azure.data.tables.aio import TableServiceClient

            async with TableServiceClient.from_connection_string(self.connection_string) as tables:
                await tables.create_table_if_not_exists(STATUS_TABLE)

    def resources(self) -> dict[str, str]:
        """The five resources of ``.get ingestion resources`` with SAS URLs valid a day."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas
        from azure.storage.queue import QueueSasPermissions, generate_queue_sas

        expiry = datetime.now(UTC) + timedelta(days=1)
        container_sas = generate_container_sas(
            self.account,
            CONTAINER,
            account_key=self.key,
            permission=ContainerSasPermissions(read=True, write=True, create=True, add=True),
            expiry=expiry,
        )
        out = {
            "TempStorage": f"{self.blob_endpoint}/{CONTAINER}?{container_sas}",
        }
        for kind, name, permission in (
            ("SecuredReadyForAggregationQueue", READY_QUEUE, QueueSasPermissions(add=True)),
            ("FailedIngestionsQueue", FAILED_QUEUE, QueueSasPermissions(read=True, process=True)),
            (
                "SuccessfulIngestionsQueue",
                SUCCESS_QUEUE,
                QueueSasPermissions(read=True, process=True),
            ),
        ):
            sas = generate_queue_sas(
                self.account, name, account_key=self.key, permission=permission, expiry=expiry
            )
            out[kind] = f"{self.queue_endpoint}/{name}?{sas}"
        table_sas = ""
        if self.table_endpoint:
            from azure.core.credentials import AzureNamedKeyCredential
            from azure.data.tables import generate_table_sas

            table_sas = generate_table_sas(
                AzureNamedKeyCredential(self.account, self.key),
                STATUS_TABLE,
                permission="raud",
                expiry=expiry,
            )
        base = self.table_endpoint or self.queue_endpoint
        out["IngestionsStatusTable"] = f"{base}/{STATUS_TABLE}?{table_sas}"
        return out

    async def receive(self, visibility: int) -> list[QueuedMessage]:
        """Up to 32 waiting messages (the queue service's per-call maximum), kept invisible
        for ``visibility`` seconds while they are batched."""
        client = self._queues[READY_QUEUE]
        messages = client.receive_messages(messages_per_page=32, visibility_timeout=visibility)
        out: list[QueuedMessage] = []
        async for message in messages:
            out.append(QueuedMessage(message.id, message.pop_receipt, message.content))
            if len(out) >= 32:
                break
        return out

    async def delete(self, message: QueuedMessage) -> None:
        await self._queues[READY_QUEUE].delete_message(message.id, message.pop_receipt)

    @staticmethod
    async def download(blob_url: str) -> bytes:
        """A blob by the URL (with SAS) the client sent."""
        from azure.storage.blob.aio import BlobClient

        async with BlobClient.from_blob_url(blob_url) as blob:
            properties = await blob.get_blob_properties()
            if properties.size > MAX_INFLATED_BYTES:
                raise bad_request(
                    f"The blob is {properties.size:,} bytes; the emulator reads "
                    f"at most {MAX_INFLATED_BYTES:,}."
                )
            data: bytes = await (await blob.download_blob()).readall()
            return data

    async def report_failure(self, failure_json: str) -> None:
        """Post a failure, base64 as the status queue client decodes it."""
        await self._queues[FAILED_QUEUE].send_message(
            base64.b64encode(failure_json.encode()).decode()
        )

    async def close(self) -> None:
        for client in self._queues.values():
            await client.close()
        self._queues.clear()


def _payload_too_large(size: int) -> KustoError:
    """413 PayloadTooLarge, KustoRequestPayloadTooLargeException, permanent ([DXD]
    response.md; kusto-data-client-errors.md, §3.3)."""
    return KustoError(
        413,
        "PayloadTooLarge",
        "Request payload exceeded limits.",
        f"The streaming ingestion request is {size:,} bytes or more; the limit is "
        f"{MAX_STREAMING_BYTES:,} bytes (4 MB).",
        "Kusto.Data.Exceptions.KustoRequestPayloadTooLargeException",
    )


def _gunzip(data: bytes) -> bytes:
    """Inflate at most :data:`MAX_INFLATED_BYTES`; a corrupt stream is BadRequest_InvalidBlob."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise KustoError(
            400,
            "BadRequest_InvalidBlob",
            "Request is invalid and cannot be executed.",
            f"The body is not valid gzip: {exc}.",
        ) from None
    if len(out) > MAX_INFLATED_BYTES:
        raise bad_request(f"The decompressed body exceeds {MAX_INFLATED_BYTES:,} bytes.")
    return out


def _json_rows(result: Result) -> list[list[Any]]:
    types = [t for _, t in result.columns]
    return [[to_json(t, v) for t, v in zip(types, row, strict=True)] for row in result.rows]


def _schema_result(database: KustoDatabase, table: KustoTable, json_schema: bool) -> Result:
    """``.show table T schema as json`` / ``cslschema`` (and ``.create-merge table``'s answer):
    TableName, Schema, DatabaseName, Folder, DocString."""
    schema = table.json_schema(database.name) if json_schema else table.cslschema()
    return Result(
        [
            ("TableName", "string"),
            ("Schema", "string"),
            ("DatabaseName", "string"),
            ("Folder", "string"),
            ("DocString", "string"),
        ],
        [[table.name, schema, database.name, "", ""]],
    )


def _mappings_result(
    database: KustoDatabase, table: KustoTable, mappings: dict[str, list[MappingColumn]]
) -> Result:
    """Name, Kind, Mapping (the ``Properties`` form, as the service echoes it, §3.5),
    LastUpdatedOn, Database, Table."""
    now = datetime.now(UTC)
    return Result(
        [
            ("Name", "string"),
            ("Kind", "string"),
            ("Mapping", "string"),
            ("LastUpdatedOn", "datetime"),
            ("Database", "string"),
            ("Table", "string"),
        ],
        [
            [
                name,
                "Json",
                json.dumps([e.to_json() for e in mapping]),
                now,
                database.name,
                table.name,
            ]
            for name, mapping in mappings.items()
        ],
    )


def _policy_value(text: str) -> bool:
    """``enable``/``disable`` or the policy JSON in a string literal (``'{"IsEnabled":
    true}'``, [DXD] streaming-ingestion-policy.md and dataexplorer-docs#279)."""
    word = text.strip().lower()
    if word in ("enable", "disable"):
        return word == "enable"
    try:
        policy = json.loads(_string_literals(text))
    except ValueError:
        raise syntax_error(f"Invalid streaming ingestion policy {text.strip()!r}.") from None
    if not isinstance(policy, dict) or not isinstance(policy.get("IsEnabled"), bool):
        raise bad_request("The streaming ingestion policy needs a boolean 'IsEnabled'.")
    return bool(policy["IsEnabled"])


def _string_literals(text: str) -> str:
    """One or more KQL string literals side by side, concatenated (the docs write a mapping as
    ``'[' '{...},' ']'``): '...' and "..." with backslash escapes, @'...' verbatim."""
    out: list[str] = []
    position = 0
    text = text.strip()
    if not text:
        raise syntax_error("A string literal was expected.")
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        verbatim = char == "@"
        if verbatim:
            position += 1
            char = text[position : position + 1]
        if char not in ("'", '"'):
            raise syntax_error(f"A string literal was expected at {text[position:][:30]!r}.")
        position += 1
        piece: list[str] = []
        while True:
            if position >= len(text):
                raise syntax_error("Unterminated string literal.")
            current = text[position]
            if current == "\\" and not verbatim:
                escaped = text[position + 1 : position + 2]
                piece.append({"n": "\n", "t": "\t", "r": "\r"}.get(escaped, escaped))
                position += 2
                continue
            if current == char:
                if verbatim and text[position + 1 : position + 2] == char:
                    piece.append(char)
                    position += 2
                    continue
                position += 1
                break
            piece.append(current)
            position += 1
        out.append("".join(piece))
    return "".join(out)


_N = r"(?:\[\s*'[^']+'\s*\]|\[\s*\"[^\"]+\"\s*\]|[A-Za-z_][\w]*)"
_COMMAND_PATTERNS: list[
    tuple[re.Pattern[str], Callable[[KustoService, KustoDatabase, Any], Result]]
] = [
    (
        re.compile(
            rf"^\.create-merge\s+table\s+(?P<table>{_N})\s*\((?P<columns>.*)\)"
            r"(?:\s*with\s*\(.*\))?\s*$",
            re.I | re.S,
        ),
        KustoService._create_merge,
    ),
    (
        re.compile(
            rf"^\.create-or-alter\s+table\s+(?P<table>{_N})\s+ingestion\s+json\s+mapping\s+"
            r"(?P<name>\"[^\"]+\"|'[^']+')\s+(?P<mapping>.+)$",
            re.I | re.S,
        ),
        KustoService._create_mapping,
    ),
    (
        re.compile(
            rf"^\.show\s+table\s+(?P<table>{_N})\s+ingestion\s+(?:json\s+)?mappings\s*$", re.I
        ),
        KustoService._show_mappings,
    ),
    (re.compile(r"^\.show\s+tables\s*$", re.I), KustoService._show_tables),
    (
        re.compile(
            rf"^\.show\s+table\s+(?P<table>{_N})\s+(?P<kind>schema\s+as\s+json|cslschema)\s*$",
            re.I,
        ),
        KustoService._show_schema,
    ),
    (
        re.compile(
            rf"^\.alter\s+(?P<entity>table|database)\s+(?P<name>{_N})\s+policy\s+"
            r"streamingingestion\s+(?P<value>.+)$",
            re.I | re.S,
        ),
        KustoService._alter_policy,
    ),
    (
        re.compile(rf"^\.drop\s+table\s+(?P<table>{_N})(?P<ifexists>\s+ifexists)?\s*$", re.I),
        KustoService._drop_table,
    ),
]
#: Database roles and what each includes ([DXD] access-control/role-based-access-control:
#: Admin "can perform any action in the scope"; User "can read all data and metadata ... and
#: create tables"; Viewer "can read all data and metadata"; Ingestor "can ingest data to all
#: tables in the database without access to query the data").
ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "user", "viewer", "ingestor"}),
    "user": frozenset({"user", "viewer"}),
    "viewer": frozenset({"viewer"}),
    "ingestor": frozenset({"ingestor"}),
}


def required_role(csl: str) -> tuple[str, str]:
    """The role a management command needs, and the table it names (for Table Admin): the
    documented permission of each command the emulator serves (each command's page,
    "Permissions")."""
    words = csl.lower().split()
    table = ""
    if len(words) > 2 and words[1] == "table":
        table = unquote_name(csl.split()[2])
    if words[:1] == [".show"]:
        return "viewer", table  # ".show tables": Database Viewer; schema, mappings: Viewer
    if words[:2] == [".get", "ingestion"] or words[:2] == [".get", "kusto"]:
        return "ingestor", table  # the queued ingestion's resources and identity token
    if words[:1] == [".create-or-alter"] and "ingestion" in words and "mapping" in words:
        return "ingestor", table  # "at least Table Ingestor permissions" for a table mapping
    if words[:1] == [".alter"] and "policy" in words:
        return "admin", table  # streaming ingestion policy: Table Admin (or Database Admin)
    if words[:1] == [".drop"]:
        return "admin", table
    return "user", table  # .create-merge table: "requires Database User permissions"


#: The commands served, for error messages and docs.
COMMANDS = (
    ".create-merge table T (c:type, ...)",
    ".create-or-alter table T ingestion json mapping \"M\" '[...]'",
    ".show table T ingestion json mappings",
    ".show tables",
    ".show table T schema as json",
    ".show table T cslschema",
    ".alter table T policy streamingingestion enable|disable|'{\"IsEnabled\": b}'",
    ".alter database D policy streamingingestion ...",
    ".drop table T [ifexists]",
    ".get ingestion resources",
    ".get kusto identity token",
    ".show version",
)
