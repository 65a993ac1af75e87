"""``python -m shared doctor`` and ``python -m shared grant``, run as real processes against the
emulator (its tenant setting, workspace members and roles) and Azurite: each refusal named with
its cause and fix, and grant making doctor pass and a push arrive."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator.identity import IdentityConfig
from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, REPO, Api
from tests.integration.test_cli import app_environment

#: The emulator's system-assigned managed identity (its default object id): the app here.
APP_OID = IdentityConfig().system_principal_id
#: The Api fixture's token: the emulator's default user, the operator in these tests.
OPERATOR = "emulator-user"
TABLE = {"name": "Events", "columns": [{"name": "Id", "dataType": "Int64"}]}


def member(identifier: str, role: str, kind: str = "App") -> dict[str, str]:
    return {"identifier": identifier, "principalType": kind, "groupUserAccessRight": role}


@pytest.fixture
def tenant(api: Api) -> Iterator[Any]:
    """Sets the emulator's tenant setting; puts the default back afterwards."""
    url = f"{api.emulator.base}/_emulator/tenant"

    def put(enabled: bool, allowed: list[str] | None = None) -> None:
        body = {"servicePrincipalsEnabled": enabled, "allowedPrincipals": allowed}
        response = api.session.put(url, json=body, timeout=10)
        assert response.status_code == 200, response.text

    yield put
    put(True, None)


def workspace(api: Api, *members: dict[str, str]) -> str:
    """A new workspace whose members are the operator (Admin) and ``members``."""
    body = {
        "name": f"Doctor-{uuid.uuid4().hex[:8]}",
        "members": [member(OPERATOR, "Admin", "User"), *members],
    }
    response = api.session.post(f"{api.emulator.base}/_emulator/workspaces", json=body, timeout=10)
    assert response.status_code == 201, response.text
    workspace_id: str = response.json()["id"]
    return workspace_id


@pytest.fixture
def run(api: Api, azurite: Azurite, tmp_path: Path) -> Any:
    """Run ``python -m shared`` as the app (its managed identity), with a definition of one
    dataset in DATASETS_DIR and storage names of its own in Azurite."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    name = f"Doc{uuid.uuid4().hex[:6]}"
    (datasets / f"{name}.json").write_text(json.dumps({"name": name, "tables": [TABLE]}))
    suffix = uuid.uuid4().hex[:8]
    env = app_environment(
        api,
        azurite,
        DATASETS_DIR=str(datasets),
        INGEST_CONTAINER=f"in-{suffix}",
        CHECKPOINT_CONTAINER=f"cp-{suffix}",
        CLAIMCHECK_CONTAINER=f"cc-{suffix}",
        LOCKS_CONTAINER=f"lk-{suffix}",
        DEADLETTER_CONTAINER=f"dl-{suffix}",
        ROWS_QUEUE=f"rows-{suffix}",
        PACING_TABLE=f"pacing{suffix}",
    )

    def call(*args: str, **overrides: str | None) -> subprocess.CompletedProcess[str]:
        merged = {**env, **overrides}
        result = subprocess.run(
            [sys.executable, "-m", "shared", "--settings", str(tmp_path / "none.json"), *args],
            cwd=REPO,
            env={k: v for k, v in merged.items() if v is not None},
            capture_output=True,
            text=True,
            timeout=120,
        )
        for output in (result.stdout, result.stderr):  # never a token, nor the identity header
            assert api.token not in output and IDENTITY_HEADER not in output
            assert "eyJ" not in output
        return result

    call.dataset = name  # type: ignore[attr-defined]
    call.env = env  # type: ignore[attr-defined]
    return call


def doctor(run: Any, **overrides: str | None) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run ``doctor --json``: its exit code and its checks by key."""
    result = run("doctor", "--json", **overrides)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is (result.returncode == 0)
    return result.returncode, {c["key"]: c for c in report["checks"]}


def grant_command(workspace_id: str, role: str | None = None) -> str:
    command = f"python -m shared grant --workspace {workspace_id} --principal {APP_OID}"
    return command + (f" --role {role}" if role else "")


def test_tenant_switch_off_names_the_setting_and_skips_what_needs_it(
    run: Any, api: Api, tenant: Any
) -> None:
    """The tenant setting off (and then on for a group without this identity): Power BI's
    answer, the admin portal steps; the checks that need Power BI skipped; storage still
    checked."""
    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    for allowed in (None, ["99999999-9999-9999-9999-999999999999"]):
        tenant(allowed is not None, allowed)

        code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id)

        assert code == 1
        assert checks["settings"]["status"] == checks["token"]["status"] == "ok"
        assert APP_OID in checks["token"]["detail"]
        refused = checks["power-bi-api"]
        assert refused["status"] == "fail"
        assert "ServicePrincipalIsNotAllowedByTenantAdminSwitch" in refused["cause"]
        assert "Service principals can use Fabric APIs" in refused["fix"]
        assert "admin portal" in refused["fix"]
        for key in ("workspace", "my-workspace", "datasets"):
            assert checks[key]["status"] == "skipped"
        assert checks["workspace"]["needs"] == "power-bi-api"
        assert checks["storage:AzureWebJobsStorage"]["status"] == "ok"


def test_not_a_member_gets_the_exact_grant_command(run: Any, api: Api) -> None:
    workspace_id = workspace(api)  # the operator only

    code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id)

    assert code == 1
    check = checks["workspace"]
    assert check["status"] == "fail" and "not a member" in check["cause"]
    assert grant_command(workspace_id) in check["fix"]
    assert checks["datasets"]["status"] == "skipped" and checks["datasets"]["needs"] == "workspace"


def test_viewer_cannot_push_and_is_told_to_grant_contributor(run: Any, api: Api) -> None:
    workspace_id = workspace(api, member(APP_OID, "Viewer"))

    code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id)

    assert code == 1
    check = checks["workspace"]
    assert check["status"] == "fail" and check["detail"].endswith(": Viewer")
    assert "PowerBINotAuthorizedException" in check["cause"]
    assert grant_command(workspace_id, "Contributor") in check["fix"]


def test_my_workspace_with_a_managed_identity_fails_with_power_bis_answer(run: Any) -> None:
    code, checks = doctor(run)  # no POWERBI_WORKSPACE_ID or _NAME

    assert code == 1
    check = checks["my-workspace"]
    assert check["status"] == "fail"
    assert "API is not accessible for application" in check["cause"]
    assert "POWERBI_WORKSPACE_ID" in check["fix"]
    assert checks["workspace"]["status"] == "skipped"
    assert checks["datasets"]["needs"] == "my-workspace"


def test_a_user_token_in_my_workspace_passes(run: Any, api: Api) -> None:
    """A person's token (static, from the emulator) may use their own My workspace; doctor
    names the user and checks the definitions there."""
    code, checks = doctor(run, POWERBI_AUTH="static", POWERBI_STATIC_TOKEN=api.token)

    assert code == 0, checks
    assert "user" in checks["token"]["detail"] and OPERATOR in checks["token"]["detail"]
    assert checks["my-workspace"]["status"] == "ok"
    assert checks[f"dataset:{run.dataset}"]["detail"] == "absent: created on the first push"


def test_grant_makes_doctor_pass_and_a_push_arrive(
    run: Any, api: Api, azurite: Azurite, tmp_path: Path
) -> None:
    """Not a member; the operator grants (Contributor by default); doctor then passes, in
    plain text; a CSV pushed by the app arrives. Granting again changes nothing."""
    workspace_id = workspace(api)
    assert doctor(run, POWERBI_WORKSPACE_ID=workspace_id)[0] == 1

    granted = run(
        "grant",
        "--workspace",
        workspace_id,
        "--principal",
        APP_OID,
        POWERBI_OPERATOR_TOKEN=api.token,
    )
    again = run(
        "grant",
        "--workspace",
        workspace_id,
        "--principal",
        APP_OID,
        POWERBI_OPERATOR_TOKEN=api.token,
    )
    text = run("doctor", POWERBI_WORKSPACE_ID=workspace_id)
    rows = tmp_path / "events.csv"
    rows.write_text("Id\n" + "".join(f"{i}\n" for i in range(1, 26)))
    push = run(
        "push",
        str(rows),
        "--dataset",
        run.dataset,
        "--table",
        "Events",
        POWERBI_WORKSPACE_ID=workspace_id,
    )

    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout)["action"] == "added"
    assert json.loads(granted.stdout)["role"] == "Contributor"
    assert again.returncode == 0 and json.loads(again.stdout)["action"] == "unchanged"
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.rstrip().endswith("checks passed")
    assert "[ok  ] workspace: " in text.stdout and "Contributor, which may push" in text.stdout
    assert push.returncode == 0, push.stderr
    dataset_id = next(
        d["id"]
        for d in api.request("GET", f"{api.prefix(workspace_id)}/datasets").json()["value"]
        if d["name"] == run.dataset
    )
    assert sorted(r["Id"] for r in api.stored_rows(dataset_id, "Events")) == list(range(1, 26))


def test_grant_raises_never_lowers_without_force_and_refuses_viewer(run: Any, api: Api) -> None:
    workspace_id = workspace(api, member(APP_OID, "Member"))
    args = ("grant", "--workspace", workspace_id, "--principal", APP_OID)
    token = {"POWERBI_OPERATOR_TOKEN": api.token}

    kept = run(*args, **token)
    raised = run(*args, "--role", "Admin", **token)
    lowered = run(*args, "--role", "Contributor", "--force", **token)
    viewer = run(*args, "--role", "Viewer", **token)
    name = run("grant", "--workspace", workspace_id, "--principal", "my-function-app", **token)

    assert (kept.returncode, json.loads(kept.stdout)["action"]) == (0, "kept")
    assert json.loads(kept.stdout)["role"] == "Member" and "--force" in kept.stderr
    assert json.loads(raised.stdout)["action"] == "raised"
    assert json.loads(lowered.stdout)["action"] == "lowered"
    members = api.session.get(
        f"{api.emulator.base}/_emulator/workspaces/{workspace_id}/users", timeout=10
    ).json()["value"]
    assert member(APP_OID, "Contributor") in [
        {k: m[k] for k in ("identifier", "principalType", "groupUserAccessRight")} for m in members
    ]
    assert viewer.returncode == 2 and "Viewer" in viewer.stderr and "push" in viewer.stderr
    assert name.returncode == 2 and "object id" in name.stderr


def test_grant_by_an_operator_who_is_not_admin_is_refused_with_the_fix(run: Any, api: Api) -> None:
    """A Contributor may not add members: Power BI's answer, and what to do, exit 1."""
    workspace_id = workspace(api)
    operator = api.session.post(
        f"{api.emulator.base}/_emulator/token", json={"subject": "someone-else"}, timeout=10
    ).json()["access_token"]
    members = [member(OPERATOR, "Admin", "User"), member("someone-else", "Contributor", "User")]
    api.session.put(
        f"{api.emulator.base}/_emulator/workspaces/{workspace_id}/users",
        json={"value": members},
        timeout=10,
    ).raise_for_status()

    result = run(
        "grant",
        "--workspace",
        workspace_id,
        "--principal",
        APP_OID,
        POWERBI_OPERATOR_TOKEN=operator,
    )

    assert result.returncode == 1
    assert "PowerBINotAuthorizedException" in result.stderr
    assert f"fix: run this as an Admin of workspace {workspace_id}" in result.stderr
    assert operator not in result.stderr + result.stdout


def test_grant_without_an_operator_token_or_azure_cli_is_a_usage_error(run: Any) -> None:
    result = run(
        "grant",
        "--workspace",
        str(uuid.uuid4()),
        "--principal",
        APP_OID,
        PATH="/nonexistent",  # no az on the PATH: AzureCliCredential is unavailable
    )

    assert result.returncode == 2
    assert "POWERBI_OPERATOR_TOKEN" in result.stderr and "az login" in result.stderr


def test_dataset_drift_names_the_column_and_the_fix(run: Any, api: Api, tmp_path: Path) -> None:
    """A live dataset whose column is typed otherwise than its definition: failed, naming
    table and column; a definition with a column more is fine (added on the next push); an
    absent one is created on the first push."""
    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    datasets = tmp_path / "datasets"
    drifted = f"Drift{uuid.uuid4().hex[:6]}"
    wider = f"Wide{uuid.uuid4().hex[:6]}"
    for name in (drifted, wider):  # both made in Power BI with Events(Id Int64)
        api.create_dataset([TABLE], workspace_id, name=name)
    definitions = {
        drifted: [{"name": "Id", "dataType": "String"}],
        wider: [{"name": "Id", "dataType": "Int64"}, {"name": "Note", "dataType": "String"}],
    }
    for name, columns in definitions.items():
        body = {"name": name, "tables": [{"name": "Events", "columns": columns}]}
        (datasets / f"{name}.json").write_text(json.dumps(body))

    code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id)

    assert code == 1
    drift = checks[f"dataset:{drifted}"]
    assert drift["status"] == "fail"
    assert "Events.Id is Int64 in Power BI, String in the definition" in drift["cause"]
    assert f"{drifted}.json" in drift["fix"] and "delete the dataset" in drift["fix"]
    assert checks[f"dataset:{wider}"]["status"] == "ok"
    assert "columns added on the next push: Events.Note" in checks[f"dataset:{wider}"]["detail"]
    assert checks[f"dataset:{run.dataset}"]["detail"] == "absent: created on the first push"
    assert [k for k, c in checks.items() if c["status"] != "ok"] == [f"dataset:{drifted}"]


def test_unreachable_storage_is_named_with_its_fix(run: Any, api: Api) -> None:
    """A dead-letter connection to a port nobody listens on fails quickly with the endpoint to
    check; the app's other connection and Power BI still pass."""
    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )

    code, checks = doctor(
        run,
        POWERBI_WORKSPACE_ID=workspace_id,
        DEADLETTER_CONNECTION="DeadLetters",
        DeadLetters=dead,
    )

    assert code == 1
    check = checks["storage:DeadLetters"]
    assert check["status"] == "fail" and "unreachable" in check["detail"]
    assert "DeadLetters" in check["fix"] and "network" in check["fix"]
    assert checks["storage:AzureWebJobsStorage"]["status"] == "ok"
    assert "(created)" in checks["storage:AzureWebJobsStorage"]["detail"]
    assert [k for k, c in checks.items() if c["status"] != "ok"] == ["storage:DeadLetters"]


def test_the_apps_doctor_route_runs_the_checks_with_its_own_identity(
    run: Any, api: Api, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/doctor (functions/http.py), called as the worker calls it, in the app's
    environment: 503 with the failing check's cause while the tenant setting is off, 200 once
    it is on and the identity is a Contributor of the configured workspace."""
    import azure.functions as func

    from functions.http import doctor as doctor_function

    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    for key in [k for k in os.environ if k.startswith(("POWERBI_", "AZURE_", "IDENTITY_"))]:
        monkeypatch.delenv(key)
    for key, value in {**run.env, "POWERBI_WORKSPACE_ID": workspace_id}.items():
        monkeypatch.setenv(key, value)
    request = func.HttpRequest("GET", "http://localhost/api/doctor", body=b"")

    tenant(False)
    refused = doctor_function(request)
    body = json.loads(refused.get_body())
    checks = {c["key"]: c for c in body["checks"]}
    assert refused.status_code == 503 and body["ok"] is False
    assert checks["power-bi-api"]["status"] == "fail"
    assert "ServicePrincipalIsNotAllowedByTenantAdminSwitch" in checks["power-bi-api"]["cause"]
    assert checks["workspace"]["status"] == "skipped"

    tenant(True)
    passed = doctor_function(request)
    body = json.loads(passed.get_body())
    assert passed.status_code == 200, body
    assert body["ok"] is True and all(c["status"] == "ok" for c in body["checks"])
    assert api.token not in passed.get_body().decode() and "eyJ" not in passed.get_body().decode()


def routed(run: Any, tmp_path: Path, body: dict[str, Any]) -> Path:
    """The run's dataset routed by ``body`` (its routing file, beside the definition)."""
    path = tmp_path / "datasets" / f"{run.dataset}.destinations.json"
    path.write_text(json.dumps(body))
    return path


def test_a_table_routed_to_the_eventhouse_needs_its_kql_table_and_migrate_makes_it(
    run: Any, api: Api, tmp_path: Path
) -> None:
    """Events routed to both destinations, its KQL table absent: the routing file is fine,
    the Eventhouse answers, the missing table is named with the migrate command; after that
    command every check passes."""
    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    prefix = f"D{uuid.uuid4().hex[:6]}_"
    routed(
        run,
        tmp_path,
        {"tables": {"Events": ["powerbi", "eventhouse"]}, "eventhouse": {"table_prefix": prefix}},
    )
    eventhouse = {"EVENTHOUSE_URI": api.emulator.base, "EVENTHOUSE_DATABASE": "Sales"}

    code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id, **eventhouse)

    assert code == 1
    assert checks[f"routing:{run.dataset}"]["status"] == "ok"
    assert checks[f"routing:{run.dataset}"]["detail"] == (
        f"Events: powerbi+eventhouse (KQL database Sales, table prefix '{prefix}')"
    )
    assert checks["eventhouse"]["status"] == "ok"
    assert checks["eventhouse"]["detail"].startswith(f"{api.emulator.base} answers this identity")
    tables = checks[f"eventhouse:{run.dataset}"]
    assert tables["status"] == "fail"
    assert tables["cause"] == f"table(s) {prefix}Events missing"
    assert tables["fix"] == f"run python -m shared migrate --dataset {run.dataset}"
    assert [k for k, c in checks.items() if c["status"] != "ok"] == [f"eventhouse:{run.dataset}"]

    migrated = run("migrate", "--dataset", run.dataset, **eventhouse)
    text = run("doctor", POWERBI_WORKSPACE_ID=workspace_id, **eventhouse)

    assert migrated.returncode == 0, migrated.stderr
    assert text.returncode == 0, text.stdout + text.stderr
    assert (
        f"[ok  ] eventhouse:{run.dataset}: KQL database Sales: {prefix}Events with the "
        "definition's columns"
    ) in text.stdout


def test_a_broken_routing_file_is_named_with_its_key(run: Any, api: Api, tmp_path: Path) -> None:
    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    path = routed(run, tmp_path, {"tables": {"Events": ["powerbi", "fabric"]}})

    code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id)

    check = checks[f"routing:{run.dataset}"]
    assert code == 1 and check["status"] == "fail"
    assert check["cause"].startswith(f"{path}: tables.Events: unknown destination 'fabric'")
    assert check["fix"] == (
        f"correct tables.Events in {path} (python -m shared migrate --dataset {run.dataset} "
        "writes a valid file)"
    )
    assert "eventhouse" not in checks  # nothing routed there: no Eventhouse check


@pytest.mark.parametrize("problem", ["unreachable", "no database", "conflict"])
def test_eventhouse_problems_are_named_with_their_fix(
    run: Any, api: Api, tmp_path: Path, problem: str
) -> None:
    """A port nothing listens on (the tables check skipped), a database that does not exist,
    and a KQL table whose column the definition types otherwise."""
    workspace_id = workspace(api, member(APP_OID, "Contributor"))
    prefix = f"D{uuid.uuid4().hex[:6]}_"
    routed(
        run,
        tmp_path,
        {"tables": {"Events": ["eventhouse"]}, "eventhouse": {"table_prefix": prefix}},
    )
    env = {"EVENTHOUSE_URI": api.emulator.base, "EVENTHOUSE_DATABASE": "Sales"}
    if problem == "unreachable":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            env["EVENTHOUSE_URI"] = f"http://127.0.0.1:{probe.getsockname()[1]}"
    elif problem == "no database":
        env["EVENTHOUSE_DATABASE"] = "Nowhere"
    else:
        token = api.session.post(
            f"{api.emulator.base}/_emulator/token",
            json={"audience": "https://kusto.kusto.windows.net", "identityType": "app"},
            timeout=10,
        ).json()["access_token"]
        response = requests.post(
            f"{api.emulator.base}/v1/rest/mgmt",
            json={"db": "Sales", "csl": f".create-merge table {prefix}Events (Id:string)"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text

    code, checks = doctor(run, POWERBI_WORKSPACE_ID=workspace_id, **env)

    assert code == 1
    tables = checks[f"eventhouse:{run.dataset}"]
    if problem == "unreachable":
        assert checks["eventhouse"]["status"] == "fail"
        assert "EVENTHOUSE_URI" in checks["eventhouse"]["fix"]
        assert "network" in checks["eventhouse"]["fix"] or "reaches" in checks["eventhouse"]["fix"]
        assert tables["status"] == "skipped" and tables["needs"] == "eventhouse"
    elif problem == "no database":
        assert checks["eventhouse"]["status"] == "ok"
        assert tables["detail"] == f"KQL database Nowhere not found at {api.emulator.base}"
        assert "create the KQL database Nowhere" in tables["fix"]
    else:
        assert tables["cause"] == (
            f"{prefix}Events: column 'Id' is string in the KQL database, long in the definition"
        )
        assert "Kusto never retypes a column" in tables["fix"]
    assert [k for k, c in checks.items() if c["status"] != "ok"] == (
        ["eventhouse", f"eventhouse:{run.dataset}"]
        if problem == "unreachable"
        else [f"eventhouse:{run.dataset}"]
    )
