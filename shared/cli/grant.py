"""``python -m shared grant``: make the app's identity a member of a workspace, as the operator.

Run by a workspace Admin (a person), not by the app: the token is the operator's own, from
``POWERBI_OPERATOR_TOKEN`` when set (e.g. ``az account get-access-token --resource
https://analysis.windows.net/powerbi/api --query accessToken -o tsv``), else from the Azure
CLI's sign-in (azure-identity's ``AzureCliCredential``). It is sent only where
:func:`~shared.destinations.auth.check_token_destination` allows (https, or a loopback
emulator), and never printed.

What it does (Groups - Get Group Users, then Add Group User or Update Group User, with
``principalType`` App: a service principal's or managed identity's object id):

- not a member: added with the role asked (default Contributor, the least role that may create
  datasets and push rows; Viewer may not write, so it is refused here with why);
- a member with a lower role: raised to the role asked;
- a member with the same or a higher role: left as it is. A role is never lowered unless
  ``--force`` says so, since the identity may hold the higher role for other work.

Exit codes: 0 done (or nothing to do), 1 Power BI refused (its answer and the fix are printed),
2 usage or configuration (no operator token, a bad setting or argument).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.destinations.powerbi import DEFAULT_TIMEOUT, PowerBIClient
from shared.engine.retry import RetryPolicy
from shared.errors import AuthError, ConfigError, NotFoundError, PushError, ValidationError
from shared.settings import Settings

#: Workspace roles, lowest first (Groups - Add Group User, ``GroupUserAccessRight``).
ROLES = ("Viewer", "Contributor", "Member", "Admin")
#: The least role that may create push datasets and add rows ("Roles in workspaces in Power
#: BI": Contributor may create, edit and delete content; reference §8 on Contributor).
LEAST_PUSH_ROLE = "Contributor"
#: The setting that carries an operator's token for this command.
OPERATOR_TOKEN = "POWERBI_OPERATOR_TOKEN"


def add_parser(commands: Any) -> None:
    """The ``grant`` subcommand's arguments (``commands``: argparse's subparsers)."""
    grant = commands.add_parser(
        "grant",
        help="as a workspace Admin, make the app's identity a member of a workspace",
        description="Run as a workspace Admin (your own sign-in, not the app's): adds the "
        "app's managed identity or service principal to the workspace, or raises its role. "
        "Never lowers a role without --force.",
        epilog="The token: POWERBI_OPERATOR_TOKEN when set (az account get-access-token "
        "--resource https://analysis.windows.net/powerbi/api --query accessToken -o tsv), else "
        "the Azure CLI's sign-in (az login). Exit 0 done, 1 refused by Power BI, 2 usage.",
    )
    grant.add_argument("--workspace", required=True, help="the workspace's id or name")
    grant.add_argument(
        "--principal",
        required=True,
        help="the object id of the app's managed identity or service principal "
        "(python -m shared doctor shows it)",
    )
    grant.add_argument(
        "--role",
        default=LEAST_PUSH_ROLE,
        choices=ROLES,
        help="the workspace role (default Contributor, the least that may push)",
    )
    grant.add_argument(
        "--principal-type",
        default="App",
        choices=("App", "Group"),
        help="App: a service principal or managed identity (default); Group: a security group",
    )
    grant.add_argument(
        "--force", action="store_true", help="set the role even when it lowers the current one"
    )


class OperatorTokens:
    """The operator's token: ``POWERBI_OPERATOR_TOKEN``, else the Azure CLI's sign-in."""

    def __init__(self, env: Mapping[str, str], scope: str) -> None:
        self._given = (env.get(OPERATOR_TOKEN) or "").strip() or None
        self._scope = scope
        self._token: str | None = None

    def token(self) -> str:
        """The token (asked of the Azure CLI once, when no token was given)."""
        if self._given is not None:
            return self._given
        if self._token is None:
            self._token = _azure_cli_token(self._scope)
        return self._token

    def invalidate(self) -> None:
        """A refused token: the CLI is asked again next time (a given token cannot change)."""
        self._token = None


def _azure_cli_token(scope: str) -> str:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import AzureCliCredential, CredentialUnavailableError

    try:
        # 20 s: the CLI may refresh its own sign-in first (azure-identity's default is 10 s).
        token: str = AzureCliCredential(process_timeout=20).get_token(scope).token
        return token
    except CredentialUnavailableError as exc:
        raise ConfigError(
            OPERATOR_TOKEN,
            "is not set, and the Azure CLI has no token for Power BI: run 'az login' as a "
            "workspace Admin, or set POWERBI_OPERATOR_TOKEN to the output of 'az account "
            f"get-access-token --resource {scope.removesuffix('/.default')} --query accessToken "
            f"-o tsv' ({str(exc).splitlines()[0][:200] if str(exc) else 'unavailable'})",
        ) from None
    except ClientAuthenticationError as exc:
        raise AuthError(
            f"the Azure CLI could not get a token: {str(exc).splitlines()[0][:200]}"
        ) from None


@dataclass(frozen=True)
class Granted:
    """What ``grant`` did: ``action`` is added, raised, lowered, unchanged or kept (a higher
    role left as it was)."""

    workspace_id: str
    principal: str
    principal_type: str
    role: str
    previous: str | None
    action: str

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace_id,
            "principal": self.principal,
            "principalType": self.principal_type,
            "role": self.role,
            "previous": self.previous,
            "action": self.action,
        }


def grant(
    client: PowerBIClient,
    workspace_id: str,
    principal: str,
    role: str,
    *,
    principal_type: str = "App",
    force: bool = False,
) -> Granted:
    """Make ``principal`` a member of the workspace with at least ``role`` (exactly ``role``
    with ``force``); see the module docstring."""
    current = _role_of(client, workspace_id, principal)
    if current is None:
        try:
            client.add_group_user(workspace_id, principal, role, principal_type)
            return Granted(workspace_id, principal, principal_type, role, None, "added")
        except ValidationError as error:
            # Listed nowhere, yet already there (added meanwhile): Power BI refuses a second
            # add (AddingAlreadyExistsGroupUserNotSupportedError). Read the role it has and go
            # on as if it had been listed, so that a higher role is still never lowered.
            if "alreadyexists" not in (error.code or "").casefold():
                raise
            current = _role_of(client, workspace_id, principal)
            if current is None:
                raise
    have = ROLES.index(current) if current in ROLES else -1
    want = ROLES.index(role)
    if have == want:
        return Granted(workspace_id, principal, principal_type, role, current, "unchanged")
    if have > want and not force:
        return Granted(workspace_id, principal, principal_type, current, current, "kept")
    client.update_group_user(workspace_id, principal, role, principal_type)
    action = "raised" if have < want else "lowered"
    return Granted(workspace_id, principal, principal_type, role, current, action)


def _role_of(client: PowerBIClient, workspace_id: str, principal: str) -> str | None:
    """The principal's role in the workspace (Get Group Users), or None if not a member."""
    return next(
        (
            str(m.get("groupUserAccessRight"))
            for m in client.get_group_users(workspace_id)
            if str(m.get("identifier", "")).casefold() == principal.casefold()
        ),
        None,
    )


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The ``grant`` command: prints what was done as JSON; returns the exit code."""
    if args.role == "Viewer":
        print(
            "error: --role Viewer is refused: a Viewer may read but not create datasets or "
            "add rows, so the app could not push (Power BI answers 401 "
            "PowerBINotAuthorizedException); use Contributor (the default), Member or Admin",
            file=sys.stderr,
        )
        return 2
    try:
        uuid.UUID(args.principal)
    except ValueError:
        print(
            f"error: --principal {args.principal!r} is not an object id (a GUID): give the "
            "object id of the managed identity or service principal (not its name or app "
            "id); 'python -m shared doctor' shows it",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings.from_env(env)
        client = PowerBIClient(
            settings.api_root,
            OperatorTokens(env, f"{settings.resource}/.default"),
            timeout=(DEFAULT_TIMEOUT[0], 30.0),
            # One re-send at most (an expired token, a passing failure), and no long waits.
            retry=RetryPolicy(max_attempts=2, max_retry_after=30.0),
        )
        workspace = args.workspace
        try:
            uuid.UUID(workspace)
            workspace_id = workspace
        except ValueError:
            workspace_id = client.group_id(workspace)
        done = grant(
            client,
            workspace_id,
            args.principal,
            args.role,
            principal_type=args.principal_type,
            force=args.force,
        )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"fix: {_fix(exc, args.workspace)}", file=sys.stderr)
        return 1
    print(json.dumps(done.to_json(), indent=2))
    if done.action == "kept":
        print(
            f"note: {args.principal} is already {done.role}, above {args.role}; left as it is "
            "(--force sets the lower role)",
            file=sys.stderr,
        )
    elif done.action in ("added", "raised", "lowered"):
        print(
            "note: Power BI may take a few minutes to apply it; then run 'python -m shared "
            "doctor' with the app's settings",
            file=sys.stderr,
        )
    return 0


def _fix(error: PushError, workspace: str) -> str:
    """What the operator can do about a refusal of ``grant``."""
    if isinstance(error, AuthError):
        return (
            f"run this as an Admin of workspace {workspace} (a Member may add members up to "
            "Member): the token used is POWERBI_OPERATOR_TOKEN when set, else the Azure CLI's "
            "sign-in ('az login'); a service principal or managed identity cannot be added to a "
            "workspace while the tenant setting 'Service principals can use Fabric APIs' is "
            "off for it"
        )
    if isinstance(error, NotFoundError):
        return (
            f"no workspace {workspace!r} is visible to the operator's sign-in: check the name "
            "or give its id (the app.powerbi.com/groups/<id>/... address of the workspace)"
        )
    if isinstance(error, ValidationError):
        return "check --principal: it must be the object id of the identity (not its app id)"
    return "try again; if it persists, check POWERBI_API_URL and the network"
