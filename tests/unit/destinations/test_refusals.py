"""The identity refusals of Power BI, each translated with its cause and fix: the tenant switch
(often an empty body, the cause in ``X-PowerBI-Error-Info``), an app identity in My workspace
(``{"Message": ...}`` with a capital M), a caller that is not a member or only a Viewer."""

from __future__ import annotations

import http.client
import json

import requests

from shared.destinations.powerbi import (
    NOT_AUTHORIZED,
    TENANT_SWITCH,
    refusal_cause,
    translate,
)
from shared.errors import AuthError, ValidationError

API = "https://api.powerbi.com/v1.0/myorg"


def response(
    status: int, body: object = None, url: str = f"{API}/groups", **headers: str
) -> requests.Response:
    """A requests.Response as the transport would build it (no network)."""
    made = requests.Response()
    made.status_code = status
    made.reason = http.client.responses.get(status, "")
    made._content = b"" if body is None else json.dumps(body).encode()
    made.headers.update(headers)
    made.url = url
    return made


def test_tenant_switch_in_the_header_with_an_empty_body() -> None:
    """A 401 whose only cause is the header: its value becomes the code, and the hint names
    the tenant setting and where to change it."""
    error = translate(response(401, **{"X-PowerBI-Error-Info": TENANT_SWITCH}), "list workspaces")
    assert isinstance(error, AuthError)
    assert error.code == TENANT_SWITCH and error.status == 401
    text = str(error)
    assert "Service principals can use Fabric APIs" in text and "admin portal" in text
    assert refusal_cause(error.status, error.code, text) == "tenant_switch"


def test_the_header_is_named_beside_a_body_code() -> None:
    """A body with its own code keeps it; the header's cause is still shown and recognised."""
    body = {"error": {"code": NOT_AUTHORIZED, "message": ""}}
    error = translate(response(401, body, **{"X-PowerBI-Error-Info": TENANT_SWITCH}), "x")
    assert error.code == NOT_AUTHORIZED
    assert f"X-PowerBI-Error-Info: {TENANT_SWITCH}" in str(error)
    assert refusal_cause(error.status, error.code, str(error)) == "tenant_switch"


def test_my_workspace_refusal_with_a_capital_m() -> None:
    """``{"Message": "API is not accessible for application"}`` on a My workspace path: the
    message is read, and the fix is a workspace setting."""
    error = translate(
        response(403, {"Message": "API is not accessible for application"}, f"{API}/datasets"),
        "list datasets",
    )
    text = str(error)
    assert "API is not accessible for application" in text
    assert "My workspace" in text and "POWERBI_WORKSPACE_ID" in text
    assert refusal_cause(403, error.code, text, f"{API}/datasets") == "my_workspace_app"


def test_the_same_message_on_a_workspace_path_points_at_the_tenant_setting() -> None:
    """Reported elsewhere as the tenant setting's refusal (reference §6.1): on a groups path it
    cannot be My workspace."""
    url = f"{API}/groups/3d9b93c6-7b6d-4801-a491-1738910904fd/datasets"
    error = translate(response(401, {"message": "API is not accessible for application"}, url), "x")
    assert "Service principals can use Fabric APIs" in str(error)


def test_the_message_on_get_groups_is_the_tenant_setting_not_my_workspace() -> None:
    """Get Groups (``/myorg/groups``) is open to service principals, so "API is not accessible
    for application" there is the tenant setting (reference §6.1 quotes it as a 401); the cause
    travels on the error, decided where the URL was known."""
    url = f"{API}/groups?$top=5000"
    error = translate(response(401, {"Message": "API is not accessible for application"}, url), "x")
    assert isinstance(error, AuthError) and error.cause == "tenant_switch"
    assert "Service principals can use Fabric APIs" in str(error)
    mine = translate(
        response(403, {"Message": "API is not accessible for application"}, f"{API}/datasets/x"),
        "x",
    )
    assert isinstance(mine, AuthError) and mine.cause == "my_workspace_app"


def test_not_a_member_or_viewer_names_the_roles_and_the_grant_command() -> None:
    body = {"error": {"code": NOT_AUTHORIZED, "message": "Viewer cannot add rows"}}
    error = translate(response(401, body), "add rows")
    text = str(error)
    assert "Viewer cannot add rows" in text
    assert "Contributor" in text and "python -m shared grant" in text
    assert refusal_cause(error.status, error.code, text) == "not_authorized"


def test_pbi_error_without_a_message_falls_back_to_the_reason() -> None:
    """Power BI's 401 for a non-member may carry only ``pbi.error``: no message, the code
    still read."""
    body = {"error": {"code": NOT_AUTHORIZED, "pbi.error": {"code": NOT_AUTHORIZED}}}
    error = translate(response(401, body), "x")
    assert error.code == NOT_AUTHORIZED and "Unauthorized" in str(error)


def test_other_statuses_are_not_refusals() -> None:
    """A 400 with the header is a validation error, and no identity cause is made up."""
    error = translate(response(400, **{"X-PowerBI-Error-Info": "SomethingElse"}), "x")
    assert isinstance(error, ValidationError) and error.code == "SomethingElse"
    assert refusal_cause(400, error.code, str(error)) is None


def test_group_not_accessible_alone_is_not_a_member() -> None:
    """The header's "no workspace access" with an empty body is recognised too."""
    error = translate(response(401, **{"X-PowerBI-Error-Info": "GroupNotAccessible"}), "x")
    assert refusal_cause(error.status, error.code, str(error)) == "not_authorized"
    assert "python -m shared grant" in str(error)
