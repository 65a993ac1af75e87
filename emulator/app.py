"""The emulator's HTTP application: Power BI push API, token endpoints and the admin API.

Routes (``{p}`` is ``/v1.0/myorg`` or ``/v1.0/myorg/groups/{groupId}``):

====================================  ===================================================
``GET/POST {p}/datasets``             Get Datasets / Create Dataset
``GET/DELETE {p}/datasets/{id}``      Get Dataset / Delete Dataset
``GET {p}/datasets/{id}/tables``      Get Tables
``PUT {p}/datasets/{id}/tables/{t}``  Put Table (updates a table; never creates one)
``POST/DELETE .../tables/{t}/rows``   Post Rows / Delete Rows (all rows)
``GET /v1.0/myorg/groups``            Get Groups (``$filter``, ``$top``, ``$skip``): the caller's
``GET/POST/PUT .../groups/{g}/users``  Get Group Users / Add Group User / Update Group User
``DELETE .../groups/{g}/users/{u}``    Delete User In Group
``GET /msi/token``                    App Service managed-identity endpoint
``/{tenant}/v2.0/.well-known/...``    OpenID discovery; ``/{tenant}/oauth2/v2.0/token``
``/_emulator/...``                    emulator-only admin and read API (not in Power BI)
``GET /``                             the live dashboard (``emulator/dashboard.py``)
``/v1/rest/...``, ``/v2/rest/query``  the Kusto (Eventhouse / ADX) surface, ``emulator/kusto.py``
====================================  ===================================================

Who may call what (the tenant setting, workspace roles, My workspace for service principals) is
``emulator/access.py``; the refusals' forms and their sources are in ``emulator/errors.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from yarl import URL

from emulator import access, limits
from emulator.access import DEFAULT_USER, MANAGE, READ, WRITE, Member, TenantSetting
from emulator.clock import ScaledClock
from emulator.dashboard import DashboardApi
from emulator.definitions import parse_dataset, parse_retention, parse_table
from emulator.errors import (
    ApiError,
    bad_request,
    dataset_not_found,
    group_not_found,
    not_authorized,
    not_push,
    table_not_found,
)
from emulator.faults import FaultConfigError, FaultPlan
from emulator.identity import POWERBI_RESOURCE, IdentityConfig, TokenIssuer, TokenRejected
from emulator.kusto import KustoConfig, KustoService
from emulator.live import ArrivalHistory, DeadLetterWatch, LiveFeed
from emulator.odata import FilterError, parse_filter
from emulator.quotas import QuotaBook, Throttle, retry_after_header
from emulator.store import MY_WORKSPACE, Dataset, Store, Table
from emulator.values import COERCERS, ValueRejected

log = logging.getLogger("emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_ERROR_DETAILS = 20
#: The header clients of the 2016 preview send on Post Rows ("Specifying sequence numbers to
#: guarantee which rows have been successfully pushed and avoiding duplication", archived blog
#: https://powerbi.microsoft.com/it-it/blog/newdatasets/). It is in neither the current REST
#: reference nor its OpenAPI spec, and what the service answers to an old or repeated number
#: was never documented, so the emulator does not deduplicate on it (README, "What it does not
#: emulate"): the rows are stored like any others, the request is counted and the answer says so.
SEQUENCE_NUMBER_HEADER = "X-PowerBI-PushData-SequenceNumber"
_JSON_TYPES = re.compile(r"^(application|text)/([\w.+-]+\+)?json$")


@dataclass
class EmulatorConfig:
    """Everything the emulator is started with."""

    identity: IdentityConfig = field(default_factory=IdentityConfig)
    db_path: str = ":memory:"
    time_scale: float = 1.0
    workspaces: list[tuple[str, str | None]] = field(default_factory=list)
    faults: FaultPlan = field(default_factory=FaultPlan)
    #: (connection string, container) of the app's dead letters, for the dashboard to show;
    #: None: the dashboard says it is not connected.
    deadletters: tuple[str, str] | None = None
    #: Members of configured workspaces, by workspace name; a workspace not named here gets
    #: the default members (:meth:`Emulator.default_members`) unless it already has a list.
    members: dict[str, list[Member]] = field(default_factory=dict)
    #: The tenant setting at start; None: the stored one (enabled for everyone by default).
    tenant: TenantSetting | None = None
    #: The Kusto (Eventhouse) surface: databases, streaming capability, queued-ingestion storage.
    kusto: KustoConfig = field(default_factory=KustoConfig)


class Emulator:
    """The state behind the routes: store, quotas, tokens, faults and counters."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config.db_path)
        self.clock = ScaledClock(config.time_scale)
        self.quotas = QuotaBook(self.clock)
        key = self.store.secret("signing_key", uuid.uuid4().bytes + uuid.uuid4().bytes)
        self.tokens = TokenIssuer(config.identity, key)
        self.faults = config.faults
        self.counters: dict[str, Counter[str]] = {}
        #: Per dataset, the batches stored whose answer was then lost (accept_then_fail): the
        #: table and the positions of their rows, so a test can tell which duplicates they
        #: explain. Positions are as stored; FIFO trimming shifts them.
        self.answers_lost: dict[str, list[dict[str, Any]]] = {}
        self.auth_failures: Counter[str] = Counter()
        if config.tenant is not None:
            self.store.set_tenant(config.tenant)
        self.tenant = self.store.tenant()
        for name, workspace_id in config.workspaces:
            added = self.store.add_workspace(name, workspace_id)
            if name in config.members:
                self.store.set_members(added, config.members[name])
        for workspace in self.store.workspaces:
            if workspace not in self.store.members:  # new, or from a --db file made before
                self.store.set_members(workspace, self.default_members())
        #: Datasets whose Post Rows carried a sequence number already logged (once each).
        self.sequence_numbers_seen: set[str] = set()
        #: What the live dashboard watches (emulator/live.py).
        self.feed = LiveFeed()
        self.arrivals = ArrivalHistory(self.clock)
        self.deadletters = (
            DeadLetterWatch(*config.deadletters, on_change=self.feed.changed)
            if config.deadletters
            else None
        )
        #: The second destination (issue 18): a KQL database's endpoints (emulator/kusto.py).
        self.kusto = KustoService(config.kusto, self.tokens, self.feed.changed)

    def count(self, dataset_id: str, key: str, amount: int = 1) -> None:
        """Add to a dataset's counter; every counted event is also news for the dashboard."""
        self.counters.setdefault(dataset_id, Counter())[key] += amount
        self.feed.changed()

    def default_members(self) -> list[Member]:
        """The emulator's own identities, so that ``make run`` and tests work as before: the
        admin token's default user as Admin; the system-assigned and user-assigned managed
        identities and the registered client apps as Member (enough to push, and to grant
        roles up to Member)."""
        identity = self.config.identity
        members = [
            Member(DEFAULT_USER, "User", "Admin", "Emulator user"),
            Member(
                identity.system_principal_id,
                "App",
                "Member",
                "System-assigned managed identity",
            ),
        ]
        members += [
            Member(principal, "App", "Member", f"User-assigned managed identity {client_id}")
            for client_id, principal in identity.user_assigned.items()
        ]
        members += [
            Member(f"sp-{client_id}", "App", "Member", f"App registration {client_id}")
            for client_id in identity.clients
        ]
        unique: dict[str, Member] = {}
        for member in members:
            unique.setdefault(member.identifier.lower(), member)
        return list(unique.values())

    def set_tenant(self, tenant: TenantSetting) -> None:
        self.tenant = tenant
        self.store.set_tenant(tenant)
        self.feed.changed()

    # -- lookups ------------------------------------------------------------------------

    def workspace(
        self, request: web.Request, needed: str = READ, action: str = "This operation"
    ) -> str:
        """The request's workspace key, after the caller's right to do ``action`` there is
        checked: a service principal may not use My workspace; in a workspace the caller needs
        the role ``needed`` (``access.READ``, ``WRITE`` or ``MANAGE``)."""
        claims: dict[str, Any] = request.get("claims", {})
        group_id = request.match_info.get("groupId")
        if group_id is None:
            access.check_my_workspace(claims)
            return MY_WORKSPACE
        if group_id.lower() not in self.store.workspaces:
            raise group_not_found(group_id)
        workspace = group_id.lower()
        access.require(self.store.members.get(workspace, {}), claims, needed, workspace, action)
        return workspace

    def dataset(
        self, request: web.Request, needed: str = READ, action: str = "This operation"
    ) -> Dataset:
        workspace = self.workspace(request, needed, action)
        dataset_id = request.match_info["datasetId"]
        dataset = self.store.datasets.get(dataset_id.lower())
        if dataset is None or dataset.workspace != workspace:
            raise dataset_not_found(dataset_id)
        return dataset

    def push_table(
        self, request: web.Request, needed: str = READ, action: str = "This operation"
    ) -> tuple[Dataset, Table]:
        dataset = self.dataset(request, needed, action)
        if not dataset.is_push:
            raise not_push(dataset.id)
        name = request.match_info["tableName"]
        table = dataset.tables.get(name)  # case-sensitive, as the service is
        if table is None:
            raise table_not_found(name, dataset.id)
        return dataset, table


# -- helpers ----------------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _odata(request: web.Request, entity: str, value: list[Any], **extra: Any) -> web.Response:
    context = f"{request.scheme}://{request.host}/v1.0/myorg/$metadata#{entity}"
    return _json({"@odata.context": context, **extra, "value": value})


def _api_base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/v1.0/myorg"


async def _read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; a larger body is a 413 (drained first, so the client
    sees the answer rather than a reset while it is still sending)."""
    if request.content_length is not None and request.content_length > limit:
        await _drain(request, 4 * limit)
        raise ApiError(
            413,
            "RequestEntityTooLarge",
            f"The request body is {request.content_length:,} bytes; at most {limit:,} are allowed.",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            await _drain(request, 4 * limit)
            raise ApiError(
                413, "RequestEntityTooLarge", f"The request body exceeds {limit:,} bytes."
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: web.Request, cap: int) -> None:
    seen = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        seen += len(chunk)
        if seen > cap:
            break


async def _read_json(request: web.Request, limit: int = limits.MAX_BODY_BYTES) -> Any:
    content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
    if content_type and not _JSON_TYPES.match(content_type.lower()):
        await _drain(request, 4 * limit)
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"The request entity's media type '{content_type}' is not supported for this "
            "resource; send application/json.",
        )
    raw = await _read_body(request, limit)
    try:
        return json.loads(raw.decode("utf-8-sig"))  # JSON on the wire is UTF-8 (RFC 8259)
    except UnicodeDecodeError:
        raise bad_request("The request body is not UTF-8 encoded JSON.") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno} (character {exc.pos}).",
        ) from None
    except RecursionError:
        raise bad_request("The request body is nested too deeply.") from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4,300-digit limit
        raise bad_request(f"The request body is not valid JSON: {exc}.") from None


def _drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the socket without an answer, as a lost connection looks to the client."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError


def _throttled(emulator: Emulator, throttle: Throttle) -> ApiError:
    return ApiError(
        429,
        "TooManyRequests",
        throttle.message,
        headers={
            "Retry-After": retry_after_header(emulator.clock, throttle.retry_after),
            "x-emulator-throttle-reason": throttle.reason,
        },
    )


# -- middleware -------------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error in the service's shape and tag every answer with a RequestId."""
    request_id = str(uuid.uuid4())
    try:
        response = await handler(request)
    except ApiError as exc:
        if exc.raw == b"":
            response = web.Response(status=exc.status)
        else:
            response = _json(exc.body() if exc.raw is None else exc.raw, exc.status)
        response.headers.update(exc.headers)
    except web.HTTPException as exc:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status, exc.reason)
        message = (
            f"No HTTP resource was found that matches the request URI '{request.path}'."
            if exc.status == 404
            else f"The requested resource does not support http method '{request.method}'."
            if exc.status == 405
            else exc.reason
        )
        response = _json({"error": {"code": code, "message": message}}, exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = _json(
            {"error": {"code": "InternalServerError", "message": "An internal error occurred."}},
            500,
        )
    response.headers["RequestId"] = request_id
    return response


def auth_middleware(emulator: Emulator) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1.0/"):
            try:
                request["claims"] = emulator.tokens.verify(request.headers.get("Authorization"))
            except TokenRejected as exc:
                emulator.auth_failures[exc.code] += 1
                await _drain(request, 4 * limits.MAX_BODY_BYTES)
                raise ApiError(
                    exc.status,
                    exc.code,
                    exc.message,
                    headers={"WWW-Authenticate": f'Bearer realm="", error="{exc.code}"'},
                ) from None
            try:
                access.check_tenant(emulator.tenant, request["claims"])
            except ApiError as exc:
                emulator.auth_failures[exc.code] += 1
                await _drain(request, 4 * limits.MAX_BODY_BYTES)
                raise
        return await handler(request)

    return middleware


# -- Power BI push API ------------------------------------------------------------------------


class PushApi:
    """Handlers for the 17 push operations."""

    def __init__(self, emulator: Emulator) -> None:
        self.em = emulator

    async def inject(self, request: web.Request, operation: str, dataset_id: str) -> str | None:
        """Apply the fault plan; return ``"accept_then_fail"`` if the answer must be lost."""
        plan = self.em.faults
        if not plan.applies_to(operation):
            return None
        delay = plan.draw_latency()
        if delay:
            self.em.count(dataset_id, "injected_latency")
            await asyncio.sleep(delay)
        fault = plan.draw()
        if fault is None:
            return None
        self.em.count(dataset_id, f"injected_{fault}")
        if fault == "throttle":
            await _drain(request, 4 * limits.MAX_BODY_BYTES)
            raise ApiError(
                429,
                "TooManyRequests",
                "You have exceeded the amount of requests allowed in the current time frame and "
                f"further requests will fail. Retry in {plan.retry_after} seconds.",
                headers={"Retry-After": str(plan.retry_after), "x-emulator-fault": "throttle"},
            )
        if fault in ("error_500", "error_503"):
            await _drain(request, 4 * limits.MAX_BODY_BYTES)
            status = 500 if fault == "error_500" else 503
            headers = {"x-emulator-fault": fault}
            if status == 503:
                headers["Retry-After"] = str(plan.retry_after)
            raise ApiError(
                status,
                "InternalServerError" if status == 500 else "ServiceUnavailable",
                "The service is temporarily unavailable (injected fault).",
                headers=headers,
            )
        if fault == "drop":
            _drop_connection(request)
        return fault

    async def get_groups(self, request: web.Request) -> web.Response:
        matches = _odata_filter(request.query.get("$filter"))  # parsed once; 400 before any work
        groups = [
            {
                "id": gid,
                "name": name,
                "isReadOnly": False,
                "isOnDedicatedCapacity": False,
                "type": "Workspace",
            }
            for gid, name in sorted(self.em.store.workspaces.items(), key=lambda kv: kv[1])
            # Get Groups lists only the workspaces the caller has access to.
            if access.role_of(self.em.store.members.get(gid, {}), request["claims"]) is not None
        ]
        groups = [g for g in groups if matches(g)]
        skip = _int_param(request, "$skip", 0)
        top = _int_param(request, "$top", len(groups))
        page = groups[skip : skip + top]
        return _odata(request, "groups", page, **{"@odata.count": len(page)})

    async def get_datasets(self, request: web.Request) -> web.Response:
        workspace = self.em.workspace(request, READ, "Get Datasets")
        base = _api_base(request)
        value = [
            d.to_api(base) for d in self.em.store.datasets.values() if d.workspace == workspace
        ]
        return _odata(request, "datasets", value)

    async def post_dataset(self, request: web.Request) -> web.Response:
        workspace = self.em.workspace(request, WRITE, "Create Dataset")
        retention = parse_retention(request.query.get("defaultRetentionPolicy"))
        body = await _read_json(request)
        name, mode, tables = parse_dataset(body)
        dataset = self.em.store.create_dataset(workspace, name, retention, mode, tables, body)
        self.em.feed.changed()
        log.info("created dataset %s (%s) with %d tables", name, dataset.id, len(tables))
        answer = dataset.to_api(_api_base(request))
        answer["defaultRetentionPolicy"] = retention
        answer = {"@odata.context": f"{_api_base(request)}/$metadata#datasets/$entity", **answer}
        return _json(answer, 201)

    async def get_dataset(self, request: web.Request) -> web.Response:
        dataset = self.em.dataset(request, READ, "Get Dataset")
        body = dataset.to_api(_api_base(request))
        return _json({"@odata.context": f"{_api_base(request)}/$metadata#datasets/$entity", **body})

    async def delete_dataset(self, request: web.Request) -> web.Response:
        dataset = self.em.dataset(request, WRITE, "Delete Dataset")
        self.em.store.delete_dataset(dataset)
        self.em.quotas.forget(dataset.id)
        self.em.arrivals.forget(dataset.id)
        self.em.answers_lost.pop(dataset.id, None)
        self.em.feed.changed()
        return web.Response(status=200)

    async def get_tables(self, request: web.Request) -> web.Response:
        dataset = self.em.dataset(request, READ, "Get Tables")
        if not dataset.is_push:
            raise not_push(dataset.id)
        return _odata(request, "tables", [t.to_api() for t in dataset.tables.values()])

    async def put_table(self, request: web.Request) -> web.Response:
        dataset, table = self.em.push_table(request, WRITE, "Put Table")
        new = parse_table(await _read_json(request))
        if new.name != table.name:
            raise bad_request(
                f"The table name in the body ('{new.name}') must match the URL ('{table.name}')."
            )
        self.em.store.replace_table(dataset, new)
        self.em.feed.changed()
        return _json(new.to_api())

    async def delete_rows(self, request: web.Request) -> web.Response:
        dataset, table = self.em.push_table(request, WRITE, "Delete Rows")
        self.em.store.delete_rows(dataset, table)
        self.em.arrivals.forget(dataset.id, table.name)
        lost = self.em.answers_lost.get(dataset.id, [])
        lost[:] = [batch for batch in lost if batch["table"] != table.name]  # offsets now void
        self.em.feed.changed()
        return web.Response(status=200)

    async def post_rows(self, request: web.Request) -> web.StreamResponse:
        dataset, table = self.em.push_table(request, WRITE, "Post Rows")
        self.em.count(dataset.id, "requests")
        answer_headers = self._sequence_number(request, dataset)
        pending = self.em.quotas.begin(dataset.id)
        if pending is not None:
            self.em.count(dataset.id, f"throttled_{pending.reason}")
            await _drain(request, 4 * limits.MAX_BODY_BYTES)
            raise _throttled(self.em, pending)
        try:
            fault = await self.inject(request, "PostRows", dataset.id)
            try:
                rows = _check_rows(table, await _read_json(request))
            except ApiError as exc:
                self.em.count(dataset.id, f"rejected_{exc.status}")
                raise
            large = any(t.row_count >= limits.LARGE_TABLE_ROWS for t in dataset.tables.values())
            throttle = self.em.quotas.check(dataset.id, len(rows), large)
            if throttle is not None:
                self.em.count(dataset.id, f"throttled_{throttle.reason}")
                raise _throttled(self.em, throttle)
            if (
                dataset.retention == "None"
                and table.row_count + len(rows) > limits.NONE_RETENTION_MAX_ROWS
            ):
                self.em.count(dataset.id, "rejected_400")
                raise bad_request(
                    f"Table '{table.name}' holds {table.row_count:,} rows; a table in a dataset "
                    f"without a retention policy holds at most "
                    f"{limits.NONE_RETENTION_MAX_ROWS:,}.",
                    "rows",
                )
            offset = table.row_count
            self.em.store.add_rows(dataset, table, rows)
            if dataset.retention == "basicFIFO":
                self.em.store.trim_oldest(dataset, table, limits.FIFO_MAX_ROWS)
            self.em.quotas.record(dataset.id, len(rows))
            self.em.arrivals.record(dataset.id, table.name, len(rows))
            self.em.count(dataset.id, "posts_accepted")
            self.em.count(dataset.id, "rows_accepted", len(rows))
            if fault == "accept_then_fail":
                self.em.count(dataset.id, "rows_answer_lost", len(rows))
                self.em.answers_lost.setdefault(dataset.id, []).append(
                    {"table": table.name, "offset": offset, "count": len(rows)}
                )
                _drop_connection(request)
            return web.Response(status=200, headers=answer_headers)
        finally:
            self.em.quotas.end(dataset.id)

    # -- Group users (workspace access) ---------------------------------------------------

    async def get_group_users(self, request: web.Request) -> web.Response:
        """Get Group Users: the access list, for any member of the workspace."""
        workspace = self.em.workspace(request, READ, "Get Group Users")
        members = self.em.store.members.get(workspace, {}).values()
        return _odata(request, "groupUsers", [m.to_api() for m in members])

    async def add_group_user(self, request: web.Request) -> web.Response:
        """Add Group User: an Admin grants any role; a Member grants at most Member."""
        workspace = self.em.workspace(request, MANAGE, "Add Group User")
        role = self._caller_role(request, workspace)
        member = access.parse_group_user(await _read_json(request, 1 << 20))
        self._may_grant(role, member.access_right, workspace)
        if member.identifier.lower() in self.em.store.members.get(workspace, {}):
            raise ApiError(
                400,
                "AddingAlreadyExistsGroupUserNotSupportedError",
                f"{member.identifier} is already a user of workspace {workspace}; change its "
                "access right with Update Group User (PUT).",
            )
        self.em.store.put_member(workspace, member)
        self.em.feed.changed()
        log.info("workspace %s: %s added as %s", workspace, member.identifier, member.access_right)
        return web.Response(status=200)

    async def update_group_user(self, request: web.Request) -> web.Response:
        """Update Group User: change an existing member's role (an Admin's only by an Admin)."""
        workspace = self.em.workspace(request, MANAGE, "Update Group User")
        role = self._caller_role(request, workspace)
        member = access.parse_group_user(await _read_json(request, 1 << 20))
        existing = self.em.store.members.get(workspace, {}).get(member.identifier.lower())
        if existing is None:
            raise ApiError(
                404,
                "PowerBIEntityNotFound",
                f"{member.identifier} is not a user of workspace {workspace}; add it with Add "
                "Group User (POST).",
            )
        self._may_grant(role, member.access_right, workspace)
        if existing.access_right == "Admin" and role != "Admin":
            raise not_authorized(
                f"The caller is {role} of workspace {workspace}; only an Admin may change an "
                "Admin's access right."
            )
        self.em.store.put_member(
            workspace,
            Member(
                existing.identifier,
                member.principal_type,
                member.access_right,
                member.display_name or existing.display_name,
            ),
        )
        self.em.feed.changed()
        return web.Response(status=200)

    async def delete_group_user(self, request: web.Request) -> web.Response:
        """Delete User In Group: Admin only ("Add/remove people, including other admins")."""
        workspace = self.em.workspace(request, "Admin", "Delete User In Group")
        user = request.match_info["user"]
        if user.lower() not in self.em.store.members.get(workspace, {}):
            raise ApiError(
                404, "PowerBIEntityNotFound", f"{user} is not a user of workspace {workspace}."
            )
        self.em.store.remove_member(workspace, user)
        self.em.feed.changed()
        return web.Response(status=200)

    def _caller_role(self, request: web.Request, workspace: str) -> str:
        role = access.role_of(self.em.store.members.get(workspace, {}), request["claims"])
        assert role is not None  # workspace() has checked membership
        return role

    @staticmethod
    def _may_grant(role: str, right: str, workspace: str) -> None:
        """A Member adds "members or others with lower permissions"; only an Admin grants
        Admin ("Roles in workspaces" table)."""
        if access.rank(right) > access.rank(role):
            raise not_authorized(
                f"The caller is {role} of workspace {workspace}; granting {right} needs Admin."
            )

    def _sequence_number(self, request: web.Request, dataset: Dataset) -> dict[str, str]:
        """Note a sequence-number header (not emulated: see SEQUENCE_NUMBER_HEADER); return the
        headers that tell the client its number was not acted on."""
        if SEQUENCE_NUMBER_HEADER not in request.headers:
            return {}
        self.em.count(dataset.id, "sequence_numbers_ignored")
        if dataset.id not in self.em.sequence_numbers_seen:
            self.em.sequence_numbers_seen.add(dataset.id)
            log.warning(
                "dataset %s: Post Rows carries %s; the emulator does not deduplicate on it "
                "(an undocumented preview feature): every batch is stored",
                dataset.id,
                SEQUENCE_NUMBER_HEADER,
            )
        return {"x-emulator-ignored": SEQUENCE_NUMBER_HEADER}


def _check_rows(table: Table, body: Any) -> list[dict[str, Any]]:
    """Validate a Post Rows body against the table; return the rows as stored, or raise 400."""
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
        raise bad_request("The body must be a JSON object with a 'rows' array.", "rows")
    rows_in: list[Any] = body["rows"]
    if len(rows_in) > limits.MAX_ROWS_PER_POST:
        raise bad_request(
            f"The request has {len(rows_in):,} rows; at most {limits.MAX_ROWS_PER_POST:,} rows "
            "are allowed per POST rows request.",
            "rows",
        )
    types = table.column_types()
    empty = dict.fromkeys(types)
    coercers = {name: COERCERS[data_type] for name, data_type in types.items()}
    problems: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(rows_in):
        if not isinstance(row, dict):
            problems.append({"message": "A row must be a JSON object.", "target": f"rows[{index}]"})
        else:
            stored = dict(empty)
            for column, value in row.items():
                coercer = coercers.get(column)
                if coercer is None:
                    problems.append(
                        {
                            "message": f"The column '{column}' does not exist in table "
                            f"'{table.name}'.",
                            "target": f"rows[{index}]",
                        }
                    )
                    continue
                if value is None:
                    continue
                try:
                    stored[column] = coercer(value)
                except ValueRejected as exc:
                    problems.append({"message": str(exc), "target": f"rows[{index}].{column}"})
            rows.append(stored)
        if len(problems) >= MAX_ERROR_DETAILS:
            break
    if problems:
        raise ApiError(400, "BadRequest", "Bad Request", details=problems)
    return rows


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be a whole number, got {raw!r}.", name) from None
    if not 0 <= value <= 2**31 - 1:
        raise bad_request(f"{name} must be between 0 and 2147483647.", name)
    return value


def _odata_filter(expression: str | None) -> Callable[[dict[str, Any]], bool]:
    """The ``$filter`` predicate (emulator/odata.py), or a 400 naming what is not understood."""
    try:
        return parse_filter(expression)
    except FilterError as exc:
        raise bad_request(
            f"Unsupported $filter {expression!r}: {exc}. The emulator understands name eq "
            "'...', id eq '...' and contains(name,'...'), joined by and / or, in parentheses.",
            "$filter",
        ) from None


# -- token endpoints --------------------------------------------------------------------------


class TokenApi:
    """The managed-identity endpoint and the Entra-style client-credentials endpoints."""

    def __init__(self, emulator: Emulator) -> None:
        self.em = emulator

    def _tenant(self, request: web.Request) -> str:
        tenant = request.match_info["tenant"]
        if tenant.lower() not in (self.em.config.identity.tenant_id, "organizations"):
            raise ApiError(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        return tenant

    async def msi_token(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("api-version") != "2019-08-01":
            return _json({"statusCode": 400, "message": "api-version must be 2019-08-01"}, 400)
        resource = query.get("resource", "").removesuffix("/.default")
        if not resource:
            return _json({"statusCode": 400, "message": "resource is required"}, 400)
        try:
            principal, client_id = self.em.tokens.managed_identity_principal(
                request.headers.get("X-IDENTITY-HEADER"), query.get("client_id")
            )
        except TokenRejected as exc:
            return _json({"statusCode": exc.status, "message": exc.message}, exc.status)
        for other in ("principal_id", "object_id", "mi_res_id"):
            if other in query:
                return _json(
                    {
                        "statusCode": 400,
                        "message": f"{other} is not supported by the emulator; "
                        "select a user-assigned identity by client_id.",
                    },
                    400,
                )
        token, expires_on = self.em.tokens.issue(
            audience=resource, subject=principal, app_id=client_id
        )
        return _json(
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )

    async def openid_configuration(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        base = f"{request.scheme}://{request.host}/{tenant}"
        return _json(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "EU",
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        endpoint = f"{request.scheme}://{request.host}/{tenant}/oauth2/v2.0/token"
        form = {k: str(v) for k, v in (await request.post()).items()}
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is served.")
        scope = form.get("scope", "").split()
        defaults = [s for s in scope if s.endswith("/.default")]
        if len(defaults) != 1:
            return _oauth_error(
                400,
                "invalid_scope",
                "AADSTS1002012: Use one scope of the form <resource>/.default.",
            )
        try:
            app = self.em.tokens.authenticate_client(form, endpoint)
        except TokenRejected as exc:
            return _oauth_error(exc.status, exc.code, exc.message)
        token, expires_on = self.em.tokens.issue(
            audience=defaults[0].removesuffix("/.default"),
            subject=f"sp-{app.client_id}",
            app_id=app.client_id,
        )
        lifetime = expires_on - int(time.time())
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }
        )


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return _json({"error": error, "error_description": description, "error_codes": []}, status)


# -- emulator-only admin and read API ---------------------------------------------------------


class AdminApi:
    """``/_emulator/...``: what tests, benchmarks and the dashboard use to look inside."""

    def __init__(self, emulator: Emulator) -> None:
        self.em = emulator

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "timeScale": self.em.clock.scale, "db": self.em.store.path})

    async def add_workspace(self, request: web.Request) -> web.Response:
        """Create a workspace; ``members`` (optional) is its access list, else the defaults."""
        body = await _read_json(request, 1 << 20)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise bad_request(
                'Send {"name": "...", "id": "<optional uuid>", "members": [<optional>]}.'
            )
        members = _members(body["members"]) if "members" in body else None
        try:
            workspace_id = self.em.store.add_workspace(body["name"], body.get("id"))
        except (ValueError, TypeError, AttributeError):
            raise bad_request("'id' must be a UUID.", "id") from None
        if members is not None:
            self.em.store.set_members(workspace_id, members)
        elif workspace_id not in self.em.store.members:
            self.em.store.set_members(workspace_id, self.em.default_members())
        self.em.feed.changed()
        listed = self.em.store.members[workspace_id].values()
        return _json(
            {"id": workspace_id, "name": body["name"], "members": [m.to_api() for m in listed]},
            201,
        )

    def _known_workspace(self, request: web.Request) -> str:
        workspace = request.match_info["workspaceId"].lower()
        if workspace not in self.em.store.workspaces:
            raise group_not_found(request.match_info["workspaceId"])
        return workspace

    async def get_members(self, request: web.Request) -> web.Response:
        workspace = self._known_workspace(request)
        members = self.em.store.members.get(workspace, {}).values()
        return _json({"value": [m.to_api() for m in members]})

    async def put_members(self, request: web.Request) -> web.Response:
        """Replace a workspace's access list (no Power BI rules: this is the emulator's own)."""
        workspace = self._known_workspace(request)
        body = await _read_json(request, 1 << 20)
        if not isinstance(body, dict) or "value" not in body:
            raise bad_request(
                'Send {"value": [{"identifier", "principalType", "groupUserAccessRight"}, ...]}.',
                "value",
            )
        self.em.store.set_members(workspace, _members(body["value"]))
        self.em.feed.changed()
        return await self.get_members(request)

    async def get_tenant(self, request: web.Request) -> web.Response:
        return _json(self.em.tenant.to_json())

    async def put_tenant(self, request: web.Request) -> web.Response:
        self.em.set_tenant(TenantSetting.from_json(await _read_json(request, 1 << 20)))
        log.info("tenant setting: %s", self.em.tenant.to_json())
        return _json(self.em.tenant.to_json())

    async def token(self, request: web.Request) -> web.Response:
        body = await _read_json(request, 1 << 20) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise bad_request("Send a JSON object.")
        lifetime = body.get("lifetime", self.em.config.identity.token_lifetime)
        if not isinstance(lifetime, int):
            raise bad_request("'lifetime' must be whole seconds.", "lifetime")
        identity_type = body.get("identityType", "user")
        if identity_type not in ("user", "app"):
            raise bad_request("'identityType' must be 'user' or 'app'.", "identityType")
        subject = str(body.get("subject", DEFAULT_USER))
        token, expires_on = self.em.tokens.issue(
            audience=str(body.get("audience", POWERBI_RESOURCE)),
            subject=subject,
            # An app token's appid is the app itself; a user's names the client it signed in with.
            app_id=subject if identity_type == "app" else "emulator-admin",
            identity_type=identity_type,
            lifetime=lifetime,
        )
        return _json({"access_token": token, "expires_on": expires_on})

    async def revoke_tokens(self, request: web.Request) -> web.Response:
        """Every token issued so far is refused from now on (403 TokenExpired); new ones work."""
        return _json({"generation": self.em.tokens.revoke()})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.em.faults.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            self.em.faults = FaultPlan.from_json(await _read_json(request, 1 << 20))
        except FaultConfigError as exc:
            raise bad_request(str(exc), "faults") from None
        log.info("fault plan set: %s", self.em.faults.to_json())
        return _json(self.em.faults.to_json())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.em.faults = FaultPlan()
        return _json(self.em.faults.to_json())

    async def clock(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await _read_json(request, 1 << 20)
            seconds = body.get("advance") if isinstance(body, dict) else None
            if not isinstance(seconds, int | float) or seconds < 0:
                raise bad_request('Send {"advance": <emulated seconds, 0 or more>}.', "advance")
            self.em.clock.advance(float(seconds))
            self.em.feed.changed()  # quota windows and the chart moved
        return _json({"now": self.em.clock.now(), "scale": self.em.clock.scale})

    def _dataset_state(self, dataset: Dataset) -> dict[str, Any]:
        return {
            "id": dataset.id,
            "name": dataset.name,
            "workspace": dataset.workspace or None,
            "retention": dataset.retention,
            "mode": dataset.mode,
            "tables": [
                {
                    "name": t.name,
                    "rows": t.row_count,
                    "columns": [{"name": c.name, "dataType": c.data_type} for c in t.columns],
                }
                for t in dataset.tables.values()
            ],
            "usage": self.em.quotas.usage(dataset.id),
            "counters": dict(self.em.counters.get(dataset.id, Counter())),
            "answersLost": list(self.em.answers_lost.get(dataset.id, [])),
        }

    async def state(self, request: web.Request) -> web.Response:
        return _json(
            {
                "workspaces": [
                    {
                        "id": k,
                        "name": v,
                        "members": [m.to_api() for m in self.em.store.members.get(k, {}).values()],
                    }
                    for k, v in self.em.store.workspaces.items()
                ],
                "tenant": self.em.tenant.to_json(),
                "datasets": [self._dataset_state(d) for d in self.em.store.datasets.values()],
                "authFailures": dict(self.em.auth_failures),
                "faults": self.em.faults.to_json(),
            }
        )

    async def dataset_state(self, request: web.Request) -> web.Response:
        dataset = self.em.store.datasets.get(request.match_info["datasetId"].lower())
        if dataset is None:
            raise dataset_not_found(request.match_info["datasetId"])
        return _json(self._dataset_state(dataset))

    async def rows(self, request: web.Request) -> web.Response:
        dataset = self.em.store.datasets.get(request.match_info["datasetId"].lower())
        if dataset is None:
            raise dataset_not_found(request.match_info["datasetId"])
        table = dataset.tables.get(request.match_info["tableName"])
        if table is None:
            raise table_not_found(request.match_info["tableName"], dataset.id)
        offset = _int_param(request, "offset", 0)
        limit = _int_param(request, "limit", table.row_count)
        rows = self.em.store.read_rows(dataset, table, offset, limit)
        return _json({"count": table.row_count, "offset": offset, "rows": rows})

    async def reset(self, request: web.Request) -> web.Response:
        for dataset in list(self.em.store.datasets.values()):
            self.em.store.delete_dataset(dataset)
            self.em.quotas.forget(dataset.id)
            self.em.arrivals.forget(dataset.id)
        self.em.counters.clear()
        self.em.answers_lost.clear()
        self.em.sequence_numbers_seen.clear()
        self.em.auth_failures.clear()
        self.em.faults = FaultPlan()
        self.em.feed.changed()
        return _json({"status": "reset"})


def _members(value: Any) -> list[Member]:
    """An admin-API member list; a 400 naming the bad entry or field."""
    if not isinstance(value, list):
        raise bad_request("'members' must be a list.", "members")
    members = [access.parse_member(m, f"members[{i}]") for i, m in enumerate(value)]
    if len({m.identifier.lower() for m in members}) != len(members):
        raise bad_request("An identifier is listed twice.", "members")
    return members


_SLASHES = re.compile(r"/{2,}")


async def _without_empty_segments(request: web.Request) -> web.StreamResponse:
    """Serve a push-API path that has empty segments as the same path without them.

    Power BI tolerates empty path segments: one public client has always built
    ``.../v1.0/myorg//datasets...`` and gets answers. The request is resolved again on the
    collapsed path (query string kept) and handed to that route's handler; the middlewares have
    already run (token checked, errors rendered) for this request, so they are not run twice.
    """
    raw = _SLASHES.sub("/", request.rel_url.raw_path).rstrip("/") or "/"
    inner = request.clone(
        rel_url=URL.build(path=raw, query_string=request.rel_url.raw_query_string, encoded=True)
    )
    match = await request.app.router.resolve(inner)
    match.add_app(request.app)
    match.freeze()
    # What aiohttp's Application._handle does with a resolved route (aiohttp 3.x): there is no
    # public way to re-route a request, and a redirect would make clients re-send their body.
    inner._match_info = match
    return await match.handler(inner)  # an unknown collapsed path raises its 404/405 here


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """Build the emulator's aiohttp application."""
    emulator = Emulator(config or EmulatorConfig())
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware(emulator)],
        # Bodies are read and limited by the handlers themselves, to answer 413 in the
        # service's shape instead of aiohttp's own.
        client_max_size=8 * limits.MAX_BODY_BYTES,
    )
    app["emulator"] = emulator
    push, tokens, admin = PushApi(emulator), TokenApi(emulator), AdminApi(emulator)
    for prefix in ("/v1.0/myorg", "/v1.0/myorg/groups/{groupId}"):
        app.router.add_get(f"{prefix}/datasets", push.get_datasets)
        app.router.add_post(f"{prefix}/datasets", push.post_dataset)
        app.router.add_get(f"{prefix}/datasets/{{datasetId}}", push.get_dataset)
        app.router.add_delete(f"{prefix}/datasets/{{datasetId}}", push.delete_dataset)
        app.router.add_get(f"{prefix}/datasets/{{datasetId}}/tables", push.get_tables)
        app.router.add_put(f"{prefix}/datasets/{{datasetId}}/tables/{{tableName}}", push.put_table)
        rows = f"{prefix}/datasets/{{datasetId}}/tables/{{tableName}}/rows"
        app.router.add_post(rows, push.post_rows)
        app.router.add_delete(rows, push.delete_rows)
    app.router.add_get("/v1.0/myorg/groups", push.get_groups)
    users = "/v1.0/myorg/groups/{groupId}/users"
    app.router.add_get(users, push.get_group_users)
    app.router.add_post(users, push.add_group_user)
    app.router.add_put(users, push.update_group_user)
    app.router.add_delete(users + "/{user}", push.delete_group_user)
    # Last: a push-API path with an empty segment (``myorg//datasets``, ``groups/{id}//...``,
    # a trailing ``/``) matches none of the routes above; it is served as the path without them.
    app.router.add_route("*", "/v1.0/{path:/.*|.*//.*|.*/}", _without_empty_segments)
    app.router.add_get("/msi/token", tokens.msi_token)
    app.router.add_get(
        "/{tenant}/v2.0/.well-known/openid-configuration", tokens.openid_configuration
    )
    app.router.add_post("/{tenant}/oauth2/v2.0/token", tokens.token)
    app.router.add_get("/_emulator/health", admin.health)
    app.router.add_post("/_emulator/workspaces", admin.add_workspace)
    app.router.add_get("/_emulator/workspaces/{workspaceId}/users", admin.get_members)
    app.router.add_put("/_emulator/workspaces/{workspaceId}/users", admin.put_members)
    app.router.add_get("/_emulator/tenant", admin.get_tenant)
    app.router.add_put("/_emulator/tenant", admin.put_tenant)
    app.router.add_post("/_emulator/token", admin.token)
    app.router.add_post("/_emulator/tokens/revoke", admin.revoke_tokens)
    app.router.add_get("/_emulator/faults", admin.get_faults)
    app.router.add_put("/_emulator/faults", admin.set_faults)
    app.router.add_delete("/_emulator/faults", admin.clear_faults)
    app.router.add_get("/_emulator/clock", admin.clock)
    app.router.add_post("/_emulator/clock", admin.clock)
    app.router.add_get("/_emulator/state", admin.state)
    app.router.add_get("/_emulator/datasets/{datasetId}", admin.dataset_state)
    app.router.add_get("/_emulator/datasets/{datasetId}/tables/{tableName}/rows", admin.rows)
    app.router.add_post("/_emulator/reset", admin.reset)
    DashboardApi(emulator).add_routes(app)
    emulator.kusto.add_routes(app)
    app.on_startup.append(lambda _app: _start(emulator))
    # Shutdown runs before aiohttp waits for open requests: ending the dashboard's event
    # streams here is what keeps Ctrl-C from waiting out the graceful-shutdown timeout.
    app.on_shutdown.append(lambda _app: _shutdown(emulator))
    app.on_cleanup.append(lambda _app: _close(emulator))
    return app


async def _start(emulator: Emulator) -> None:
    if emulator.deadletters is not None:
        await emulator.deadletters.start()


async def _shutdown(emulator: Emulator) -> None:
    emulator.feed.close()
    if emulator.deadletters is not None:
        await emulator.deadletters.stop()


async def _close(emulator: Emulator) -> None:
    if emulator.deadletters is not None:  # cleanup without shutdown (an app never served)
        await emulator.deadletters.stop()
    emulator.store.close()
