"""Who may call what: the tenant setting for service principals, and workspace roles.

Power BI refuses a first deployment for reasons the emulator used to hide (issue 17): the tenant
setting "Service principals can use Fabric APIs" off (or scoped to a security group the identity
is not in), the identity not a member of the workspace or only a Viewer, and a service principal
calling My workspace. This module holds the rules; ``emulator/errors.py`` cites the answers'
forms and ``emulator/app.py`` applies the rules to each route.

A caller is a *service principal* when its token says ``idtyp=app`` (managed-identity and
client-credentials tokens; Entra sets that optional claim to ``app`` for app-only tokens). Its
object id is ``oid``; workspace members are matched on it, as Add Group User's ``identifier``
is the principal's object id for ``principalType: App``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emulator.errors import (
    bad_request,
    invalid_request,
    not_accessible_for_application,
    not_authorized,
    tenant_switch_off,
)

#: Workspace roles, lowest first ("Roles in workspaces in Power BI", MicrosoftDocs/powerbi-docs
#: ``collaborate-share/service-roles-new-workspaces.md``).
ROLES = ("Viewer", "Contributor", "Member", "Admin")
PRINCIPAL_TYPES = ("App", "User", "Group")
#: What each kind of operation needs: Viewer "View and interact with an item"; Contributor
#: "Create, edit, and delete content in the workspace"; Member "Add members or others with lower
#: permissions"; Admin "Add/remove people, including other admins" (same page's table).
READ, WRITE, MANAGE = "Viewer", "Contributor", "Member"
#: The user an admin token is issued to by default (``POST /_emulator/token``).
DEFAULT_USER = "emulator-user"


def rank(role: str) -> int:
    """A role's place in :data:`ROLES` (higher may do more)."""
    return ROLES.index(role)


@dataclass(frozen=True)
class Member:
    """One entry of a workspace's access list, as Get Group Users returns it."""

    identifier: str
    principal_type: str
    access_right: str
    display_name: str | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": self.identifier,
            "principalType": self.principal_type,
            "groupUserAccessRight": self.access_right,
        }
        if self.display_name is not None:
            body["displayName"] = self.display_name
        return body


def parse_member(body: Any, where: str = "member") -> Member:
    """A member from the admin API's JSON (``identifier``, ``principalType``,
    ``groupUserAccessRight``, optional ``displayName``); a 400 naming the bad field."""
    if not isinstance(body, dict):
        raise bad_request(f"Each {where} must be a JSON object.", where)
    identifier = body.get("identifier")
    if not isinstance(identifier, str) or not identifier.strip():
        raise bad_request(f"'identifier' of the {where} must be a non-empty string.", "identifier")
    principal_type = body.get("principalType")
    if principal_type not in PRINCIPAL_TYPES:
        raise bad_request(
            f"'principalType' {principal_type!r} is not one of {', '.join(PRINCIPAL_TYPES)}.",
            "principalType",
        )
    right = body.get("groupUserAccessRight")
    if right not in ROLES:
        raise bad_request(
            f"'groupUserAccessRight' {right!r} is not one of {', '.join(ROLES)}.",
            "groupUserAccessRight",
        )
    display = body.get("displayName")
    if display is not None and not isinstance(display, str):
        raise bad_request("'displayName' must be a string.", "displayName")
    return Member(identifier.strip(), principal_type, right, display)


def parse_group_user(body: Any) -> Member:
    """A member from an Add/Update Group User body, refused as the service refuses it."""
    if not isinstance(body, dict):
        raise invalid_request("Parameter userDetails is missing or invalid")
    identifier = body.get("identifier") or body.get("emailAddress")
    if not isinstance(identifier, str) or body.get("principalType") not in PRINCIPAL_TYPES:
        raise invalid_request("Parameter PrincipalType or Identifier is missing or invalid")
    right = body.get("groupUserAccessRight")
    if right not in ROLES:
        raise invalid_request("Parameter GroupUserAccessRight is missing or invalid")
    display = body.get("displayName")
    return Member(
        identifier.strip(),
        str(body["principalType"]),
        str(right),
        display if isinstance(display, str) else None,
    )


@dataclass
class TenantSetting:
    """ "Service principals can use Fabric APIs": on for everyone, on for some, or off."""

    service_principals_enabled: bool = True
    #: None: every service principal (when enabled); a list: only these object ids, as the
    #: setting scoped to a security group.
    allowed_principals: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "servicePrincipalsEnabled": self.service_principals_enabled,
            "allowedPrincipals": self.allowed_principals,
        }

    @classmethod
    def from_json(cls, body: Any) -> TenantSetting:
        """Parse the admin API's body; a 400 naming the bad field."""
        if not isinstance(body, dict):
            raise bad_request(
                'Send {"servicePrincipalsEnabled": true|false, "allowedPrincipals": null|[...]}.',
                "tenant",
            )
        unknown = set(body) - {"servicePrincipalsEnabled", "allowedPrincipals"}
        if unknown:
            raise bad_request(f"Unknown tenant setting {sorted(unknown)[0]!r}.", "tenant")
        enabled = body.get("servicePrincipalsEnabled", True)
        if not isinstance(enabled, bool):
            raise bad_request("'servicePrincipalsEnabled' must be true or false.", "tenant")
        allowed = body.get("allowedPrincipals")
        if allowed is not None and (
            not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed)
        ):
            raise bad_request("'allowedPrincipals' must be null or a list of object ids.", "tenant")
        return cls(enabled, None if allowed is None else [a.lower() for a in allowed])

    def admits(self, object_id: str) -> bool:
        """Whether a service principal with this object id may call the API."""
        if not self.service_principals_enabled:
            return False
        return self.allowed_principals is None or object_id.lower() in self.allowed_principals


def is_app(claims: dict[str, Any]) -> bool:
    """A service principal's (or managed identity's) token, not a user's."""
    return claims.get("idtyp") == "app"


def caller_id(claims: dict[str, Any]) -> str:
    """The caller's object id, as workspace members name it."""
    return str(claims.get("oid") or claims.get("sub") or "")


def check_tenant(tenant: TenantSetting, claims: dict[str, Any]) -> None:
    """Refuse a service principal the tenant setting does not let in (401 + header)."""
    if is_app(claims) and not tenant.admits(caller_id(claims)):
        raise tenant_switch_off()


def check_my_workspace(claims: dict[str, Any]) -> None:
    """Refuse a service principal on My workspace (403 ``{"Message": ...}``)."""
    if is_app(claims):
        raise not_accessible_for_application()


def role_of(members: dict[str, Member], claims: dict[str, Any]) -> str | None:
    """The caller's role in a workspace, or None. (Entra groups are listed but not expanded:
    the emulator's tokens carry no group claims, so a Group entry grants nobody.)"""
    member = members.get(caller_id(claims).lower())
    return member.access_right if member is not None else None


def require(
    members: dict[str, Member], claims: dict[str, Any], needed: str, workspace: str, action: str
) -> str:
    """The caller's role if it is at least ``needed``; else 401 PowerBINotAuthorizedException."""
    role = role_of(members, claims)
    if role is None:
        raise not_authorized(
            f"The caller ({caller_id(claims)}) is not a member of workspace {workspace}: it has "
            "no access to it.",
            "GroupNotAccessible",
        )
    if rank(role) < rank(needed):
        raise not_authorized(
            f"The caller ({caller_id(claims)}) is {role} of workspace {workspace}; {action} "
            f"needs {needed} or higher."
        )
    return role
