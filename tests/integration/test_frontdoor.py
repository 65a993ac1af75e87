"""Power BI's own surface on the bundle (issue 15): existing senders change only their base URL
and key. Microsoft's push-dataset walkthrough replayed with ``requests``, ``pypowerbi`` and
``pbipy`` from PyPI, run against devhost (the emulator behind it), rows read back from the
emulator; both path forms and a ``//`` path; answers checked against the vendored OpenAPI
schemas; Add Rows all-or-nothing, or partial with dead letters; keys enforced."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, WORKSPACE_NAME, Api, EmulatorProcess
from tests.emulator.test_operations import assert_conforms
from tests.integration.test_devhost import Devhost, app_environment, start_devhost

KEY = "frontdoor-test-key"
#: The devhost's environment (the module's fixture fills it).
ENV: dict[str, str] = {}
#: The walkthrough's table, with the docs' own lower-case type names
#: (https://learn.microsoft.com/power-bi/developer/automation/walkthrough-push-data-create-dataset).
PRODUCT = {
    "name": "Product",
    "columns": [
        {"name": "ProductID", "dataType": "Int64"},
        {"name": "Name", "dataType": "string"},
        {"name": "Category", "dataType": "string"},
        {"name": "IsCompete", "dataType": "bool"},
        {"name": "ManufacturedOn", "dataType": "DateTime"},
    ],
}
#: The walkthrough's rows (its US dates included).
ROWS = [
    {
        "ProductID": 1,
        "Name": "Adjustable Race",
        "Category": "Components",
        "IsCompete": True,
        "ManufacturedOn": "07/30/2014",
    },
    {
        "ProductID": 2,
        "Name": "LL Crankarm",
        "Category": "Components",
        "IsCompete": False,
        "ManufacturedOn": "07/30/2014",
    },
]


@pytest.fixture(scope="module")
def door(
    emulator: EmulatorProcess, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Devhost]:
    """devhost with two caller keys and Delete Rows allowed (its queue trigger on, for the
    asynchronous mode)."""
    settings: Path = tmp_path_factory.mktemp("door") / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    env = app_environment(emulator, azurite, f"rows{uuid.uuid4().hex[:8]}")
    env.update(
        FRONTDOOR_KEYS=f"another-key,{KEY}",
        FRONTDOOR_ALLOW_DELETE_ROWS="true",
        DEADLETTER_CONTAINER=f"dl{uuid.uuid4().hex[:8]}",
        DATASETS_DIR=str(tmp_path_factory.mktemp("datasets")),
    )
    host = start_devhost(env, settings)
    ENV.clear()
    ENV.update(env)
    yield host
    host.stop()


def session(key: str | None = KEY) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    if key is not None:
        s.headers["Authorization"] = f"Bearer {key}"
    return s


def base(door: Devhost, group: str | None = None) -> str:
    return f"{door.base}/api/v1.0/myorg" + (f"/groups/{group}" if group else "")


def op(name: str, group: str | None) -> str:
    return f"Datasets_{name}{'InGroup' if group else ''}"


def new_dataset(door: Devhost, prefix: str) -> tuple[str, str]:
    """A new walkthrough dataset created through the surface: its id and its rows URL."""
    created = session().post(
        f"{base(door)}/datasets",
        json={"name": f"{prefix}-{uuid.uuid4().hex[:6]}", "tables": [PRODUCT]},
    )
    assert created.status_code == 201, created.text
    dataset_id: str = created.json()["id"]
    return dataset_id, f"{base(door)}/datasets/{dataset_id}/tables/Product/rows"


def stored(api: Api, dataset_id: str, table: str = "Product") -> list[dict[str, Any]]:
    return api.stored_rows(dataset_id, table)


@pytest.mark.parametrize("group", [None, WORKSPACE_ID])
def test_the_walkthrough_replayed_with_requests(door: Devhost, api: Api, group: str | None) -> None:
    """Create Dataset (lower-case types), Get Datasets, Add Rows, Get Tables, Get Dataset, Get
    Groups, as Microsoft's walkthrough sends them, in My workspace (the bundle's default
    workspace) and in the group form: each answer as the OpenAPI spec says, the rows in the
    emulator."""
    s = session()
    name = f"Walk-{uuid.uuid4().hex[:6]}"
    created = s.post(f"{base(door, group)}/datasets", json={"name": name, "tables": [PRODUCT]})
    assert_conforms(op("PostDataset", group), 201, created)
    dataset_id = created.json()["id"]

    listed = s.get(f"{base(door, group)}/datasets")
    assert_conforms(op("GetDatasets", group), 200, listed)
    assert dataset_id in [d["id"] for d in listed.json()["value"]]
    added = s.post(
        f"{base(door, group)}/datasets/{dataset_id}/tables/Product/rows", json={"rows": ROWS}
    )
    assert_conforms(op("PostRows", group), 200, added)
    tables = s.get(f"{base(door, group)}/datasets/{dataset_id}/tables")
    assert_conforms(op("GetTables", group), 200, tables)
    one = s.get(f"{base(door, group)}/datasets/{dataset_id}")
    assert_conforms(op("GetDataset", group), 200, one)
    groups = s.get(f"{base(door)}/groups", params={"$filter": f"name eq '{WORKSPACE_NAME}'"})
    assert_conforms("Groups_GetGroups", 200, groups)
    assert [g["id"] for g in groups.json()["value"]] == [WORKSPACE_ID]

    rows = stored(api, dataset_id)
    assert [r["ProductID"] for r in rows] == [1, 2]
    assert rows[0]["ManufacturedOn"].startswith("2014-07-30T00:00:00")


def test_a_double_slash_and_a_second_create_by_name(door: Devhost, api: Api) -> None:
    """``myorg//datasets`` (one client always sends it) is ``myorg/datasets``; creating the
    same dataset again answers the same id (201), a different one of that name is 409."""
    s = session()
    name = f"Twice-{uuid.uuid4().hex[:6]}"
    first = s.post(
        f"{door.base}/api/v1.0/myorg//datasets", json={"name": name, "tables": [PRODUCT]}
    )
    again = s.post(f"{base(door)}//datasets", json={"name": name, "tables": [PRODUCT]})
    other = {"name": "Product", "columns": [{"name": "ProductID", "dataType": "Double"}]}
    conflict = s.post(f"{base(door)}/datasets", json={"name": name, "tables": [other]})

    assert_conforms("Datasets_PostDataset", 201, first)
    assert_conforms("Datasets_PostDataset", 201, again)
    assert again.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "DatasetConflict"
    rows_url = f"{door.base}/api/v1.0/myorg//datasets/{first.json()['id']}/tables/Product/rows"
    assert s.post(rows_url, json={"rows": ROWS[:1]}).status_code == 200
    assert [r["ProductID"] for r in stored(api, first.json()["id"])] == [1]


def test_one_bad_row_refuses_the_request_and_nothing_is_stored(door: Devhost, api: Api) -> None:
    """Add Rows is all-or-nothing, as in Power BI: one bad row (two bad columns) and one
    unknown column give 400 naming each row and column, and no row is stored; with
    ``?partial=true`` the good rows are stored and the bad ones dead-lettered; a body none of
    whose rows can be stored is never a 2xx."""
    s = session()
    dataset_id, rows_url = new_dataset(door, "Bad")
    bad = [
        ROWS[0],
        {"ProductID": "two", "Name": "x", "IsCompete": "maybe"},
        {"ProductID": 3, "Colour": "red"},
    ]

    refused = s.post(rows_url, json={"rows": bad})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "BadRequest"
    assert "2 of 3 rows cannot be stored (rows 1, 2); nothing was sent" in error["message"]
    targets = [d["target"] for d in error["details"]]
    assert targets == ["rows[1].ProductID", "rows[2].Colour"]
    assert "IsCompete" in error["details"][0]["message"]  # every bad column of the row
    assert stored(api, dataset_id) == []

    partial = s.post(rows_url, json={"rows": bad}, params={"partial": "true"})
    assert partial.status_code == 200, partial.text
    assert (partial.headers["X-Rows-Sent"], partial.headers["X-Rows-Rejected"]) == ("1", "2")
    assert [r["ProductID"] for r in stored(api, dataset_id)] == [1]
    letters = dead_letter_lines(ENV["AzureWebJobsStorage"], ENV["DEADLETTER_CONTAINER"])
    assert sorted(letter["index"] for letter in letters) == [1, 2]

    nothing = s.post(rows_url, json={"rows": bad[1:]}, params={"partial": "true"})
    assert nothing.status_code == 400
    assert nothing.headers["X-Rows-Sent"] == "0"


def test_keys_are_required_and_checked(door: Devhost, api: Api) -> None:
    """No key, a wrong key, or another scheme: 401 in Power BI's error shape, nothing read or
    pushed; the second configured key works too."""
    url = f"{base(door)}/datasets"
    for s in (session(None), session("wrong"), session("another-key")):
        answer = s.get(url)
        if s.headers.get("Authorization") == "Bearer another-key":
            assert answer.status_code == 200
            continue
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "Unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    basic = session(None)
    basic.headers["Authorization"] = f"Basic {KEY}"
    assert basic.get(url).status_code == 401


def test_delete_rows_and_unknown_operations(door: Devhost, api: Api) -> None:
    """Delete Rows (allowed here by setting) empties the table; an operation the bundle does
    not serve is a 404 that says what it serves; an unknown dataset is Power BI's 404."""
    s = session()
    dataset_id, rows_url = new_dataset(door, "Del")
    assert s.post(rows_url, json={"rows": ROWS}).status_code == 200
    deleted = s.delete(rows_url)
    assert_conforms("Datasets_DeleteRows", 200, deleted)
    assert stored(api, dataset_id) == []

    reports = s.get(f"{base(door)}/reports")
    assert (
        reports.status_code == 404
        and "push-dataset operations" in reports.json()["error"]["message"]
    )
    missing = s.post(
        f"{base(door)}/datasets/{uuid.uuid4()}/tables/Product/rows", json={"rows": ROWS}
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ItemNotFound"


def test_pypowerbi_unchanged_but_for_the_base_url_and_key(door: Devhost, api: Api) -> None:
    """pypowerbi 0.27 (which sends ``myorg//datasets``): create, list, add rows, tables, delete
    rows, groups, in both forms."""
    from pypowerbi.client import PowerBIClient
    from pypowerbi.dataset import Column, Dataset, Row, Table

    client = PowerBIClient(f"{door.base}/api", {"accessToken": KEY})
    for group in (None, WORKSPACE_ID):
        name = f"Pypbi-{uuid.uuid4().hex[:6]}"
        table = Table("Product", [Column("ProductID", "Int64"), Column("Name", "string")])
        dataset = client.datasets.post_dataset(Dataset(name, tables=[table]), group_id=group)
        names = [d.name for d in client.datasets.get_datasets(group_id=group)]
        client.datasets.post_rows(
            dataset.id,
            "Product",
            [Row(ProductID=1, Name="A"), Row(ProductID=2, Name="B")],
            group_id=group,
        )
        tables = client.datasets.get_tables(dataset.id, group_id=group)

        assert name in names
        assert [t.name for t in tables] == ["Product"]
        assert sorted(r["ProductID"] for r in stored(api, dataset.id)) == [1, 2]
        client.datasets.delete_rows(dataset.id, "Product", group_id=group)
        assert stored(api, dataset.id) == []
    groups = client.groups.get_groups(filter_str=f"name eq '{WORKSPACE_NAME}'")
    assert [g.id for g in groups] == [WORKSPACE_ID]


def test_pbipy_unchanged_but_for_the_base_url_and_key(door: Devhost, api: Api) -> None:
    """pbipy 2.13 (no push calls of its own: its session posts them): datasets, dataset,
    groups (with ``$filter``, ``$top``, ``$skip``) and a group by id."""
    import pbipy.resources
    from pbipy.powerbi import PowerBI

    url = base(door)
    PowerBI.BASE_URL = pbipy.resources.Resource.BASE_URL = url
    pbi = PowerBI(KEY)
    name = f"Pbipy-{uuid.uuid4().hex[:6]}"
    created = pbi.session.post(
        f"{url}/datasets",
        params={"defaultRetentionPolicy": "basicFIFO"},
        json={"name": name, "defaultMode": "Push", "tables": [PRODUCT]},
    )
    created.raise_for_status()
    dataset_id = created.json()["id"]
    pbi.session.post(
        f"{url}/datasets/{dataset_id}/tables/Product/rows", json={"rows": ROWS}
    ).raise_for_status()

    assert name in [d.name for d in pbi.datasets()]
    assert pbi.dataset(dataset_id).name == name
    assert [g.id for g in pbi.groups(filter=f"name eq '{WORKSPACE_NAME}'", top=5, skip=0)] == [
        WORKSPACE_ID
    ]
    assert pbi.group(WORKSPACE_ID).id == WORKSPACE_ID
    assert [r["ProductID"] for r in stored(api, dataset_id)] == [1, 2]


def test_concurrent_requests_share_posts_and_each_is_answered_for_its_own_rows(
    door: Devhost, api: Api
) -> None:
    """Group commit: 40 one-row requests at once (and one with a bad row among them) share a
    few Add Rows calls instead of making 40; each good request is answered 200 for its own
    row, the bad one 400 without holding the others back, every good row stored once."""
    dataset_id, rows_url = new_dataset(door, "Group")

    def send(number: int) -> requests.Response:
        row: dict[str, Any] = {"ProductID": number, "Name": f"Part {number}"}
        if number == 17:
            row["ProductID"] = "seventeen"
        return session().post(rows_url, json={"rows": [row]})

    with ThreadPoolExecutor(41) as pool:
        answers = list(pool.map(send, range(41)))

    assert answers[17].status_code == 400
    good = [a for n, a in enumerate(answers) if n != 17]
    assert [a.status_code for a in good] == [200] * 40
    assert {a.headers["X-Rows-Sent"] for a in good} == {"1"}
    ids = sorted(int(r["ProductID"]) for r in stored(api, dataset_id))
    assert ids == [n for n in range(41) if n != 17]
    posts = api.state(dataset_id)["usage"]["postsLastHour"]
    assert posts <= 10, f"{posts} Add Rows calls for 40 one-row requests: not shared"


def test_asynchronous_mode_answers_200_once_queued_and_the_rows_arrive(
    door: Devhost, api: Api
) -> None:
    """``?mode=queue``: the rows are checked (a bad one is still 400 and nothing queued),
    queued, answered 200 as Power BI answers (a 202 would read as a failure), and delivered by
    the queue function."""
    s = session()
    dataset_id, rows_url = new_dataset(door, "Async")

    refused = s.post(rows_url, json={"rows": [{"ProductID": "x"}]}, params={"mode": "queue"})
    queued = s.post(rows_url, json={"rows": ROWS}, params={"mode": "queue"})

    assert refused.status_code == 400
    assert_conforms("Datasets_PostRows", 200, queued)
    assert queued.headers["X-Rows-Queued"] == "2"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(stored(api, dataset_id)) < 2:
        time.sleep(0.25)
    assert sorted(r["ProductID"] for r in stored(api, dataset_id)) == [1, 2]
