"""Power BI's own REST surface, served by the bundle: a sender that pushes to Power BI today
changes only its base URL and its credential.

Routes (the function app's ``api`` prefix, then Power BI's paths), both forms::

    /api/v1.0/myorg/datasets[/{id}[/tables[/{table}/rows]]]              My workspace
    /api/v1.0/myorg/groups/{groupId}/datasets[/...]                      a workspace
    /api/v1.0/myorg/groups                                               Get Groups

"My workspace" is the bundle's default workspace (``POWERBI_WORKSPACE_ID`` or
``POWERBI_WORKSPACE_NAME``; the identity's own My workspace when neither is set). Empty path
segments are ignored (``myorg//datasets``, which one client has always sent).

Operations: Create Dataset (idempotent by name: a dataset of that name whose tables and
columns match is answered as a create, one that differs is refused with 409), Get Datasets,
Get Dataset, Get Tables, Add Rows, Delete Rows (off unless ``FRONTDOOR_ALLOW_DELETE_ROWS``),
Get Groups (``$filter``, ``$top``, ``$skip``). Answers have Power BI's status codes, bodies and
error shape, ``{"error": {"code", "message", "details"?}}``.

Add Rows is all-or-nothing, as in Power BI: any row that cannot be stored refuses the request
with 400 ``BadRequest`` naming every bad row and column, and nothing is sent. A sender may opt in
to partial acceptance (``?partial=true``, or ``FRONTDOOR_PARTIAL_ROWS=true``): the good rows are
sent, each bad one is dead-lettered with its reason, and the answer says how many of each.

Asynchronous mode (``?mode=queue``, or ``HTTP_MODE=queue``) checks the rows as above, puts them
on the rows queue and answers 200 (Power BI's own answer: a 202 would look like a failure to a
sender that checks for 200); the queue function then delivers them.

Callers authenticate as Power BI's do, with ``Authorization: Bearer <key>``: the key is one of
``FRONTDOOR_KEYS`` (compared in constant time); a missing or wrong key is 401 and nothing is
read or pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from shared.contracts import PushResult, Target
from shared.engine.coalesce import Coalescer
from shared.engine.ingest import Ingestor, PushIncomplete
from shared.engine.retry import Deadline
from shared.engine.schema import DatasetDefinition, canonical_type
from shared.errors import (
    AuthError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    PushError,
    RowProblem,
    TransientError,
)
from shared.settings import Settings
from shared.sources.claimcheck import ClaimCheckStore, queue_messages
from shared.sources.envelope import BodyError, Envelope, loads, resend_for_stopped, rows_of
from shared.sources.webhook import WebRequest, WebResponse
from shared.stores.leases import dataset_lock_name

log = logging.getLogger(__name__)

#: The function app's route for the whole surface (``{*path}`` takes the rest, slashes too).
ROUTE = "v1.0/myorg/{*path}"
#: The OData context Power BI puts in list answers (clients ignore it; some keep it).
_CONTEXT = "http://localhost/v1.0/myorg/$metadata"
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
#: At most this many problems are listed in one answer (Power BI lists a handful).
MAX_DETAILS = 100


class PowerBIService(Protocol):
    """The reads and chores the surface passes through to Power BI (the concrete client,
    :class:`shared.destinations.powerbi.PowerBIClient`, has them)."""

    def get_groups(
        self, filter: str | None = None, top: int | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]: ...

    def get_dataset(self, dataset_id: str, workspace: str | None = None) -> dict[str, Any]: ...

    def delete_rows(self, dataset_id: str, table: str, workspace: str | None = None) -> None: ...


def powerbi_error(
    status: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> WebResponse:
    """An answer in Power BI's error shape."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = list(details)
    return WebResponse(status, {"error": error}, dict(headers or {}))


class _Refused(Exception):
    """An answer to give instead of going on (raised anywhere below :meth:`FrontDoor.handle`)."""

    def __init__(self, answer: WebResponse) -> None:
        super().__init__(answer.status)
        self.answer = answer


@dataclass(frozen=True)
class _Path:
    """A parsed request path: the workspace (None: My workspace), the resource and its ids."""

    workspace: str | None
    parts: tuple[str, ...]


def parse_path(path: str) -> _Path:
    """``groups/{id}/datasets/...`` or ``datasets/...``, empty segments ignored."""
    parts = tuple(unquote(p) for p in path.split("/") if p)
    if len(parts) >= 2 and parts[0].lower() == "groups":
        return _Path(parts[1], parts[2:])
    return _Path(None, parts)


class FrontDoor:
    """The surface's endpoints. Built once per process; the ingestor is made on first use."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        ingestor: Callable[[], Ingestor],
        service: Callable[[], PowerBIService],
        coalescer: Callable[[], Coalescer | None] | None = None,
        claim_checks: Callable[[], ClaimCheckStore] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._service = service
        self._coalescer = coalescer
        self._claim_checks = claim_checks
        self._clock = clock

    def handle(self, request: WebRequest) -> WebResponse:
        """Answer one request to ``/api/v1.0/myorg/...`` (the route's ``path`` parameter)."""
        try:
            settings, path = self._preflight(request)
            return self._dispatch(request, path, settings)
        except _Refused as refused:
            return refused.answer
        except TransientError as exc:  # PushIncomplete too
            return _transient(exc)
        except PushError as exc:
            return _permanent(exc)

    def _preflight(self, request: WebRequest) -> tuple[Settings, _Path]:
        """The settings, the caller's key checked, the path parsed (a workspace must be an
        id, as in Power BI); :class:`_Refused` otherwise."""
        try:
            settings = self._settings()
        except ConfigError as exc:
            raise _Refused(powerbi_error(500, "ConfigError", str(exc))) from None
        refused = _authenticate(settings, request)
        if refused is not None:
            raise _Refused(refused)
        path = parse_path(request.route.get("path", ""))
        if path.workspace is not None and not _GUID.fullmatch(path.workspace):
            raise _Refused(
                powerbi_error(
                    404, "PowerBIEntityNotFound", f"Workspace {path.workspace} was not found."
                )
            )
        ingestor = self._ingestor()
        if ingestor.policy is not None:
            named = path.workspace or ingestor.default_workspace
            in_default = ingestor.in_default_workspace(path.workspace, path.workspace)
            if not ingestor.policy.allows_workspace(named, path.workspace, in_default):
                raise _Refused(
                    powerbi_error(
                        403,
                        "Forbidden",
                        f"callers may not use workspace {path.workspace}: it is not in "
                        f"ALLOWED_TARGETS ({ingestor.policy.describe()})",
                    )
                )
        return settings, path

    # -- routing ----------------------------------------------------------------------------

    def _dispatch(self, request: WebRequest, path: _Path, settings: Settings) -> WebResponse:
        method = request.method.upper()
        parts = path.parts
        lowered = tuple(p.lower() for p in parts)
        if path.workspace is None and lowered == ("groups",) and method == "GET":
            return self._groups(request)
        if lowered == ("datasets",):
            if method == "GET":
                return self._datasets(path)
            if method == "POST":
                return self._create(request, path)
        elif len(parts) == 2 and lowered[0] == "datasets" and method == "GET":
            return self._dataset(path, parts[1])
        elif len(parts) == 3 and lowered[0] == "datasets" and lowered[2] == "tables":
            if method == "GET":
                return self._tables(path, parts[1])
        elif len(parts) == 5 and lowered[0] == "datasets" and lowered[2:5:2] == ("tables", "rows"):
            if method == "POST":
                return self._add_rows(request, path, parts[1], parts[3], settings)
            if method == "DELETE":
                return self._delete_rows(path, parts[1], parts[3], settings)
        else:
            return powerbi_error(
                404,
                "NotFound",
                f"{method} /v1.0/myorg/{'/'.join(parts)} is not an operation this bundle serves: "
                "it serves Power BI's push-dataset operations (datasets, tables, rows, groups)",
            )
        return powerbi_error(
            405, "MethodNotAllowed", f"{method} is not allowed on /v1.0/myorg/{'/'.join(parts)}"
        )

    def _workspace(self, path: _Path, deadline: Deadline | None = None) -> str | None:
        """The workspace id the request means: its group, or the bundle's default workspace."""
        if path.workspace is not None:
            return path.workspace
        ingestor = self._ingestor()
        return ingestor.workspace_id(ingestor.default_workspace, deadline)

    def _deadline(self) -> Deadline:
        return Deadline.after(self._settings().http_time_budget, self._clock)

    # -- operations -------------------------------------------------------------------------

    def _groups(self, request: WebRequest) -> WebResponse:
        query = request.query
        groups = self._service().get_groups(query.get("$filter") or None)
        ingestor = self._ingestor()
        policy = ingestor.policy
        if policy is not None:  # only the workspaces callers may use
            groups = [
                g
                for g in groups
                if policy.allows_workspace(
                    g.get("name"),
                    g.get("id"),
                    ingestor.in_default_workspace(str(g.get("name") or ""), g.get("id")),
                )
            ]
        skip = _count(query, "$skip") or 0
        top = _count(query, "$top")
        chosen = groups[skip:] if top is None else groups[skip : skip + top]
        return WebResponse(200, {"@odata.context": f"{_CONTEXT}#groups", "value": chosen})

    def _datasets(self, path: _Path) -> WebResponse:
        deadline = self._deadline()
        found = self._ingestor().client.get_datasets(
            self._workspace(path, deadline), deadline=deadline
        )
        return WebResponse(200, {"@odata.context": f"{_CONTEXT}#datasets", "value": found})

    def _dataset(self, path: _Path, dataset_id: str) -> WebResponse:
        body = self._service().get_dataset(dataset_id, self._workspace(path))
        return WebResponse(200, {"@odata.context": f"{_CONTEXT}#datasets/$entity", **body})

    def _tables(self, path: _Path, dataset_id: str) -> WebResponse:
        deadline = self._deadline()
        tables = self._ingestor().client.get_tables(
            dataset_id, self._workspace(path, deadline), deadline=deadline
        )
        return WebResponse(200, {"@odata.context": f"{_CONTEXT}#tables", "value": tables})

    def _create(self, request: WebRequest, path: _Path) -> WebResponse:
        """Create Dataset, idempotent by name (see the module's docstring)."""
        body = _json_body(request)
        try:
            definition = DatasetDefinition.from_body(body, "body")
        except ConfigError as exc:
            raise _Refused(_bad_request(exc.problem, "body")) from None
        retention = request.query.get("defaultRetentionPolicy")
        if retention is not None and retention.lower() not in ("none", "basicfifo"):
            raise _Refused(
                _bad_request("defaultRetentionPolicy must be None or basicFIFO", "query")
            )
        deadline = self._deadline()
        ingestor = self._ingestor()
        workspace = self._workspace(path, deadline)

        def look() -> list[dict[str, Any]]:
            # The smallest id of several of one name, as the engine picks (Ingestor._resolve).
            return sorted(
                (
                    d
                    for d in ingestor.client.get_datasets(workspace, deadline=deadline)
                    if d.get("name") == definition.name
                ),
                key=lambda d: str(d.get("id")),
            )

        existing = look()
        policy = ingestor.policy
        if policy is not None and not policy.allows(
            path.workspace,
            workspace,
            ingestor.in_default_workspace(path.workspace, workspace, deadline),
            definition.name,
            str(existing[0]["id"]) if existing else "",
            # A dataset made outside the bundle is not adopted by "creating" it again.
            defined=not existing or definition.name in ingestor.definitions,
        ):
            raise _Refused(
                powerbi_error(
                    403,
                    "Forbidden",
                    f"callers may not create or use dataset {definition.name!r} here: it is not "
                    f"in ALLOWED_TARGETS ({policy.describe()})",
                )
            )
        lock = ingestor.creation_lock
        with contextlib.ExitStack() as held:
            if not existing and lock is not None:
                # One creator at a time across processes (the engine's resolver too). The one
                # before this one may have made it: look again, now that no one else can. One
                # found now was made by the bundle while this caller, allowed to create it,
                # waited: it is answered as created, not refused as made outside the bundle.
                held.enter_context(
                    lock.hold(dataset_lock_name(workspace, definition.name), deadline)
                )
                existing = look()
            if existing:
                dataset = existing[0]
                live = ingestor.client.get_tables(str(dataset["id"]), workspace, deadline=deadline)
                conflict = _differences(definition, live)
                if conflict:
                    raise _Refused(
                        powerbi_error(
                            409,
                            "DatasetConflict",
                            f"a dataset named {definition.name!r} already exists with other "
                            f"tables or columns ({conflict}); use another name, or the existing "
                            f"dataset {dataset['id']}",
                        )
                    )
                log.info(
                    "create dataset %s: it exists as %s; answered as created",
                    definition.name,
                    dataset["id"],
                )
            else:
                dataset = ingestor.client.create_dataset(
                    definition.body, workspace, deadline=deadline, retention=retention
                )
        ingestor.definitions.setdefault(definition.name, definition)
        answer = {
            "@odata.context": f"{_CONTEXT}#datasets/$entity",
            "id": dataset["id"],
            "name": dataset.get("name", definition.name),
            "defaultRetentionPolicy": dataset.get("defaultRetentionPolicy", retention or "None"),
        }
        return WebResponse(201, answer, {"Location": f"datasets/{dataset['id']}"})

    def _add_rows(
        self, request: WebRequest, path: _Path, dataset_id: str, table: str, settings: Settings
    ) -> WebResponse:
        """Add Rows, alone (the synchronous entry; :meth:`handle_async` shares POSTs)."""
        plan = self._rows_plan(request, path, dataset_id, table, settings)
        if plan.queued:
            return self._enqueue(plan)
        try:
            result = self._ingestor().push(
                plan.target, plan.rows, deadline=plan.deadline, source=plan.source
            )
        except PushIncomplete as exc:
            return self._requeue_stopped(plan, exc) or _transient(exc)
        return _rows_answer(result, len(plan.rows))

    def _requeue_stopped(self, plan: _RowsPlan, exc: PushIncomplete) -> WebResponse | None:
        """When one of the table's destinations stopped after the others took every row, its
        rows go to the rows queue for it alone and the sender gets Power BI's 200 (a retry
        would duplicate them where they arrived); None otherwise (the sender retries)."""
        rest = resend_for_stopped(Envelope(plan.target, rows=plan.rows), plan.rows, exc.result)
        if rest is None or self._claim_checks is None:
            return None
        stopped = ", ".join(rest.destinations or ())
        log.warning(
            "%s: %s stopped (%s); %d rows re-queued for it alone",
            plan.source,
            stopped,
            exc,
            len(rest.rows or []),
        )
        result = exc.result
        headers = {
            "X-Rows-Sent": str(result.sent),
            "X-Rows-Rejected": str(result.rejected),
            "X-Rows-Queued": str(len(rest.rows or [])),
            "X-Rows-Queued-For": stopped,
        }
        if result.dead_letter_location:
            headers["X-Dead-Letters"] = result.dead_letter_location
        messages = queue_messages([rest], self._claim_checks)
        return WebResponse(200, None, headers, messages=messages)

    def _enqueue(self, plan: _RowsPlan) -> WebResponse:
        """Asynchronous mode: 200 once the rows are on the rows queue (the host writes the
        output binding's messages before it answers), as a sender of Power BI expects."""
        if self._claim_checks is None:
            return powerbi_error(500, "ConfigError", "asynchronous mode needs the rows queue")
        messages = queue_messages([Envelope(plan.target, rows=plan.rows)], self._claim_checks)
        return WebResponse(200, None, {"X-Rows-Queued": str(len(plan.rows))}, messages=messages)

    def _rows_plan(
        self, request: WebRequest, path: _Path, dataset_id: str, table: str, settings: Settings
    ) -> _RowsPlan:
        """An Add Rows request checked: all-or-nothing unless partial acceptance is on, so a
        bad row refuses it here (:class:`_Refused`), before any row is sent."""
        try:
            rows = rows_of(_json_body(request), "body")
        except BodyError as exc:
            raise _Refused(_bad_request(exc.message, exc.field or "body")) from None
        partial = _flag(request.query.get("partial"), settings.frontdoor_partial_rows)
        mode = request.query.get("mode") or settings.http_mode
        if mode not in ("sync", "queue"):
            raise _Refused(_bad_request("mode must be sync or queue", "mode"))
        deadline = self._deadline()
        target = Target(dataset_id, table, path.workspace)
        if not partial:
            problems = self._ingestor().problems(target, rows, deadline=deadline)
            if problems:
                raise _Refused(_row_problems(problems, len(rows)))
        source = f"Add Rows request {request.header('x-request-id') or uuid.uuid4()}"
        return _RowsPlan(target, rows, deadline, source, mode == "queue")

    async def handle_async(self, request: WebRequest) -> WebResponse:
        """:meth:`handle` on the worker's event loop: concurrent Add Rows requests for one
        table share POSTs through ``coalescer`` (each answered when its own rows are
        acknowledged, each row accounted to its own request); every other operation runs on
        the executor."""
        loop = asyncio.get_running_loop()
        coalescer = self._coalescer() if self._coalescer is not None else None
        path = parse_path(request.route.get("path", ""))
        lowered = tuple(p.lower() for p in path.parts)
        is_rows = (
            request.method.upper() == "POST"
            and len(lowered) == 5
            and lowered[0] == "datasets"
            and lowered[2:5:2] == ("tables", "rows")
        )
        if coalescer is None or not is_rows:
            return await loop.run_in_executor(None, self.handle, request)

        def prepare() -> _RowsPlan | WebResponse:
            try:
                settings, _ = self._preflight(request)
                return self._rows_plan(request, path, path.parts[1], path.parts[3], settings)
            except _Refused as refused:
                return refused.answer
            except TransientError as exc:
                return _transient(exc)
            except PushError as exc:
                return _permanent(exc)

        plan = await loop.run_in_executor(None, prepare)
        if isinstance(plan, WebResponse):
            return plan
        if plan.queued:
            return await loop.run_in_executor(None, self._enqueue, plan)
        try:
            result = await coalescer.push(
                plan.target, plan.rows, source=plan.source, deadline=plan.deadline
            )
        except PushIncomplete as exc:
            try:
                answer = await loop.run_in_executor(None, self._requeue_stopped, plan, exc)
            except TransientError as failed:  # the claim check could not be stored
                return _transient(failed)
            return answer or _transient(exc)
        except TransientError as exc:
            return _transient(exc)
        return _rows_answer(result, len(plan.rows))

    def _delete_rows(
        self, path: _Path, dataset_id: str, table: str, settings: Settings
    ) -> WebResponse:
        if not settings.frontdoor_allow_delete_rows:
            return powerbi_error(
                403,
                "DeleteRowsDisabled",
                "Delete Rows is off on this bundle: set FRONTDOOR_ALLOW_DELETE_ROWS=true to allow "
                "it",
            )
        ingestor = self._ingestor()
        resolved = ingestor.resolve(Target(dataset_id, table, path.workspace), self._deadline())
        self._service().delete_rows(resolved.dataset_id, table, resolved.workspace_id)
        return WebResponse(200, None)


@dataclass(frozen=True)
class _RowsPlan:
    """An Add Rows request ready to send."""

    target: Target
    rows: list[Any]
    deadline: Deadline
    source: str
    queued: bool = False  # asynchronous mode: put on the rows queue, not sent now


def _rows_answer(result: PushResult, count: int) -> WebResponse:
    """Power BI's Add Rows answer for a delivered request (200, empty body), with the counts in
    headers; a request none of whose rows went anywhere but the dead letters is never a 2xx."""
    if result.failure is not None and not result.partly_failed:
        return _permanent(result.failure)
    headers = {"X-Rows-Sent": str(result.sent), "X-Rows-Rejected": str(result.rejected)}
    if result.partly_failed:
        # Another destination stored the rows: Power BI's 200 (a retry would add them there a
        # second time); these destinations' rows are dead-lettered, naming them.
        headers["X-Destinations-Failed"] = ",".join(result.partly_failed)
    if result.dead_letter_location:
        headers["X-Dead-Letters"] = result.dead_letter_location
    if result.rejected and not result.sent and not result.partly_failed:
        return _row_problems(result.problems, count, headers)
    return WebResponse(200, None, headers)


# -- helpers ----------------------------------------------------------------------------------


def _authenticate(settings: Settings, request: WebRequest) -> WebResponse | None:
    """None when the request carries one of the configured keys as its bearer token."""
    keys = settings.frontdoor_keys
    challenge = {"WWW-Authenticate": 'Bearer realm="powerbi-push-functions"'}
    if not keys:
        return powerbi_error(
            401,
            "Unauthorized",
            "no caller keys are configured (FRONTDOOR_KEYS): the Power BI surface is closed",
            headers=challenge,
        )
    scheme, _, token = (request.header("authorization") or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return powerbi_error(
            401,
            "Unauthorized",
            "send Authorization: Bearer <key>, with a key of this bundle",
            headers=challenge,
        )
    # Every key is compared (in constant time), whichever matches: no timing says which.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        return powerbi_error(401, "Unauthorized", "the bearer key is not valid", headers=challenge)
    return None


def _json_body(request: WebRequest) -> Any:
    try:
        return loads(request.body)
    except BodyError as exc:
        raise _Refused(_bad_request(exc.message, "body")) from None


def _bad_request(message: str, target: str) -> WebResponse:
    return powerbi_error(400, "BadRequest", "Bad Request", [{"message": message, "target": target}])


def _row_problems(
    problems: Sequence[RowProblem], count: int, headers: Mapping[str, str] | None = None
) -> WebResponse:
    """400 naming every bad row and column (as ``rows[i].Column``), as Power BI does."""
    details = []
    for problem in problems[:MAX_DETAILS]:
        target = f"rows[{problem.index}]" + (f".{problem.column}" if problem.column else "")
        details.append({"message": problem.reason, "target": target})
    rows = sorted({p.index for p in problems})
    message = (
        f"{len(rows)} of {count} rows cannot be stored (rows {', '.join(map(str, rows[:20]))}"
        f"{', ...' if len(rows) > 20 else ''}); nothing was sent"
    )
    return powerbi_error(400, "BadRequest", message, details, headers)


def _differences(definition: DatasetDefinition, live: list[dict[str, Any]]) -> str:
    """What differs between a definition and a live dataset's tables ("" when they match)."""
    have = {
        t.get("name"): {
            c.get("name"): canonical_type(c.get("dataType")) for c in t.get("columns") or []
        }
        for t in live
    }
    want = {
        name: {c.name: c.data_type for c in schema.columns}
        for name, schema in definition.tables.items()
    }
    if set(have) != set(want):
        return f"tables {sorted(map(str, have))} here, {sorted(want)} asked"
    for name, columns in want.items():
        if have[name] and have[name] != columns:
            return f"table {name!r} has columns {have[name]}, asked {columns}"
    return ""


def _count(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise _Refused(_bad_request(f"{name} must be a whole number, got {raw[:20]!r}", name))
    return int(raw)


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise _Refused(_bad_request("partial must be true or false", "partial"))
    return lowered in ("true", "1")


def _transient(exc: TransientError) -> WebResponse:
    wait = max(1, math.ceil(exc.retry_after or 1))
    throttled = exc.status == 429 or (exc.status is None and exc.retry_after is not None)
    sent = exc.result.sent if isinstance(exc, PushIncomplete) else 0
    headers = {"Retry-After": str(wait), "X-Rows-Sent": str(sent)}
    if throttled:
        return powerbi_error(429, "TooManyRequests", exc.message, headers=headers)
    return powerbi_error(503, "ServiceUnavailable", exc.message, headers=headers)


def _permanent(exc: PushError) -> WebResponse:
    if isinstance(exc, ForbiddenError):
        return powerbi_error(403, "Forbidden", exc.message)
    if isinstance(exc, NotFoundError):
        return powerbi_error(404, "ItemNotFound", exc.message)
    if isinstance(exc, AuthError):
        # Power BI refused this app's identity: not the sender's fault.
        return powerbi_error(502, "UpstreamUnauthorized", exc.message)
    if isinstance(exc, ConfigError):
        return powerbi_error(500, "ConfigError", exc.message)
    return powerbi_error(400, "BadRequest", exc.message)
