"""``python -m shared doctor``: what stands between the app's settings and identity and a push.

With the app's own settings and identity, checks in order (each with its cause and fix when it
fails; a check that needs a failed one is "skipped (needs X)"):

1. ``settings``: the settings parse.
2. ``token``: a token is obtained; its auth mode, identity type and object id / app id are shown
   (from the JWT's claims, read without verifying them: only Power BI can; never the token).
3. ``power-bi-api``: Power BI answers the identity (Get Groups); for an app identity, a 401
   ``ServicePrincipalIsNotAllowedByTenantAdminSwitch`` is the tenant setting.
4. ``workspace``: the configured workspace is among the identity's (Get Groups lists only
   workspaces it is a member of), and its role (Get Group Users) may push: Contributor, Member
   or Admin, not Viewer.
5. ``my-workspace``: an app identity has a workspace configured (it cannot use My workspace);
   a user's token may use their own My workspace.
6. ``dataset:<name>``, one per definition in ``DATASETS_DIR``: absent (created on the first
   push), or present with every table and column of the definition, of the same type (columns
   only in the definition are added on the next push, as the engine does).
7. Only when ``DATASETS_DIR`` holds routing files (``<Dataset>.destinations.json``, issue 18):
   ``routing:<name>``, each file parses (the runtime's loader); and when a table is routed to the
   Eventhouse, ``eventhouse``: it answers this identity (``.show version``), and
   ``eventhouse:<name>`` per dataset routed there: its database exists and each routed table
   exists with the definition's columns (else: ``python -m shared migrate --dataset <name>``).
8. ``storage:<setting>``, one per connection the app uses (``STORAGE_CONNECTION``,
   ``DEADLETTER_CONNECTION``): reachable, and its containers, rows queue and pacing table exist
   (one that does not is created, as the app would at first use: that proves it may).

Timeouts are short (:data:`POWERBI_TIMEOUT`, :data:`STORAGE_TIMEOUT`): a wrong URL fails in
seconds. Exit 0 only when every check passes; 1 otherwise.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from shared.cli.migrate import inspect
from shared.destinations.auth import TokenProvider, make_token_provider
from shared.destinations.kusto_schema import kusto_table
from shared.destinations.powerbi import (
    TENANT_SETTING_FIX,
    PowerBIClient,
    without_hint,
)
from shared.engine.retry import RetryPolicy
from shared.engine.routing import EVENTHOUSE, ROUTING_SUFFIX, Routing, RoutingError, load_routing
from shared.engine.schema import DatasetDefinition, load_definitions
from shared.errors import AuthError, ConfigError, NotFoundError, PushError, TransientError
from shared.settings import Settings
from shared.stores import storage

if TYPE_CHECKING:
    from shared.destinations.eventhouse import EventhouseClient

#: (connect, read) seconds for Power BI: a host that does not answer fails in 3 s.
POWERBI_TIMEOUT = (3.0, 10.0)
#: Seconds for each storage request (connect and read): Azurite answers in milliseconds, Azure
#: Storage in tens of them; a wrong or firewalled endpoint fails in this time, not minutes.
STORAGE_TIMEOUT = 5.0
#: One re-send at most (an expired token's refresh), no long Retry-After waits.
RETRY = RetryPolicy(max_attempts=2, max_retry_after=5.0)
#: Roles that may create push datasets and add rows.
PUSH_ROLES = ("Contributor", "Member", "Admin")

OK, FAIL, SKIPPED = "ok", "fail", "skipped"


@dataclass
class Check:
    """One check's outcome: ``status`` ok, fail or skipped; ``cause`` and ``fix`` on a
    failure; ``needs`` the check a skipped one waited for."""

    key: str
    status: str
    detail: str
    cause: str | None = None
    fix: str | None = None
    needs: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The check as JSON (keys without a value left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Identity:
    """Who the token says the caller is (claims read without verification)."""

    app: bool
    object_id: str | None
    app_id: str | None
    names: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        kind = "app identity (service principal or managed identity)" if self.app else "user"
        parts = [kind, f"object id {self.object_id or 'unknown'}"]
        if self.app_id:
            parts.append(f"app id {self.app_id}")
        if self.names:
            parts.append(f"user {self.names[0]}")
        if "tid" in self.claims:
            parts.append(f"tenant {self.claims['tid']}")
        if isinstance(self.claims.get("exp"), int | float):
            parts.append(f"expires in {max(0, int(self.claims['exp'] - time.time())) // 60} min")
        return ", ".join(parts)


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, decoded without verifying its signature (only the service can):
    for showing who the token is for. An opaque token gives {}."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def identity_of(claims: Mapping[str, Any], auth_mode: str) -> Identity:
    """The identity a token's claims describe. ``idtyp`` says app or user when present (an
    optional claim); else a token with a user's name or delegated scopes (``scp``) is a user's,
    and the managed identity and service principal modes give app tokens."""
    idtyp = str(claims.get("idtyp", "")).lower()
    names = tuple(
        str(claims[c]) for c in ("upn", "unique_name", "preferred_username") if claims.get(c)
    )
    if idtyp in ("app", "user"):
        app = idtyp == "app"
    elif names or "scp" in claims:
        app = False
    else:
        app = auth_mode in ("managed_identity", "service_principal")
    oid = claims.get("oid") or claims.get("sub")
    appid = claims.get("appid") or claims.get("azp")
    return Identity(
        app, str(oid) if oid else None, str(appid) if appid else None, names, dict(claims)
    )


class Doctor:
    """Runs the checks once over ``env`` (the app's settings); see the module docstring.

    ``tokens`` replaces the token provider the settings ask for; ``eventhouse`` the Eventhouse
    client the settings describe; ``unreadable``: the settings file could not be read (the
    settings check fails with it)."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        tokens: Callable[[Settings], TokenProvider] | None = None,
        eventhouse: Callable[[Settings], EventhouseClient] | None = None,
        unreadable: ConfigError | None = None,
    ) -> None:
        self.env = env
        self._unreadable = unreadable
        self._tokens = tokens or (lambda s: make_token_provider(s, storage.managed_identity))
        self._eventhouse_client = eventhouse or _eventhouse_client
        self.checks: list[Check] = []
        self.settings: Settings | None = None
        self.identity: Identity | None = None
        self.client: PowerBIClient | None = None
        self.groups: list[dict[str, Any]] | None = None
        self.workspace_id: str | None = None

    # -- running ----------------------------------------------------------------------------

    def run(self) -> list[Check]:
        """Every check, in order."""
        try:
            self._settings()
            self._token()
            self._api()
            self._workspace()
            self._my_workspace()
            self._datasets()
            self._eventhouse()
            self._storage()
        finally:
            if self.client is not None:  # its connections; GET /api/doctor runs it repeatedly
                self.client.session.close()
        return self.checks

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(c.status == OK for c in self.checks)

    def _add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def _failed(self, key: str) -> bool:
        return any(c.key == key and c.status != OK for c in self.checks)

    def _skip(self, key: str, *needs: str) -> bool:
        """Record ``key`` as skipped when one of ``needs`` did not pass; True if so."""
        for need in needs:
            if self._failed(need):
                self._add(Check(key, SKIPPED, f"skipped (needs {need})", needs=need))
                return True
        return False

    # -- 1. settings --------------------------------------------------------------------------

    def _settings(self) -> None:
        try:
            if self._unreadable is not None:
                raise self._unreadable
            self.settings = Settings.from_env(self.env)
        except ConfigError as error:
            self._add(
                Check(
                    "settings",
                    FAIL,
                    "the settings do not parse",
                    cause=str(error),
                    fix=f"correct {error.setting} in the app settings (or local.settings.json)",
                )
            )
            return
        s = self.settings
        where = s.workspace_id or s.workspace_name or "none (My workspace)"
        self._add(
            Check(
                "settings",
                OK,
                f"Power BI {s.api_root} ({s.cloud}), auth {s.auth_mode}, workspace {where}, "
                f"datasets {s.datasets_dir}",
            )
        )

    # -- 2. token -----------------------------------------------------------------------------

    def _token(self) -> None:
        if self._skip("token", "settings"):
            return
        settings = self.settings
        assert settings is not None
        try:
            provider = self._tokens(settings)
            token = provider.token()
        except PushError as error:
            self._add(
                Check(
                    "token",
                    FAIL,
                    f"no token for auth mode {settings.auth_mode}",
                    cause=str(error),
                    fix=_token_fix(settings),
                )
            )
            return
        self.identity = identity_of(jwt_claims(token), settings.auth_mode)
        audience = self.identity.claims.get("aud")
        detail = f"auth mode {settings.auth_mode}: {self.identity.describe()}"
        if audience is not None and str(audience).rstrip("/") != settings.resource.rstrip("/"):
            self._add(
                Check(
                    "token",
                    FAIL,
                    detail,
                    cause=f"the token is for {audience}, not for {settings.resource}",
                    fix="set POWERBI_RESOURCE to the Power BI resource of the cloud, or unset "
                    "it (POWERBI_CLOUD chooses it)",
                )
            )
            return
        self.client = PowerBIClient(
            settings.api_root, provider, timeout=POWERBI_TIMEOUT, retry=RETRY
        )
        self._add(Check("token", OK, detail))

    # -- 3. Power BI answers (the tenant setting) ---------------------------------------------

    def _api(self) -> None:
        if self._skip("power-bi-api", "token"):
            return
        assert self.client is not None and self.settings is not None
        try:
            self.groups = self.client.get_groups()
        except PushError as error:
            self._add(self._refused("power-bi-api", "Power BI refused Get Groups", error))
            return
        self._add(
            Check(
                "power-bi-api",
                OK,
                f"Power BI answers this identity (Get Groups: member of {len(self.groups)} "
                "workspace(s))",
            )
        )

    def _refused(self, key: str, what: str, error: PushError) -> Check:
        """A failed check for a Power BI refusal, with the fix its cause calls for."""
        settings = self.settings
        assert settings is not None
        # Decided where the request's URL was known (translate): "API is not accessible for
        # application" is My workspace on a My workspace path, the tenant setting elsewhere.
        cause = error.cause if isinstance(error, AuthError) else None
        if cause == "tenant_switch":
            fix = TENANT_SETTING_FIX
        elif cause == "not_authorized":
            fix = self._grant_fix(self.settings.workspace_id if self.settings else None)
        elif cause == "my_workspace_app":
            fix = _WORKSPACE_FIX
        elif isinstance(error, TransientError) and error.status is None:
            fix = (
                f"check POWERBI_API_URL ({settings.api_root}) and POWERBI_CLOUD, and that "
                "this machine reaches it (proxy, firewall)"
            )
        elif isinstance(error, ConfigError):
            fix = f"correct {error.setting}"
        elif isinstance(error, AuthError):
            fix = "check the identity's token (tenant, resource) and the tenant setting"
        else:
            fix = "try again later; if it persists, see Power BI's answer above"
        return Check(key, FAIL, what, cause=without_hint(error), fix=fix)

    def _grant_fix(self, workspace: str | None, role: str | None = None) -> str:
        identity = self.identity
        where = workspace or "<workspace id>"
        if identity is not None and not identity.app:
            who = identity.names[0] if identity.names else identity.object_id
            return (
                f"a workspace Admin adds {who} to workspace {where} as Contributor (or Member, "
                "Admin) in the workspace's Manage access"
            )
        principal = (identity.object_id if identity else None) or "<object id>"
        extra = "" if role is None else f" --role {role}"
        return (
            "a workspace Admin runs (with their own sign-in: 'az login', or "
            f"POWERBI_OPERATOR_TOKEN): python -m shared grant --workspace {where} "
            f"--principal {principal}{extra}"
        )

    # -- 4. the workspace and the role -------------------------------------------------------

    def _workspace(self) -> None:
        if self._skip("workspace", "power-bi-api"):
            return
        settings, identity, client = self.settings, self.identity, self.client
        assert settings is not None and identity is not None and client is not None
        assert self.groups is not None
        wanted = settings.workspace_id or settings.workspace_name
        if wanted is None:
            if identity.app:
                self._add(
                    Check(
                        "workspace",
                        SKIPPED,
                        "skipped (needs POWERBI_WORKSPACE_ID or POWERBI_WORKSPACE_NAME: see "
                        "my-workspace)",
                        needs="my-workspace",
                    )
                )
            else:
                self._add(Check("workspace", OK, "none configured: the user's My workspace"))
            return
        if settings.workspace_id:
            found = [g for g in self.groups if str(g.get("id")).lower() == wanted.lower()]
        else:
            found = [g for g in self.groups if g.get("name") == wanted]
        if len(found) > 1:
            ids = ", ".join(str(g.get("id")) for g in found)
            self._add(
                Check(
                    "workspace",
                    FAIL,
                    f"several workspaces are named {wanted!r}",
                    cause=f"their ids: {ids}",
                    fix="set POWERBI_WORKSPACE_ID to the one meant",
                )
            )
            return
        if not found:
            self._add(
                Check(
                    "workspace",
                    FAIL,
                    f"workspace {wanted} is not among the workspaces this identity is a member "
                    f"of ({len(self.groups)} listed by Get Groups)",
                    cause="the identity is not a member of the workspace (or the workspace "
                    "setting names another one)",
                    fix=self._grant_fix(wanted)
                    + "; or correct POWERBI_WORKSPACE_ID / POWERBI_WORKSPACE_NAME",
                )
            )
            return
        self.workspace_id = str(found[0]["id"])
        label = f"{found[0].get('name')} ({self.workspace_id})"
        try:
            members = client.get_group_users(self.workspace_id)
        except PushError as error:
            check = self._refused("workspace", f"Get Group Users of {label} refused", error)
            check.fix = self._grant_fix(self.workspace_id)
            self._add(check)
            return
        own = {n.casefold() for n in (identity.object_id, *identity.names) if n}
        role = next(
            (
                str(m.get("groupUserAccessRight"))
                for m in members
                if str(m.get("identifier", "")).casefold() in own
            ),
            None,
        )
        if role is None:
            # Listed by Get Groups but not by name among the members: a member through a
            # security group, whose role Power BI shows for the group only.
            self._add(
                Check(
                    "workspace",
                    OK,
                    f"{label}: a member through a group (its role is listed for the group, "
                    "not for this identity: it needs Contributor, Member or Admin)",
                )
            )
        elif role in PUSH_ROLES:
            self._add(Check("workspace", OK, f"{label}: {role}, which may push"))
        else:
            self._add(
                Check(
                    "workspace",
                    FAIL,
                    f"{label}: {role}",
                    cause=f"a {role} may not create datasets or add rows (Power BI answers 401 "
                    "PowerBINotAuthorizedException)",
                    fix=self._grant_fix(self.workspace_id, "Contributor"),
                )
            )

    # -- 5. My workspace ------------------------------------------------------------------------

    def _my_workspace(self) -> None:
        if self._skip("my-workspace", "power-bi-api"):
            return
        settings, identity, client = self.settings, self.identity, self.client
        assert settings is not None and identity is not None and client is not None
        if settings.workspace_id or settings.workspace_name:
            self._add(Check("my-workspace", OK, "a workspace is configured (not My workspace)"))
            return
        if not identity.app:
            self._add(Check("my-workspace", OK, "a user's token: My workspace is theirs"))
            return
        try:
            client.get_datasets(None)
        except PushError as error:
            check = self._refused(
                "my-workspace", "no workspace configured, and an app identity", error
            )
            check.fix = _WORKSPACE_FIX
            self._add(check)
            return
        self._add(
            Check(
                "my-workspace",
                FAIL,
                "no workspace configured, and an app identity",
                cause="service principals and managed identities cannot use My workspace "
                '("My Workspace isn\'t supported when using service principal")',
                fix=_WORKSPACE_FIX,
            )
        )

    # -- 6. the dataset definitions -------------------------------------------------------

    def _datasets(self) -> None:
        if self._skip("datasets", "my-workspace", "workspace"):
            return
        settings, client = self.settings, self.client
        assert settings is not None and client is not None
        try:
            definitions = load_definitions(settings.datasets_dir)
        except ConfigError as error:
            self._add(
                Check(
                    "datasets",
                    FAIL,
                    f"the definitions in {settings.datasets_dir} do not load",
                    cause=str(error),
                    fix="correct the file named (python -m shared infer writes a valid one)",
                )
            )
            return
        if not definitions:
            self._add(Check("datasets", OK, f"no dataset definitions in {settings.datasets_dir}"))
            return
        try:
            live = client.get_datasets(self.workspace_id)
        except PushError as error:
            self._add(self._refused("datasets", "Get Datasets refused", error))
            return
        for name, definition in definitions.items():
            key = f"dataset:{name}"
            matches = sorted(
                (d for d in live if d.get("name") == name), key=lambda d: str(d.get("id"))
            )
            if not matches:
                self._add(Check(key, OK, "absent: created on the first push"))
                continue
            dataset_id = str(matches[0]["id"])
            try:
                tables = client.get_tables(dataset_id, self.workspace_id)
            except PushError as error:
                self._add(self._refused(key, f"Get Tables of {dataset_id} refused", error))
                continue
            self._add(_compare(key, definition, dataset_id, tables, len(matches)))

    # -- 7. routing files and the Eventhouse ------------------------------------------------

    def _eventhouse(self) -> None:
        settings = self.settings
        if settings is None:  # the settings check failed: it says why
            return
        folder = settings.datasets_dir
        if not folder.is_dir() or not any(folder.glob(f"*{ROUTING_SUFFIX}")):
            return  # Power BI only: nothing more to check, the report is as before
        try:
            definitions = load_definitions(folder)
        except ConfigError as error:
            self._add(
                Check(
                    "routing",
                    FAIL,
                    f"the routing files in {folder} cannot be checked: the definitions do not load",
                    cause=str(error),
                    fix="correct the definition named",
                )
            )
            return
        routed: list[Routing] = []
        for name, found in load_routing(folder, definitions, settings).items():
            key = f"routing:{name}"
            if isinstance(found, RoutingError):
                fix = f"correct {found.key} in {found.where}"
                setting = found.__cause__
                if isinstance(setting, ConfigError):  # the file is right, a setting is missing
                    fix = f"set {setting.setting} in the app settings, or {fix}"
                self._add(
                    Check(
                        key,
                        FAIL,
                        f"{found.where} cannot be used (the dataset's rows are dead-lettered "
                        "until it is fixed)",
                        cause=found.message,
                        fix=f"{fix} (python -m shared migrate --dataset {name} writes a valid "
                        "file)",
                    )
                )
                continue
            self._add(Check(key, OK, _describe_routing(found, definitions[found.dataset])))
            if found.uses(EVENTHOUSE):
                routed.append(found)
        if not routed:
            return
        self._eventhouse_checks(settings, routed, definitions)

    def _eventhouse_checks(
        self,
        settings: Settings,
        routed: list[Routing],
        definitions: Mapping[str, DatasetDefinition],
    ) -> None:
        eventhouse = settings.eventhouse
        assert eventhouse is not None  # a routing that uses it was checked against the settings
        try:
            client = self._eventhouse_client(settings)
        except PushError as error:
            self._add(
                Check(
                    "eventhouse",
                    FAIL,
                    f"no Eventhouse client for {eventhouse.uri}",
                    cause=str(error),
                    fix="correct EVENTHOUSE_URI and EVENTHOUSE_AUTH / EVENTHOUSE_CLIENT_ID",
                )
            )
            for routing in routed:
                self._skip(f"eventhouse:{routing.dataset}", "eventhouse")
        else:
            with client:
                self._eventhouse_ping(client)
                for routing in routed:
                    key = f"eventhouse:{routing.dataset}"
                    if self._skip(key, "eventhouse"):
                        continue
                    self._add(_eventhouse_tables(key, client, routing, definitions))

    def _eventhouse_ping(self, client: EventhouseClient) -> None:
        try:
            version = client.ping()
        except PushError as error:
            if isinstance(error, AuthError):
                fix = (
                    "give the app's identity Database Ingestor and Database Viewer on the KQL "
                    "database (Fabric: the database's Manage permissions; Azure Data Explorer: "
                    "Permissions, or .add database <db> ingestors/viewers ('aadapp=<client "
                    "id>;<tenant id>')), and check EVENTHOUSE_CLIENT_ID"
                )
            elif isinstance(error, TransientError) and error.status is None:
                fix = (
                    f"check EVENTHOUSE_URI ({client.uri}: the Eventhouse's Query URI, or the "
                    "cluster URI) and that this machine reaches it (proxy, firewall)"
                )
            else:
                fix = "check EVENTHOUSE_URI; if it persists, see the Eventhouse's answer above"
            self._add(
                Check(
                    "eventhouse",
                    FAIL,
                    f"{client.uri} does not answer this identity",
                    cause=str(error),
                    fix=fix,
                )
            )
            return
        build = version.get("BuildVersion") or version.get("ProductVersion") or "unknown"
        self._add(Check("eventhouse", OK, f"{client.uri} answers this identity (build {build})"))

    # -- 8. storage -----------------------------------------------------------------------

    def _storage(self) -> None:
        if self._skip("storage", "settings"):
            return
        settings = self.settings
        assert settings is not None
        containers = [
            settings.ingest_container,
            settings.checkpoint_container,
            settings.claimcheck_container,
            settings.locks_container,
        ]
        table = settings.pacing_table if settings.pacing == "shared" else None
        uses: dict[str, tuple[list[str], list[str], list[str]]] = {
            settings.storage_connection: (
                containers,
                [settings.rows_queue],
                [table] if table else [],
            ),
        }
        dead = uses.setdefault(settings.deadletter_connection, ([], [], []))
        dead[0].append(settings.deadletter_container)
        for connection, (blobs, queues, tables) in uses.items():
            self._add(_storage_check(connection, self.env, blobs, queues, tables))


_WORKSPACE_FIX = (
    "set POWERBI_WORKSPACE_ID (or POWERBI_WORKSPACE_NAME) to a workspace the identity is a "
    "Contributor, Member or Admin of: a service principal or managed identity cannot use "
    "My workspace"
)


def _token_fix(settings: Settings) -> str:
    if settings.auth_mode == "managed_identity":
        return (
            "run this where the managed identity is (on the Function app, with its settings), "
            "and check POWERBI_CLIENT_ID for a user-assigned identity; a laptop has no managed "
            "identity: there, check with a service principal (POWERBI_AUTH=service_principal)"
        )
    if settings.auth_mode == "service_principal":
        return (
            "check POWERBI_TENANT_ID, POWERBI_CLIENT_ID and the secret or certificate (not "
            "expired, of this app registration)"
        )
    return "check POWERBI_STATIC_TOKEN (a token from the emulator's /_emulator/token)"


def _compare(
    key: str,
    definition: DatasetDefinition,
    dataset_id: str,
    tables: list[dict[str, Any]],
    copies: int,
) -> Check:
    """A live dataset against its definition, by the engine's rule (TableSchema.drift, what
    Ingestor._widen applies): a column only in the definition is added by Put Table on the next
    push; a column the definition lacks or types otherwise, and a table it has that Power BI
    lacks, are drift."""
    live = {str(t.get("name")): t for t in tables}
    drift: list[str] = []
    widen: list[str] = []
    for table_name, schema in definition.tables.items():
        table = live.get(table_name)
        if table is None:
            drift.append(
                f"table {table_name} is not in the dataset (a push dataset cannot gain tables)"
            )
            continue
        found = schema.drift(table.get("columns", []))
        drift += found.conflicts
        widen += [f"{table_name}.{c}" for c in found.added]
    note = f"; {copies} datasets share the name, the smallest id is used" if copies > 1 else ""
    if drift:
        return Check(
            key,
            FAIL,
            f"dataset {dataset_id} differs from its definition",
            cause="; ".join(drift),
            fix=f"make {definition.name}.json in DATASETS_DIR match Power BI, or delete the "
            "dataset so that the next push creates it from the definition (its rows are lost): "
            "the bundle adds columns but never removes, retypes or adds tables",
        )
    detail = f"dataset {dataset_id} matches its definition{note}"
    if widen:
        detail += f" (columns added on the next push: {', '.join(widen)})"
    return Check(key, OK, detail)


def _eventhouse_client(settings: Settings) -> EventhouseClient:
    from shared.destinations.eventhouse import EventhouseClient

    return EventhouseClient.from_settings(settings, storage.managed_identity)


def _describe_routing(routing: Routing, definition: DatasetDefinition) -> str:
    """``Product: powerbi+eventhouse, Notes: powerbi`` and the database, for an ok check."""
    tables = ", ".join(f"{t}: {'+'.join(routing.destinations(t))}" for t in definition.tables)
    if routing.eventhouse is not None:
        prefix = routing.eventhouse.table_prefix
        tables += f" (KQL database {routing.eventhouse.database}"
        tables += f", table prefix {prefix!r})" if prefix else ")"
    return tables


def _eventhouse_tables(
    key: str,
    client: EventhouseClient,
    routing: Routing,
    definitions: Mapping[str, DatasetDefinition],
) -> Check:
    """The database of a dataset routed to the Eventhouse exists, and each table routed there
    exists with the definition's columns, of the same types."""
    route = routing.eventhouse
    assert route is not None
    definition = definitions[routing.dataset]
    migrate = f"run python -m shared migrate --dataset {routing.dataset}"
    try:
        targets = {
            t: kusto_table(schema, route.table(t))
            for t, schema in definition.tables.items()
            if EVENTHOUSE in routing.destinations(t)
        }
        states = inspect(client, route.database, targets)
    except NotFoundError as error:
        return Check(
            key,
            FAIL,
            f"KQL database {route.database} not found at {client.uri}",
            cause=str(error),
            fix=f"create the KQL database {route.database} (Fabric: in the Eventhouse), or name "
            "the right one in EVENTHOUSE_DATABASE or the routing file's eventhouse.database",
        )
    except PushError as error:
        return Check(
            key,
            FAIL,
            f"the tables of {route.database} cannot be read",
            cause=str(error),
            fix="give the app's identity Database Viewer on the database (it reads the schema)",
        )
    missing = [s.kusto.name for s in states if not s.exists]
    short = [f"{s.kusto.name} lacks {', '.join(s.added)}" for s in states if s.added]
    conflicts = [f"{s.kusto.name}: {c}" for s in states for c in s.conflicts]
    if conflicts:
        return Check(
            key,
            FAIL,
            f"KQL database {route.database}: a table differs from the definition",
            cause="; ".join(conflicts),
            fix=f"make {definition.name}.json match the KQL table, or rename or drop the KQL "
            "column or table (Kusto never retypes a column), or set a table_prefix in "
            f"{definition.name}{ROUTING_SUFFIX}",
        )
    if missing or short:
        problems = ([f"table(s) {', '.join(missing)} missing"] if missing else []) + short
        return Check(
            key,
            FAIL,
            f"KQL database {route.database}: not ready for the routed tables",
            cause="; ".join(problems),
            fix=migrate,
        )
    names = ", ".join(s.kusto.name for s in states)
    return Check(key, OK, f"KQL database {route.database}: {names} with the definition's columns")


#: What an app's storage identity needs (README "Deploying"; reference azure-functions-python).
_STORAGE_ROLES = (
    "Storage Blob Data Owner, Storage Queue Data Contributor and Storage Table Data Contributor"
)


def _storage_check(
    connection: str,
    env: Mapping[str, str],
    containers: list[str],
    queues: list[str],
    tables: list[str],
) -> Check:
    """One connection: reachable, and each container, queue and table there or created."""
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    key = f"storage:{connection}"
    options = {
        "connection_timeout": STORAGE_TIMEOUT,
        "read_timeout": STORAGE_TIMEOUT,
        "retry_total": 0,
    }
    done: list[str] = []
    what = ""
    try:
        what = "the blob service"
        service = storage.blob_service(connection, env, **options)
        for name in containers:
            what = f"container {name}"
            container = service.get_container_client(name)
            if container.exists():
                done.append(f"container {name}")
            else:
                try:
                    container.create_container()
                    done.append(f"container {name} (created)")
                except ResourceExistsError:
                    done.append(f"container {name}")
        for name in queues:
            what = f"queue {name}"
            queue = storage.queue_client(connection, name, env, **options)
            try:
                queue.get_queue_properties()
                done.append(f"queue {name}")
            except ResourceNotFoundError:
                queue.create_queue()
                done.append(f"queue {name} (created)")
        for name in tables:
            what = f"table {name}"
            client = storage.table_client(connection, name, env, **options)
            try:
                client.create_table()
                done.append(f"table {name} (created)")
            except ResourceExistsError:
                done.append(f"table {name}")
    except ConfigError as error:
        return Check(
            key,
            FAIL,
            f"{connection}: not usable",
            cause=str(error),
            fix=f"set {connection} to the storage account's connection string, or "
            f"{connection}__blobServiceUri, __queueServiceUri and __tableServiceUri with a "
            f"managed identity that has {_STORAGE_ROLES} on the account",
        )
    except ServiceRequestError as error:
        return Check(
            key,
            FAIL,
            f"{connection}: {what} unreachable",
            cause=_first_line(error),
            fix=f"check the account's endpoint in {connection} (a connection string or "
            f"{connection}__*ServiceUri), and that its network rules let this app in",
        )
    except (ClientAuthenticationError, HttpResponseError) as error:
        status = getattr(error, "status_code", None)
        return Check(
            key,
            FAIL,
            f"{connection}: {what} refused"
            + (f" (HTTP {status})" if status else "")
            + (f" after {', '.join(done)}" if done else ""),
            cause=_first_line(error),
            fix=f"give the app's identity {_STORAGE_ROLES} on the account, or correct the "
            f"key or SAS in {connection}",
        )
    except AzureError as error:
        return Check(
            key,
            FAIL,
            f"{connection}: {what} failed",
            cause=_first_line(error),
            fix=f"check {connection} and the account",
        )
    return Check(key, OK, f"{connection}: {', '.join(done)}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def report(checks: list[Check], stream: TextIO) -> None:
    """The checks as plain text: one line each, cause and fix under a failure."""
    marks = {OK: "ok  ", FAIL: "FAIL", SKIPPED: "skip"}
    for check in checks:
        stream.write(f"[{marks[check.status]}] {check.key}: {check.detail}\n")
        if check.cause:
            stream.write(f"       cause: {check.cause}\n")
        if check.fix:
            stream.write(f"       fix:   {check.fix}\n")
    failed = sum(c.status == FAIL for c in checks)
    skipped = sum(c.status == SKIPPED for c in checks)
    if failed or skipped:
        stream.write(f"{failed} failed, {skipped} skipped of {len(checks)} checks\n")
    else:
        stream.write(f"all {len(checks)} checks passed\n")


def diagnose(env: Mapping[str, str]) -> dict[str, Any]:
    """Every check over ``env`` as JSON: ``{"ok": bool, "checks": [...]}``. What the deployed
    app's ``GET /api/doctor`` answers: there the checks run with the app's own managed identity,
    which an operator's machine cannot borrow."""
    doctor = Doctor(env)
    checks = doctor.run()
    return {"ok": doctor.ok, "checks": [c.to_json() for c in checks]}


def run(load: Callable[[], Mapping[str, str]], *, as_json: bool, stream: TextIO) -> int:
    """The ``doctor`` command over the settings ``load`` gives: 0 when every check passed, 1
    otherwise (a settings file that cannot be read is the first check's failure)."""
    try:
        env = load()
    except ConfigError as error:
        doctor = Doctor({}, unreadable=error)
    else:
        doctor = Doctor(env)
    checks = doctor.run()
    if as_json:
        stream.write(
            json.dumps({"ok": doctor.ok, "checks": [c.to_json() for c in checks]}, indent=2) + "\n"
        )
    else:
        report(checks, stream)
    return 0 if doctor.ok else 1
