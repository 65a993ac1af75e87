"""A client for Power BI's push-dataset operations, with errors translated in one place.

One pooled ``requests.Session`` per client, explicit timeouts (cut to what is left of the
caller's :class:`~shared.engine.retry.Deadline`), the bearer token from a
:class:`~shared.destinations.auth.TokenProvider` (dropped when the service says it expired, so
that the retry policy's one re-send fetches a new one), and every HTTP status or transport
failure mapped by :func:`translate` into the bundle's error hierarchy (``shared.errors``).
Idempotent calls are retried by the :class:`~shared.engine.retry.RetryPolicy`; Add Rows is sent
once per call, because only its caller knows whether a re-send is safe: the ingestor runs it
through the same policy (see ``retry``).

Endpoints: https://learn.microsoft.com/en-us/rest/api/power-bi/push-datasets
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from shared.destinations.auth import TokenProvider, check_token_destination
from shared.engine.retry import TOKEN_EXPIRED, Deadline, RetryPolicy, parse_retry_after
from shared.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    PushError,
    TransientError,
    ValidationError,
)

log = logging.getLogger(__name__)

#: (connect, read) seconds. Connect is short: a refused or silent host should fail fast.
DEFAULT_TIMEOUT = (5.0, 30.0)


def translate(
    exc_or_response: requests.Response | requests.RequestException, what: str
) -> PushError:
    """Map a failed HTTP exchange to the bundle's error hierarchy (the one place that does).

    ``what`` names the call (``"POST rows to dataset X"``) for the message. Never includes a
    header value: tokens stay out of errors.
    """
    if isinstance(exc_or_response, requests.RequestException):
        exc = exc_or_response
        name = type(exc).__name__
        if isinstance(exc, requests.exceptions.SSLError):
            return ConfigError("POWERBI_CA_BUNDLE", f"{what}: TLS verification failed ({name})")
        if isinstance(exc, requests.exceptions.ConnectTimeout) or (
            isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc)
        ):
            return TransientError(f"{what}: could not connect ({name})", maybe_delivered=False)
        if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
            return ConfigError("POWERBI_API_URL", f"{what}: invalid URL ({name})")
        # Read timeouts, connections reset or closed after the request was written, truncated
        # answers: the service may have acted on the request.
        return TransientError(
            f"{what}: no complete answer ({name}); the request may have been processed",
            maybe_delivered=True,
        )
    response = exc_or_response
    status = response.status_code
    code, message, details = _error_body(response)
    request_id = response.headers.get("RequestId")
    text = f"{what}: Power BI answered {status}{f' {code}' if code else ''}: {message}"
    if details:
        text += " — " + "; ".join(details[:5])
    kwargs: dict[str, Any] = {"status": status, "code": code, "request_id": request_id}
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return TransientError(text, retry_after=retry_after, maybe_delivered=False, **kwargs)
    if status == 503:
        # A 503 with Retry-After is the service refusing the request (throttled, or down for a
        # while); without one it may come from a front end after the request was processed.
        return TransientError(
            text, retry_after=retry_after, maybe_delivered=retry_after is None, **kwargs
        )
    if status >= 500 or status == 408:
        return TransientError(text, retry_after=retry_after, maybe_delivered=True, **kwargs)
    if status in (401, 403):
        cause = refusal_cause(status, code, message, response.url or "")
        return AuthError(
            text + _auth_hint(status, code, message, response.url or ""), cause=cause, **kwargs
        )
    if status == 404:
        return NotFoundError(text, **kwargs)
    if status in (400, 413):
        return ValidationError(text, **kwargs)
    return PermanentError(text, **kwargs)


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection was refused or never opened, so nothing was sent."""
    import urllib3.exceptions

    reason: object = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(
        reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    )


#: The response header where Power BI often puts the cause of a refusal, with an empty body
#: (Microsoft's PowerBI-CSharp SDK reads it: ``HttpOperationException`` messages carry it).
ERROR_INFO_HEADER = "X-PowerBI-Error-Info"
#: ``X-PowerBI-Error-Info`` when the tenant setting "Service principals can use Fabric APIs" is
#: off for the calling app identity (or it is not in the security group the setting names).
TENANT_SWITCH = "ServicePrincipalIsNotAllowedByTenantAdminSwitch"
#: The error code of a caller that is not a member of the workspace, or whose role (Viewer)
#: may not do what it asked ("Wrong group ID / Unauthorized group", embedded-troubleshoot.md).
NOT_AUTHORIZED = "PowerBINotAuthorizedException"
#: ``X-PowerBI-Error-Info`` reported beside it for "valid token, no workspace access"
#: (a public client's table measured on the live API; emulator/errors.py cites it).
GROUP_NOT_ACCESSIBLE = "GroupNotAccessible"
#: The ``Message`` of Power BI's refusal of an app identity (service principal, managed
#: identity) on My workspace paths: "My Workspace isn't supported when using service
#: principal" (embed-service-principal.md); reference §6.1 has it verbatim.
APP_NOT_ALLOWED = "API is not accessible for application"

#: Where the tenant setting is, for the fixes printed (MicrosoftDocs/fabric-docs
#: docs/admin/service-admin-portal-developer.md: the setting's old and new names).
TENANT_SETTING_FIX = (
    "a Fabric administrator opens the Fabric admin portal > Tenant settings > Developer "
    "settings, enables 'Service principals can use Fabric APIs' (formerly 'Allow service "
    "principals to use Power BI APIs'; where it is split, 'Service principals can call Fabric "
    "public APIs'), applied to the whole organisation or to a security group that contains "
    "this identity; the change can take up to 15 minutes to apply"
)


def refusal_cause(status: int | None, code: str | None, message: str, url: str = "") -> str | None:
    """Which of the known identity refusals a 401/403 is, or None.

    ``"token_expired"``; ``"tenant_switch"`` (the tenant setting keeps this app identity out);
    ``"my_workspace_app"`` (an app identity on a My workspace path); ``"not_authorized"`` (not
    a member of the workspace, or a role that may not do this). ``url`` is the request's, to
    tell My workspace from a workspace when the answer is "API is not accessible for
    application" (elsewhere a tenant setting refusal has been reported with that message,
    reference §6.1).
    """
    if status not in (401, 403):
        return None
    folded = message.casefold()
    if code == TOKEN_EXPIRED:
        return "token_expired"
    if (code or "").casefold() == TENANT_SWITCH.casefold() or TENANT_SWITCH.casefold() in folded:
        return "tenant_switch"
    if APP_NOT_ALLOWED.casefold() in folded:
        return "my_workspace_app" if _my_workspace_path(url) else "tenant_switch"
    if (code or "").casefold() in (NOT_AUTHORIZED.casefold(), GROUP_NOT_ACCESSIBLE.casefold()):
        return "not_authorized"
    return None


def _my_workspace_path(url: str) -> bool:
    """Whether ``url`` is a My workspace operation (``/v1.0/myorg/datasets...``): under
    ``/myorg/`` with no ``groups`` segment. Get Groups (``/myorg/groups``) is not one: a
    service principal may call it, so "API is not accessible for application" there is the
    tenant setting."""
    path = urlsplit(url).path.casefold()
    marker = "/myorg/"
    if marker not in path:
        return False
    rest = path.split(marker, 1)[1]
    return bool(rest) and not rest.startswith("groups")


def _error_body(response: requests.Response) -> tuple[str | None, str, list[str]]:
    """``(code, message, details)`` of an error answer. The code is the body's
    ``error.code``, else the ``X-PowerBI-Error-Info`` header's value; the message is
    ``error.message``, else a top-level ``message`` or ``Message`` (the My workspace refusal
    has a capital M), else the body's text or the reason; the header is named in the details
    when the body has a code of its own."""
    info = (response.headers.get(ERROR_INFO_HEADER) or "").strip()[:200] or None
    fallback = response.reason or "no details"
    try:
        body = response.json()
    except ValueError:
        return info, (response.text[:300] or fallback), []
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        message = None
        if isinstance(body, dict):
            message = next((v for k, v in body.items() if k.casefold() == "message" and v), None)
        return info, str(message or fallback)[:300], []
    details = [
        f"{d.get('target', '')}: {d.get('message', '')}".strip(": ")
        for d in error.get("details") or []
        if isinstance(d, dict)
    ]
    code = error.get("code") or info
    if info and code != info:
        details.insert(0, f"{ERROR_INFO_HEADER}: {info}")
    message = error.get("message") or error.get("Message") or fallback
    return code, str(message)[:300], details


#: The hints :func:`translate` appends to a 401/403, by :func:`refusal_cause` (None: a 401 or
#: 403 of no known cause, by status).
_HINTS: dict[str | int, str] = {
    "token_expired": " (the token had expired; it is dropped, and a fresh one is fetched next)",
    "tenant_switch": (
        " (the tenant setting keeps this service principal or managed identity out of the "
        f"Power BI APIs: {TENANT_SETTING_FIX}; 'python -m shared doctor' checks it)"
    ),
    "my_workspace_app": (
        " (a service principal or managed identity cannot use My workspace: set "
        "POWERBI_WORKSPACE_ID or POWERBI_WORKSPACE_NAME to a workspace it is a Contributor, "
        "Member or Admin of)"
    ),
    "not_authorized": (
        " (is the identity a member of the workspace, with a role that may write: "
        "Contributor, Member or Admin, not Viewer? A workspace Admin adds it with "
        "'python -m shared grant --workspace <id> --principal <object id>'; "
        "'python -m shared doctor' shows both)"
    ),
    401: (
        " (is 'Service principals can use Fabric APIs' enabled for this identity in the "
        "tenant settings?)"
    ),
    403: " (is the identity a Member or Contributor of the workspace?)",
}


def _auth_hint(status: int, code: str | None, message: str = "", url: str = "") -> str:
    """The likely cause of a 401/403 and its fix, appended to the error's message."""
    cause = refusal_cause(status, code, message, url)
    return _HINTS[cause if cause is not None else (401 if status == 401 else 403)]


def without_hint(error: PushError) -> str:
    """The error's text without the cause-and-fix hint :func:`translate` added (for a report
    that prints the fix on its own line)."""
    text = str(error)
    for hint in _HINTS.values():
        text = text.replace(hint, "")
    return text


class PowerBIClient:
    """The push operations, in My workspace (``workspace=None``) or a workspace (group id)."""

    def __init__(
        self,
        api_root: str,
        tokens: TokenProvider,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        check_token_destination(api_root)
        self.api_root = api_root.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        self._group_ids: dict[str, str] = {}

    # -- plumbing -----------------------------------------------------------------------

    def url(self, path: str, workspace: str | None = None) -> str:
        group = f"/groups/{quote(workspace, safe='')}" if workspace else ""
        return f"{self.api_root}/v1.0/myorg{group}{path}"

    def _timeout(self, deadline: Deadline | None) -> tuple[float, float]:
        """The request timeouts, shortened to what is left before ``deadline`` (at least 1 s,
        so that a call made at the last moment can still complete)."""
        if deadline is None:
            return self.timeout
        left = max(1.0, deadline.left())
        return (min(self.timeout[0], left), min(self.timeout[1], left))

    def _send_once(
        self,
        method: str,
        url: str,
        what: str,
        *,
        body: bytes | None = None,
        params: dict[str, Any] | None = None,
        deadline: Deadline | None = None,
    ) -> requests.Response:
        """One exchange. A 401/403 TokenExpired drops the cached token before it is raised:
        the retry policy sends the call once more, with a fresh token."""
        headers = {"Authorization": f"Bearer {self.tokens.token()}"}
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                params=params,
                headers=headers,
                timeout=self._timeout(deadline),
            )
        except requests.RequestException as exc:
            raise translate(exc, what) from exc
        if response.ok:
            return response
        error = translate(response, what)
        if response.status_code in (401, 403) and error.code == TOKEN_EXPIRED:
            log.info("%s: token expired; it is dropped and a new one fetched", what)
            self.tokens.invalidate()
        raise error

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        workspace: str | None = None,
        payload: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
        deadline: Deadline | None = None,
    ) -> Any:
        url = self.url(path, workspace)
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        response = self.retry.run(
            lambda: self._send_once(method, url, what, body=body, params=params, deadline=deadline),
            idempotent=idempotent,
            deadline=deadline,
            on_retry=lambda error, wait: log.warning(
                "%s: %s; retrying in %.1f s", what, error, wait
            ),
        )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"{what}: the answer is not JSON", maybe_delivered=True) from exc

    # -- operations -----------------------------------------------------------------------

    def ping(self) -> None:
        """One quick authenticated call (Get Groups, top 1), for health checks: not retried,
        except the policy's one re-send after an expired token (a deadline already passed
        allows no wait)."""
        url = self.url("/groups")
        self.retry.run(
            lambda: self._send_once("GET", url, "reach Power BI", params={"$top": 1}),
            idempotent=True,
            deadline=Deadline(-math.inf),
        )

    def get_groups(
        self,
        filter: str | None = None,
        top: int | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> list[dict[str, Any]]:
        """Workspaces the identity can see (Get Groups)."""
        params: dict[str, Any] = {}
        if filter:
            params["$filter"] = filter
        if top is not None:
            params["$top"] = top
        body = self._call("GET", "/groups", "list workspaces", params=params, deadline=deadline)
        return list(body.get("value", []))

    def get_group_users(
        self, workspace: str, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        """The members of a workspace (Groups - Get Group Users): ``identifier`` (an object id,
        or a user's UPN), ``principalType`` and ``groupUserAccessRight`` of each."""
        body = self._call(
            "GET",
            "/users",
            f"list the members of workspace {workspace}",
            workspace=workspace,
            deadline=deadline,
        )
        return list(body.get("value", [])) if body else []

    def add_group_user(
        self,
        workspace: str,
        identifier: str,
        access_right: str,
        principal_type: str = "App",
        *,
        deadline: Deadline | None = None,
    ) -> None:
        """Make ``identifier`` a member of a workspace (Groups - Add Group User). For an app
        identity (service principal, managed identity) the identifier is its object id."""
        self._call(
            "POST",
            "/users",
            f"add {principal_type} {identifier} to workspace {workspace} as {access_right}",
            workspace=workspace,
            payload=_member(identifier, access_right, principal_type),
            # Not re-sent after an ambiguous failure: a second add of a member is refused
            # (400), which would hide that the first one worked.
            idempotent=False,
            deadline=deadline,
        )

    def update_group_user(
        self,
        workspace: str,
        identifier: str,
        access_right: str,
        principal_type: str = "App",
        *,
        deadline: Deadline | None = None,
    ) -> None:
        """Change an existing member's role (Groups - Update Group User)."""
        self._call(
            "PUT",
            "/users",
            f"make {principal_type} {identifier} {access_right} of workspace {workspace}",
            workspace=workspace,
            payload=_member(identifier, access_right, principal_type),
            deadline=deadline,
        )

    def group_id(self, name: str, *, deadline: Deadline | None = None) -> str:
        """The id of the workspace called ``name``, looked up once and cached."""
        if name not in self._group_ids:
            escaped = name.replace("'", "''")
            found = self.get_groups(f"name eq '{escaped}'", deadline=deadline)
            groups = [g for g in found if g.get("name") == name]
            if not groups:
                raise NotFoundError(f"no workspace named {name!r} is visible to this identity")
            if len(groups) > 1:
                raise ConfigError(
                    "POWERBI_WORKSPACE_NAME", f"{name!r} names several workspaces; use the id"
                )
            self._group_ids[name] = str(groups[0]["id"])
        return self._group_ids[name]

    def get_datasets(
        self, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        """The datasets of a workspace (Get Datasets)."""
        body = self._call(
            "GET", "/datasets", "list datasets", workspace=workspace, deadline=deadline
        )
        return list(body.get("value", []))

    def get_dataset(self, dataset_id: str, workspace: str | None = None) -> dict[str, Any]:
        path = f"/datasets/{quote(dataset_id, safe='')}"
        body: dict[str, Any] = self._call(
            "GET", path, f"get dataset {dataset_id}", workspace=workspace
        )
        return body

    def create_dataset(
        self,
        definition: dict[str, Any],
        workspace: str | None = None,
        retention: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """Create a push dataset. Not retried after an ambiguous failure: it could duplicate."""
        params = {"defaultRetentionPolicy": retention} if retention else None
        body: dict[str, Any] = self._call(
            "POST",
            "/datasets",
            f"create dataset {definition.get('name')!r}",
            workspace=workspace,
            payload=definition,
            params=params,
            idempotent=False,
            deadline=deadline,
        )
        return body

    def delete_dataset(self, dataset_id: str, workspace: str | None = None) -> None:
        path = f"/datasets/{quote(dataset_id, safe='')}"
        self._call("DELETE", path, f"delete dataset {dataset_id}", workspace=workspace)

    def get_tables(
        self, dataset_id: str, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        """A dataset's tables (Get Tables)."""
        path = f"/datasets/{quote(dataset_id, safe='')}/tables"
        body = self._call(
            "GET", path, f"list tables of {dataset_id}", workspace=workspace, deadline=deadline
        )
        return list(body.get("value", []))

    def put_table(
        self,
        dataset_id: str,
        table: dict[str, Any],
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """Replace a table's schema (Put Table)."""
        path = f"/datasets/{quote(dataset_id, safe='')}/tables/{quote(table['name'], safe='')}"
        body: dict[str, Any] = self._call(
            "PUT",
            path,
            f"update table {table['name']!r}",
            workspace=workspace,
            payload=table,
            deadline=deadline,
        )
        return body

    def post_rows(
        self,
        dataset_id: str,
        table: str,
        body: bytes,
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> None:
        """Add Rows with a ready-made body, sent once (see the module docstring)."""
        path = f"/datasets/{quote(dataset_id, safe='')}/tables/{quote(table, safe='')}/rows"
        self._send_once(
            "POST",
            self.url(path, workspace),
            f"add rows to {table!r} of {dataset_id}",
            body=body,
            deadline=deadline,
        )

    def delete_rows(self, dataset_id: str, table: str, workspace: str | None = None) -> None:
        """Delete every row of a table (the service has no per-row delete)."""
        path = f"/datasets/{quote(dataset_id, safe='')}/tables/{quote(table, safe='')}/rows"
        self._call("DELETE", path, f"delete rows of {table!r}", workspace=workspace)


def _member(identifier: str, access_right: str, principal_type: str) -> dict[str, str]:
    """The body of Add/Update Group User (``GroupUser`` in the REST reference)."""
    return {
        "identifier": identifier,
        "principalType": principal_type,
        "groupUserAccessRight": access_right,
    }
