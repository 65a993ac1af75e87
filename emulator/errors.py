"""Errors in the service's shape: ``{"error": {"code": ..., "message": ..., "details": [...]}}``.

Codes and messages follow the ones observed from Power BI (see the reference's error table):
``ItemNotFound`` for tables and non-push datasets, ``PowerBIEntityNotFound`` for unknown
datasets and groups, ``BadRequest`` with ``details`` for schema and value errors,
``TokenExpired`` (403), and 429 with ``Retry-After`` for every throttle.

Refusals of identities and roles (issue 17), and where each form comes from. Microsoft
documents *that* these calls are refused, rarely the exact answer; forms marked [3rd-party]
are what public client code and bug reports quote from the live service.

- Tenant setting off ("Service principals can use Fabric APIs", formerly "Allow service
  principals to use Power BI APIs"; MicrosoftDocs/fabric-docs
  ``docs/admin/service-admin-portal-developer.md``), or the service principal outside the
  security group the setting is scoped to: **401** with the header
  ``X-PowerBI-Error-Info: ServicePrincipalIsNotAllowedByTenantAdminSwitch`` and no body.
  Microsoft's own C# SDK reads that header into the exception message
  (microsoft/PowerBI-CSharp ``sdk/PowerBI.Api/Extensions/V2/HttpOperationExceptionHandler.cs``:
  ``X-PowerBI-Error-Info`` appended as `` (<info>)``, also ``X-PowerBI-Error-Details``), and so
  does its PowerShell module (microsoft/powerbi-powershell ``PowerBIRestExceptionRecord``). The
  header value and the empty body are [3rd-party] (client code that reads "the error response
  body usually comes empty; the real detail is in x-powerbi-error-info, e.g.
  ServicePrincipalIsNotAllowedByTenantAdminSwitch").
- A service principal on a My workspace path (``/v1.0/myorg/datasets...``): "My workspace isn't
  supported when using service principal" (MicrosoftDocs/powerbi-docs
  ``powerbi-docs/developer/embedded/embed-service-principal.md``). The answer, **403**
  ``{"Message":"API is not accessible for application"}``, is [3rd-party] (quoted verbatim by
  several public clients, e.g. on ``datasets/{id}/Default.BindToGateway``).
- Caller not a member of ``groups/{id}``: **401** ``PowerBINotAuthorizedException``
  (MicrosoftDocs/powerbi-docs ``powerbi-docs/developer/embedded/embedded-troubleshoot.md``, the
  table row "Wrong group ID / Unauthorized group"). The body shape
  ``{"error":{"code":"PowerBINotAuthorizedException","pbi.error":{"code":
  "PowerBINotAuthorizedException","parameters":{},"details":[],"exceptionCulprit":1}}}`` is
  quoted in MicrosoftDocs/powerbi-docs issue #1109 (a service principal, 401); the header
  ``X-PowerBI-Error-Info: GroupNotAccessible`` for "valid token, no workspace access" is
  [3rd-party] (a client's test table "measured on the live API"). The emulator sends both, and
  a ``message`` naming what is missing (the service's own body has none).
- A role too low for the operation (a Viewer writing, a Contributor managing access): the same
  401 ``PowerBINotAuthorizedException``; the roles come from "Roles in workspaces in Power BI"
  (MicrosoftDocs/powerbi-docs ``powerbi-docs/collaborate-share/service-roles-new-workspaces.md``
  and ``includes/power-bi-workspace-roles-table.md``): Viewer views only; Contributor creates,
  edits and deletes content; Member also "Add members or others with lower permissions";
  Admin also "Add/remove people, including other admins".
- Add Group User for someone already in the workspace: **400**
  ``AddingAlreadyExistsGroupUserNotSupportedError`` [3rd-party: the code, checked by several
  deployment scripts; its message was not found, the emulator's is its own]. A missing or bad
  ``principalType``/``identifier``: 400 ``InvalidRequest`` "Parameter PrincipalType or
  Identifier is missing or invalid" [3rd-party, Fabric community thread; MicrosoftDocs/
  powerbi-docs issue #797 quotes "Parameter userDetails.PrincipalType is missing or invalid"].
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer. Raise it anywhere in a handler; the middleware renders it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        raw: Any = None,
        pbi_error: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}
        #: A body sent as is instead of the ``{"error": ...}`` shape (``b""``: no body at all),
        #: for answers the service gives in another shape.
        self.raw = raw
        #: Add the service's ``pbi.error`` object (PowerBINotAuthorizedException has one).
        self.pbi_error = pbi_error

    def body(self) -> dict[str, Any]:
        """The ``{"error": ...}`` body (not used when :attr:`raw` is set)."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        if self.pbi_error:
            error["pbi.error"] = {
                "code": self.code,
                "parameters": {},
                "details": [],
                "exceptionCulprit": 1,
            }
        return {"error": error}


def bad_request(message: str, target: str = "request") -> ApiError:
    """A 400 in the service's ``BadRequest`` shape, with the reason in ``details``."""
    return ApiError(
        400, "BadRequest", "Bad Request", details=[{"message": message, "target": target}]
    )


def dataset_not_found(dataset_id: str) -> ApiError:
    return ApiError(404, "PowerBIEntityNotFound", f"Dataset {dataset_id} was not found.")


def group_not_found(group_id: str) -> ApiError:
    return ApiError(404, "PowerBIEntityNotFound", f"Workspace {group_id} was not found.")


def table_not_found(table: str, dataset_id: str) -> ApiError:
    return ApiError(404, "ItemNotFound", f"Table '{table}' not found in dataset '{dataset_id}'")


def not_push(dataset_id: str) -> ApiError:
    return ApiError(404, "ItemNotFound", f"Dataset {dataset_id} is not Push API dataset.")


#: The header Power BI names an authorization refusal in (see the module docstring).
ERROR_INFO_HEADER = "X-PowerBI-Error-Info"
TENANT_SWITCH_INFO = "ServicePrincipalIsNotAllowedByTenantAdminSwitch"
NOT_ACCESSIBLE_FOR_APPLICATION = "API is not accessible for application"


def tenant_switch_off() -> ApiError:
    """401 for a service principal the tenant setting does not let in: header, no body."""
    return ApiError(
        401,
        TENANT_SWITCH_INFO,
        "Service principals are not allowed by the tenant setting.",
        headers={ERROR_INFO_HEADER: TENANT_SWITCH_INFO},
        raw=b"",
    )


def not_accessible_for_application() -> ApiError:
    """403 for a service principal on My workspace: ``{"Message": "..."}``, not the error shape."""
    return ApiError(
        403,
        "Forbidden",
        NOT_ACCESSIBLE_FOR_APPLICATION,
        raw={"Message": NOT_ACCESSIBLE_FOR_APPLICATION},
    )


def not_authorized(message: str, info: str | None = None) -> ApiError:
    """401 ``PowerBINotAuthorizedException`` (not a member, or a role too low)."""
    return ApiError(
        401,
        "PowerBINotAuthorizedException",
        message,
        headers={ERROR_INFO_HEADER: info} if info else None,
        pbi_error=True,
    )


def invalid_request(message: str) -> ApiError:
    """400 ``InvalidRequest`` (a Group User body the service does not accept)."""
    return ApiError(400, "InvalidRequest", message)
