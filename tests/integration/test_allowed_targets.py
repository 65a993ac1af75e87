"""ALLOWED_TARGETS' default, through devhost (issue 15): callers may write only to the default
workspace's datasets that have a definition. A dataset made outside the bundle, another
workspace named in a request, a group on the Power BI surface, a blob's path: refused (403, or
the blob dead-lettered whole) and nothing pushed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, WORKSPACE_NAME, Api, EmulatorProcess
from tests.integration.test_blob_pipeline import wait_for
from tests.integration.test_devhost import Devhost, app_environment, start_devhost

KEY = "allow-test-key"
COLUMNS = [{"name": "ProductID", "dataType": "Int64"}]
ENV: dict[str, str] = {}
DEFINED = f"Allowed-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def host(
    emulator: EmulatorProcess, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Devhost]:
    """devhost with the default rule (no ALLOWED_TARGETS) and one defined dataset."""
    work = tmp_path_factory.mktemp("allowed")
    (work / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    datasets = work / "datasets"
    datasets.mkdir()
    (datasets / f"{DEFINED}.json").write_text(
        json.dumps({"name": DEFINED, "tables": [{"name": "Product", "columns": COLUMNS}]})
    )
    env = app_environment(emulator, azurite, f"rows{uuid.uuid4().hex[:8]}")
    del env["ALLOWED_TARGETS"]
    env.update(
        FRONTDOOR_KEYS=KEY,
        DATASETS_DIR=str(datasets),
        INGEST_CONTAINER=f"ingest{uuid.uuid4().hex[:8]}",
        DEADLETTER_CONTAINER=f"dl{uuid.uuid4().hex[:8]}",
        DEVHOST_BLOB_POLL_SECONDS="0.3",
    )
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(
        env["INGEST_CONTAINER"]
    )
    ENV.update(env)
    started = start_devhost(env, work / "local.settings.json")
    yield started
    started.stop()


def post(host: Devhost, path: str, body: Any, **headers: str) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(f"{host.base}/api/{path}", json=body, headers=headers, timeout=60)


def dataset_id(api: Api, name: str) -> str | None:
    found = api.request("GET", f"{api.prefix(WORKSPACE_ID)}/datasets").json()["value"]
    return next((d["id"] for d in found if d["name"] == name), None)


def test_a_defined_dataset_in_the_default_workspace_is_written(host: Devhost, api: Api) -> None:
    answer = post(host, f"datasets/{DEFINED}/tables/Product/rows", {"rows": [{"ProductID": 1}]})
    assert answer.status_code == 200, answer.text
    found = dataset_id(api, DEFINED)
    assert found is not None
    assert [r["ProductID"] for r in api.stored_rows(found, "Product")] == [1]


def test_a_dataset_without_a_definition_is_refused_and_nothing_pushed(
    host: Devhost, api: Api
) -> None:
    """Made in Power BI by someone else (here: in the emulator), with no definition: 403 on
    the /api routes and on the Power BI surface, whether named or given by id."""
    name = f"Foreign-{uuid.uuid4().hex[:6]}"
    foreign = api.create_dataset([{"name": "Product", "columns": COLUMNS}], WORKSPACE_ID, name=name)
    by_name = post(host, f"datasets/{name}/tables/Product/rows", {"rows": [{"ProductID": 1}]})
    surface = post(
        host,
        f"v1.0/myorg/datasets/{foreign}/tables/Product/rows",
        {"rows": [{"ProductID": 1}]},
        Authorization=f"Bearer {KEY}",
    )

    assert by_name.status_code == 403, by_name.text
    assert "ALLOWED_TARGETS" in by_name.json()["error"]["message"]
    assert surface.status_code == 403, surface.text
    assert surface.json()["error"]["code"] == "Forbidden"
    assert api.stored_rows(foreign, "Product") == []


def test_another_workspace_is_refused_before_any_request(host: Devhost, api: Api) -> None:
    """``?workspace=`` naming another workspace, an envelope's workspace, a group on the
    surface: 403, and the surface's Get Groups lists only the default workspace."""
    other = str(uuid.uuid4())
    query = post(
        host,
        f"datasets/{DEFINED}/tables/Product/rows?workspace={other}",
        {"rows": [{"ProductID": 2}]},
    )
    envelope = post(
        host,
        "rows",
        {
            "dataset": DEFINED,
            "table": "Product",
            "workspace": "Elsewhere",
            "rows": [{"ProductID": 3}],
        },
    )
    group = post(
        host,
        f"v1.0/myorg/groups/{other}/datasets",
        {"name": "X", "tables": [{"name": "T", "columns": COLUMNS}]},
        Authorization=f"Bearer {KEY}",
    )
    session = requests.Session()
    session.trust_env = False
    groups = session.get(
        f"{host.base}/api/v1.0/myorg/groups", headers={"Authorization": f"Bearer {KEY}"}
    )

    assert (query.status_code, envelope.status_code, group.status_code) == (403, 403, 403)
    assert [g["name"] for g in groups.json()["value"]] == [WORKSPACE_NAME]


def test_a_blob_for_a_target_callers_may_not_use_is_dead_lettered_whole(
    host: Devhost, api: Api, azurite: Azurite
) -> None:
    name = f"Foreign-{uuid.uuid4().hex[:6]}"
    foreign = api.create_dataset([{"name": "Product", "columns": COLUMNS}], WORKSPACE_ID, name=name)
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string
    ).get_container_client(ENV["INGEST_CONTAINER"])
    container.upload_blob(f"{name}/Product/rows.csv", b"ProductID\n1\n2\n")

    def letters() -> list[dict[str, Any]]:
        return dead_letter_lines(azurite.connection_string, ENV["DEADLETTER_CONTAINER"])

    wait_for(lambda: any(name in json.dumps(d) for d in letters()), 60, "the dead letter")
    (letter,) = [d for d in letters() if name in json.dumps(d)]
    assert "ALLOWED_TARGETS" in letter["reason"]
    assert api.stored_rows(foreign, "Product") == []


def test_the_operator_command_line_is_not_bound_by_it(api: Api, tmp_path: Path) -> None:
    """The list restricts callers; the operator's ``python -m shared push`` may write to any
    dataset the identity reaches (shown in tests/integration/test_cli.py, whose datasets have
    no definition): here, that the command line builds its ingestor without a policy."""
    from shared.runtime import build_ingestor
    from shared.settings import Settings

    settings = Settings.from_env(
        {
            "POWERBI_API_URL": api.emulator.base,
            "POWERBI_AUTH": "static",
            "POWERBI_STATIC_TOKEN": "t",
        }
    )
    assert build_ingestor(settings, {}, dead_letters=False, callers=False).policy is None
    assert build_ingestor(settings, {}, dead_letters=False).policy is not None


def test_the_surface_creates_new_datasets_but_adopts_none_made_elsewhere(
    host: Devhost, api: Api
) -> None:
    """Creating a new dataset through the surface makes it writable (it has a definition
    now); "creating" one made outside the bundle, with its very tables, is 403, not a way in."""
    headers = {"Authorization": f"Bearer {KEY}"}
    fresh = f"Made-{uuid.uuid4().hex[:6]}"
    body = {"name": fresh, "tables": [{"name": "Product", "columns": COLUMNS}]}
    created = post(host, "v1.0/myorg/datasets", body, **headers)
    rows = post(
        host,
        f"v1.0/myorg/datasets/{created.json()['id']}/tables/Product/rows",
        {"rows": [{"ProductID": 5}]},
        **headers,
    )
    foreign_name = f"Foreign-{uuid.uuid4().hex[:6]}"
    api.create_dataset([{"name": "Product", "columns": COLUMNS}], WORKSPACE_ID, name=foreign_name)
    adopt = post(host, "v1.0/myorg/datasets", {**body, "name": foreign_name}, **headers)

    assert created.status_code == 201 and rows.status_code == 200, rows.text
    assert adopt.status_code == 403
    assert adopt.json()["error"]["code"] == "Forbidden"
