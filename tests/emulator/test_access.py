"""Issue 17: the emulator refuses identities as Power BI does (tenant setting for service
principals, workspace membership and roles, My workspace for apps), and Group Users grants.

Each test makes its own workspace with an explicit member list through the admin API, so the
session's emulator and its default workspace stay as every other test expects them; tests that
turn the tenant setting off restore it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.emulator.conftest import (
    IDENTITY_HEADER,
    WORKSPACE_ID,
    EmulatorProcess,
    int_table,
    start_emulator,
)

#: The system-assigned managed identity's object id (emulator/identity.py default).
SYSTEM_MI = "00000000-0000-0000-0000-0000000051a1"
ADMIN = "emulator-user"


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


class Caller:
    """Calls the API with one token."""

    def __init__(self, emulator: EmulatorProcess, token: str) -> None:
        self.emulator = emulator
        self.session = _session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.emulator.api}{path}", timeout=30, **kwargs)


def token(emulator: EmulatorProcess, subject: str = ADMIN, identity_type: str = "user") -> str:
    with _session() as session:
        response = session.post(
            f"{emulator.base}/_emulator/token",
            json={"subject": subject, "identityType": identity_type},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


def msi_token(emulator: EmulatorProcess) -> str:
    """The system-assigned managed identity's token from the App Service endpoint."""
    with _session() as session:
        response = session.get(
            f"{emulator.base}/msi/token",
            params={
                "api-version": "2019-08-01",
                "resource": "https://analysis.windows.net/powerbi/api",
            },
            headers={"X-IDENTITY-HEADER": IDENTITY_HEADER},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


def member(identifier: str, right: str, principal_type: str = "User") -> dict[str, str]:
    return {
        "identifier": identifier,
        "principalType": principal_type,
        "groupUserAccessRight": right,
    }


def new_workspace(emulator: EmulatorProcess, members: list[dict[str, str]] | None) -> str:
    body: dict[str, Any] = {"name": f"Access {uuid.uuid4().hex[:8]}"}
    if members is not None:
        body["members"] = members
    with _session() as session:
        response = session.post(f"{emulator.base}/_emulator/workspaces", json=body, timeout=30)
    assert response.status_code == 201, response.text
    workspace: str = response.json()["id"]
    return workspace


def set_tenant(emulator: EmulatorProcess, body: dict[str, Any]) -> requests.Response:
    with _session() as session:
        return session.put(f"{emulator.base}/_emulator/tenant", json=body, timeout=30)


@pytest.fixture
def tenant_restored(emulator: EmulatorProcess) -> Iterator[None]:
    yield
    restored = set_tenant(emulator, {"servicePrincipalsEnabled": True, "allowedPrincipals": None})
    assert restored.status_code == 200, restored.text


def create_dataset(caller: Caller, workspace: str) -> requests.Response:
    body = {"name": f"acc-{uuid.uuid4().hex[:6]}", "tables": [int_table("T")]}
    return caller.call("POST", f"/groups/{workspace}/datasets", json=body)


def rows_stored(emulator: EmulatorProcess, dataset_id: str) -> int:
    with _session() as session:
        state = session.get(f"{emulator.base}/_emulator/datasets/{dataset_id}", timeout=30).json()
    return int(state["tables"][0]["rows"])


def assert_not_authorized(response: requests.Response, info: str | None = None) -> None:
    """401 PowerBINotAuthorizedException with the service's pbi.error object."""
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "PowerBINotAuthorizedException"
    assert error["pbi.error"]["code"] == "PowerBINotAuthorizedException"
    assert response.headers.get("X-PowerBI-Error-Info") == info


# -- the tenant setting -----------------------------------------------------------------------


@pytest.mark.usefixtures("tenant_restored")
def test_tenant_switch_off_refuses_service_principals_with_the_header(
    emulator: EmulatorProcess,
) -> None:
    """Switch off: an app token gets 401, X-PowerBI-Error-Info naming the switch, no body, on
    every /v1.0 call (Get Groups too); a user token is unaffected."""
    app = Caller(emulator, msi_token(emulator))
    user = Caller(emulator, token(emulator))
    assert app.call("GET", f"/groups/{WORKSPACE_ID}/datasets").status_code == 200
    assert set_tenant(emulator, {"servicePrincipalsEnabled": False}).status_code == 200
    for path in (f"/groups/{WORKSPACE_ID}/datasets", "/groups", "/datasets"):
        refused = app.call("GET", path)
        assert refused.status_code == 401, (path, refused.text)
        assert (
            refused.headers["X-PowerBI-Error-Info"]
            == "ServicePrincipalIsNotAllowedByTenantAdminSwitch"
        )
        assert refused.content == b""
    assert user.call("GET", f"/groups/{WORKSPACE_ID}/datasets").status_code == 200


@pytest.mark.usefixtures("tenant_restored")
def test_tenant_setting_scoped_to_principals(emulator: EmulatorProcess) -> None:
    """allowedPrincipals: only the listed object ids get in (the setting scoped to a group)."""
    other = f"app-{uuid.uuid4().hex[:8]}"
    workspace = new_workspace(
        emulator, [member(SYSTEM_MI, "Member", "App"), member(other, "Member", "App")]
    )
    answer = set_tenant(emulator, {"servicePrincipalsEnabled": True, "allowedPrincipals": [other]})
    assert answer.json() == {"servicePrincipalsEnabled": True, "allowedPrincipals": [other]}
    inside = Caller(emulator, token(emulator, other, "app"))
    outside = Caller(emulator, msi_token(emulator))
    assert inside.call("GET", f"/groups/{workspace}/datasets").status_code == 200
    refused = outside.call("GET", f"/groups/{workspace}/datasets")
    assert refused.status_code == 401
    assert (
        refused.headers["X-PowerBI-Error-Info"] == "ServicePrincipalIsNotAllowedByTenantAdminSwitch"
    )


def test_tenant_admin_api_validates(emulator: EmulatorProcess) -> None:
    """A bad body is a 400 naming the field; GET shows the current setting."""
    bad = set_tenant(emulator, {"servicePrincipalsEnabled": "no"})
    assert bad.status_code == 400
    assert "servicePrincipalsEnabled" in bad.json()["error"]["details"][0]["message"]
    bad = set_tenant(emulator, {"allowedPrincipals": "all"})
    assert bad.status_code == 400
    assert "allowedPrincipals" in bad.json()["error"]["details"][0]["message"]
    with _session() as session:
        current = session.get(f"{emulator.base}/_emulator/tenant", timeout=30).json()
    assert current == {"servicePrincipalsEnabled": True, "allowedPrincipals": None}


# -- My workspace -----------------------------------------------------------------------------


def test_my_workspace_refuses_apps_and_serves_users(emulator: EmulatorProcess) -> None:
    """An app token on /v1.0/myorg/datasets... is 403 {"Message": ...}; a user's works; Get
    Groups stays allowed for apps."""
    app = Caller(emulator, token(emulator, SYSTEM_MI, "app"))
    user = Caller(emulator, token(emulator))
    created = user.call("POST", "/datasets", json={"name": "mine", "tables": [int_table("T")]})
    assert created.status_code == 201, created.text
    dataset = created.json()["id"]
    for method, path, body in (
        ("GET", "/datasets", None),
        ("POST", "/datasets", {"name": "x", "tables": [int_table("T")]}),
        ("GET", f"/datasets/{dataset}", None),
        ("GET", f"/datasets/{dataset}/tables", None),
        ("POST", f"/datasets/{dataset}/tables/T/rows", {"rows": [{"c0": 1}]}),
        ("DELETE", f"/datasets/{dataset}/tables/T/rows", None),
        ("DELETE", f"/datasets/{dataset}", None),
    ):
        refused = app.call(method, path, json=body)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json() == {"Message": "API is not accessible for application"}
    assert app.call("GET", "/groups").status_code == 200
    assert rows_stored(emulator, dataset) == 0
    assert user.call("DELETE", f"/datasets/{dataset}").status_code == 200


# -- membership and roles ---------------------------------------------------------------------


def test_default_setup_lets_the_managed_identity_push(emulator: EmulatorProcess) -> None:
    """Unchanged default: the configured workspace lists the emulator's identities, and an MSI
    token creates a dataset there and pushes rows."""
    with _session() as session:
        listed = session.get(
            f"{emulator.base}/_emulator/workspaces/{WORKSPACE_ID}/users", timeout=30
        ).json()["value"]
    rights = {m["identifier"]: m["groupUserAccessRight"] for m in listed}
    assert rights[ADMIN] == "Admin" and rights[SYSTEM_MI] == "Member"
    app = Caller(emulator, msi_token(emulator))
    created = create_dataset(app, WORKSPACE_ID)
    assert created.status_code == 201, created.text
    dataset = created.json()["id"]
    pushed = app.call(
        "POST",
        f"/groups/{WORKSPACE_ID}/datasets/{dataset}/tables/T/rows",
        json={"rows": [{"c0": 1}]},
    )
    assert pushed.status_code == 200, pushed.text
    assert rows_stored(emulator, dataset) == 1


def test_non_member_is_refused_and_does_not_see_the_workspace(emulator: EmulatorProcess) -> None:
    """Not a member: 401 PowerBINotAuthorizedException (GroupNotAccessible) on every operation,
    and Get Groups does not list the workspace."""
    workspace = new_workspace(emulator, [member(ADMIN, "Admin")])
    app = Caller(emulator, msi_token(emulator))
    assert_not_authorized(app.call("GET", f"/groups/{workspace}/datasets"), "GroupNotAccessible")
    assert_not_authorized(create_dataset(app, workspace), "GroupNotAccessible")
    assert_not_authorized(app.call("GET", f"/groups/{workspace}/users"), "GroupNotAccessible")
    groups = app.call("GET", "/groups").json()["value"]
    assert workspace not in [g["id"] for g in groups]
    assert WORKSPACE_ID in [g["id"] for g in groups]
    mine = Caller(emulator, token(emulator)).call("GET", "/groups").json()["value"]
    assert workspace in [g["id"] for g in mine]


def test_grant_through_add_group_user_lets_the_identity_push(emulator: EmulatorProcess) -> None:
    """The first deployment: the managed identity is refused, the workspace Admin adds it as
    Contributor with the real Add Group User call, and its rows then arrive."""
    workspace = new_workspace(emulator, [member(ADMIN, "Admin")])
    admin = Caller(emulator, token(emulator))
    dataset = create_dataset(admin, workspace).json()["id"]
    rows = f"/groups/{workspace}/datasets/{dataset}/tables/T/rows"
    app = Caller(emulator, msi_token(emulator))
    assert_not_authorized(app.call("POST", rows, json={"rows": [{"c0": 1}]}), "GroupNotAccessible")

    granted = admin.call(
        "POST", f"/groups/{workspace}/users", json=member(SYSTEM_MI, "Contributor", "App")
    )
    assert granted.status_code == 200, granted.text
    pushed = app.call("POST", rows, json={"rows": [{"c0": 1}, {"c0": 2}]})
    assert pushed.status_code == 200, pushed.text
    assert rows_stored(emulator, dataset) == 2
    listed = admin.call("GET", f"/groups/{workspace}/users").json()["value"]
    assert member(SYSTEM_MI, "Contributor", "App") in listed

    again = admin.call(
        "POST", f"/groups/{workspace}/users", json=member(SYSTEM_MI, "Member", "App")
    )
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "AddingAlreadyExistsGroupUserNotSupportedError"
    changed = admin.call(
        "PUT", f"/groups/{workspace}/users", json=member(SYSTEM_MI, "Viewer", "App")
    )
    assert changed.status_code == 200, changed.text
    assert_not_authorized(app.call("POST", rows, json={"rows": [{"c0": 3}]}))
    assert admin.call("DELETE", f"/groups/{workspace}/users/{SYSTEM_MI}").status_code == 200
    assert_not_authorized(app.call("GET", f"/groups/{workspace}/datasets"), "GroupNotAccessible")
    assert rows_stored(emulator, dataset) == 2


@pytest.mark.parametrize(
    ("role", "can_write", "can_grant"),
    [
        ("Viewer", False, False),
        ("Contributor", True, False),
        ("Member", True, True),
        ("Admin", True, True),
    ],
)
def test_roles_matrix(
    emulator: EmulatorProcess, role: str, can_write: bool, can_grant: bool
) -> None:
    """Viewer reads only; Contributor also writes (create, push, put table, delete rows and
    dataset); Member also grants up to Member; Admin also grants Admin and removes people."""
    who = f"user-{uuid.uuid4().hex[:8]}"
    workspace = new_workspace(emulator, [member(ADMIN, "Admin"), member(who, role)])
    admin = Caller(emulator, token(emulator))
    caller = Caller(emulator, token(emulator, who))
    dataset = create_dataset(admin, workspace).json()["id"]
    base = f"/groups/{workspace}/datasets/{dataset}"

    assert caller.call("GET", f"/groups/{workspace}/datasets").status_code == 200
    assert caller.call("GET", f"{base}/tables").status_code == 200
    assert caller.call("GET", f"/groups/{workspace}/users").status_code == 200
    writes = [
        caller.call("POST", f"{base}/tables/T/rows", json={"rows": [{"c0": 1}]}),
        caller.call("PUT", f"{base}/tables/T", json=int_table("T")),
        caller.call("DELETE", f"{base}/tables/T/rows"),
        create_dataset(caller, workspace),
    ]
    for answer in writes:
        if can_write:
            assert answer.status_code in (200, 201), answer.text
        else:
            assert_not_authorized(answer)
            assert role in answer.json()["error"]["message"]
            assert "Contributor" in answer.json()["error"]["message"]

    newcomer = f"user-{uuid.uuid4().hex[:8]}"
    added = caller.call("POST", f"/groups/{workspace}/users", json=member(newcomer, "Member"))
    if can_grant:
        assert added.status_code == 200, added.text
    else:
        assert_not_authorized(added)
    as_admin = caller.call(
        "POST", f"/groups/{workspace}/users", json=member(f"u-{uuid.uuid4().hex[:8]}", "Admin")
    )
    if role == "Admin":
        assert as_admin.status_code == 200, as_admin.text
    else:
        assert_not_authorized(as_admin)
    removed = caller.call("DELETE", f"/groups/{workspace}/users/{ADMIN}")
    if role == "Admin":
        assert removed.status_code == 200, removed.text
    else:
        assert_not_authorized(removed)
    if can_write:
        assert caller.call("DELETE", base).status_code == 200


def test_member_cannot_change_an_admin(emulator: EmulatorProcess) -> None:
    """Update Group User: a Member may not demote an Admin; an unknown user is a 404."""
    who = f"user-{uuid.uuid4().hex[:8]}"
    workspace = new_workspace(emulator, [member(ADMIN, "Admin"), member(who, "Member")])
    caller = Caller(emulator, token(emulator, who))
    assert_not_authorized(
        caller.call("PUT", f"/groups/{workspace}/users", json=member(ADMIN, "Viewer"))
    )
    missing = caller.call("PUT", f"/groups/{workspace}/users", json=member("nobody", "Viewer"))
    assert missing.status_code == 404


def test_group_user_body_is_checked(emulator: EmulatorProcess) -> None:
    """Add Group User without principalType is the service's 400 InvalidRequest."""
    workspace = new_workspace(emulator, [member(ADMIN, "Admin")])
    admin = Caller(emulator, token(emulator))
    refused = admin.call(
        "POST",
        f"/groups/{workspace}/users",
        json={"identifier": SYSTEM_MI, "groupUserAccessRight": "Member"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "code": "InvalidRequest",
        "message": "Parameter PrincipalType or Identifier is missing or invalid",
    }


# -- the admin API ----------------------------------------------------------------------------


def test_admin_api_members(emulator: EmulatorProcess) -> None:
    """Without "members" the defaults; [] nobody; PUT replaces; a bad role is a 400 naming it;
    /_emulator/state shows members and the tenant setting."""
    defaults = new_workspace(emulator, None)
    nobody = new_workspace(emulator, [])
    with _session() as session:
        base = f"{emulator.base}/_emulator/workspaces"
        listed = session.get(f"{base}/{defaults}/users", timeout=30).json()["value"]
        assert {m["identifier"] for m in listed} >= {ADMIN, SYSTEM_MI}
        assert session.get(f"{base}/{nobody}/users", timeout=30).json() == {"value": []}
        bad = session.put(
            f"{base}/{nobody}/users", json={"value": [member(ADMIN, "Owner")]}, timeout=30
        )
        assert bad.status_code == 400
        assert "'Owner'" in bad.json()["error"]["details"][0]["message"]
        bad = session.post(
            base, json={"name": "x", "members": [member(ADMIN, "Admin", "Robot")]}, timeout=30
        )
        assert bad.status_code == 400
        assert "'Robot'" in bad.json()["error"]["details"][0]["message"]
        replaced = session.put(
            f"{base}/{nobody}/users", json={"value": [member(ADMIN, "Viewer")]}, timeout=30
        )
        assert replaced.json() == {"value": [member(ADMIN, "Viewer")]}
        state = session.get(f"{emulator.base}/_emulator/state", timeout=30).json()
    by_id = {w["id"]: w for w in state["workspaces"]}
    assert by_id[nobody]["members"] == [member(ADMIN, "Viewer")]
    assert state["tenant"] == {"servicePrincipalsEnabled": True, "allowedPrincipals": None}


def test_app_token_from_the_admin_api(emulator: EmulatorProcess) -> None:
    """identityType app: idtyp=app, oid=sub=appid=subject; a bad identityType is a 400."""
    import jwt

    claims = jwt.decode(token(emulator, "some-app", "app"), options={"verify_signature": False})
    assert (claims["idtyp"], claims["oid"], claims["sub"], claims["appid"]) == (
        "app",
        "some-app",
        "some-app",
        "some-app",
    )
    with _session() as session:
        bad = session.post(
            f"{emulator.base}/_emulator/token", json={"identityType": "robot"}, timeout=30
        )
    assert bad.status_code == 400


# -- persistence and start-up configuration ---------------------------------------------------


def test_members_and_tenant_survive_a_restart(tmp_path: Path) -> None:
    """With --db, a grant and the tenant setting are there after a restart; --config names
    members; --service-principals off starts with the switch off."""
    config = tmp_path / "emulator.json"
    config.write_text(
        '{"workspaces": [{"name": "Configured", "id": "5e0c8a52-9d0e-4b8e-8f7a-3c1f4d2a6b11",'
        ' "members": [{"identifier": "emulator-user", "principalType": "User",'
        ' "groupUserAccessRight": "Admin"}]}]}'
    )
    configured = "5e0c8a52-9d0e-4b8e-8f7a-3c1f4d2a6b11"
    db = str(tmp_path / "state.db")
    first = start_emulator("--db", db, "--config", str(config), tmp=tmp_path)
    try:
        admin = Caller(first, token(first))
        app = Caller(first, msi_token(first))
        assert_not_authorized(
            app.call("GET", f"/groups/{configured}/datasets"), "GroupNotAccessible"
        )
        granted = admin.call(
            "POST", f"/groups/{configured}/users", json=member(SYSTEM_MI, "Contributor", "App")
        )
        assert granted.status_code == 200, granted.text
        off = set_tenant(first, {"servicePrincipalsEnabled": False})
        assert off.status_code == 200
    finally:
        first.stop()
    second = start_emulator("--db", db, tmp=tmp_path)
    try:
        app = Caller(second, msi_token(second))
        assert app.call("GET", "/groups").status_code == 401  # the switch is still off
        assert set_tenant(second, {"servicePrincipalsEnabled": True}).status_code == 200
        assert app.call("GET", f"/groups/{configured}/datasets").status_code == 200
    finally:
        second.stop()
    third = start_emulator("--db", db, "--service-principals", "off", tmp=tmp_path)
    try:
        assert "service principals: off" in "\n".join(third.output)
        app = Caller(third, msi_token(third))
        assert app.call("GET", f"/groups/{configured}/datasets").status_code == 401
    finally:
        third.stop()
