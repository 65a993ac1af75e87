"""State across restarts (``--db``) and the command line's handling of a bad configuration."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.emulator.conftest import REPO, WORKSPACE_ID, EmulatorProcess, start_emulator

TABLES = [
    {
        "name": "Sales",
        "columns": [
            {"name": "id", "dataType": "Int64"},
            {"name": "product", "dataType": "String"},
            {"name": "amount", "dataType": "Double"},
            {"name": "paid", "dataType": "Boolean"},
            {"name": "at", "dataType": "DateTime"},
        ],
    },
    {"name": "Notes", "columns": [{"name": "text", "dataType": "String"}]},
]
SALES = [
    {"id": 3, "product": "widget", "amount": 9.5, "paid": True, "at": "2024-05-01T10:00:00Z"},
    {"id": 1, "product": "gadget ü", "amount": 0.25, "paid": False, "at": "2024-05-02T11:30:00Z"},
    {"id": 2, "product": None, "amount": -1.0, "paid": None, "at": None},
]
NOTES = [{"text": "first"}, {"text": "second"}]


@contextmanager
def running(*args: str, tmp: Path) -> Iterator[EmulatorProcess]:
    """An emulator started with ``args`` and stopped when the block ends."""
    process = start_emulator(*args, tmp=tmp)
    try:
        yield process
    finally:
        process.stop()


def session_with(token: str) -> requests.Session:
    """A session that sends ``token`` and ignores proxy and CA settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def mint_token(emulator: EmulatorProcess) -> str:
    """A token from the emulator's admin API."""
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(f"{emulator.base}/_emulator/token", timeout=30)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def snapshot(emulator: EmulatorProcess, session: requests.Session) -> dict[str, Any]:
    """What the API shows of the workspace: groups, datasets, tables and every table's rows."""
    group = f"{emulator.api}/groups/{WORKSPACE_ID}"
    groups = session.get(f"{emulator.api}/groups", timeout=30)
    datasets = session.get(f"{group}/datasets", timeout=30)
    assert groups.status_code == 200 and datasets.status_code == 200, datasets.text
    state: dict[str, Any] = {
        "groups": groups.json()["value"],
        "datasets": [{"id": d["id"], "name": d["name"]} for d in datasets.json()["value"]],
        "tables": {},
        "rows": {},
    }
    for dataset in state["datasets"]:
        tables = session.get(f"{group}/datasets/{dataset['id']}/tables", timeout=30)
        assert tables.status_code == 200, tables.text
        state["tables"][dataset["id"]] = tables.json()["value"]
        for table in tables.json()["value"]:
            url = f"{emulator.base}/_emulator/datasets/{dataset['id']}/tables/{table['name']}/rows"
            state["rows"][(dataset["id"], table["name"])] = session.get(url, timeout=30).json()[
                "rows"
            ]
    return state


def create_with_rows(emulator: EmulatorProcess, session: requests.Session) -> str:
    """Create the test dataset in the workspace and push SALES and NOTES into it."""
    group = f"{emulator.api}/groups/{WORKSPACE_ID}"
    created = session.post(
        f"{group}/datasets", json={"name": "Persisted", "tables": TABLES}, timeout=30
    )
    assert created.status_code == 201, created.text
    dataset_id: str = created.json()["id"]
    for table, rows in (("Sales", SALES), ("Notes", NOTES)):
        url = f"{group}/datasets/{dataset_id}/tables/{table}/rows"
        response = session.post(url, json={"rows": rows}, timeout=30)
        assert response.status_code == 200, response.text
    return dataset_id


def test_state_and_signing_key_survive_a_restart_with_db(tmp_path: Path) -> None:
    """With --db, datasets, tables, rows (in order), workspaces and old tokens survive."""
    db = str(tmp_path / "state.db")
    with running("--db", db, tmp=tmp_path) as first:
        token = mint_token(first)
        with session_with(token) as session:
            dataset_id = create_with_rows(first, session)
            before = snapshot(first, session)
    assert [d["id"] for d in before["datasets"]] == [dataset_id]
    assert before["rows"][(dataset_id, "Notes")] == NOTES
    assert [row["id"] for row in before["rows"][(dataset_id, "Sales")]] == [3, 1, 2]

    with running("--db", db, tmp=tmp_path) as second, session_with(token) as session:
        check = session.get(f"{second.api}/groups/{WORKSPACE_ID}/datasets", timeout=30)
        assert check.status_code == 200, f"the old token is refused: {check.text}"
        after = snapshot(second, session)
    assert after == before


def test_without_db_a_restart_starts_empty(tmp_path: Path) -> None:
    """Without --db, a restarted emulator has no datasets and refuses the old tokens."""
    with running(tmp=tmp_path) as first:
        token = mint_token(first)
        with session_with(token) as session:
            create_with_rows(first, session)
            assert len(snapshot(first, session)["datasets"]) == 1

    with running(tmp=tmp_path) as second:
        with session_with(token) as session:
            old = session.get(f"{second.api}/groups/{WORKSPACE_ID}/datasets", timeout=30)
        assert old.status_code == 403, old.text
        with session_with(mint_token(second)) as session:
            assert snapshot(second, session)["datasets"] == []


def test_missing_config_file_exits_with_code_2(tmp_path: Path) -> None:
    """A --config file that does not exist makes the command line exit 2 with a message."""
    missing = tmp_path / "no-such-config.json"
    result = subprocess.run(
        [sys.executable, "-m", "emulator", "--port", "0", "--config", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "bad configuration" in result.stderr and str(missing) in result.stderr, result.stderr
    assert result.stdout == ""
