"""``python -m shared``: the operator's commands, run as a real process against the emulator
(with the managed-identity token endpoint) and Azurite."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, REPO, WORKSPACE_ID, WORKSPACE_NAME, Api


def app_environment(api: Api, azurite: Azurite, **settings: str) -> dict[str, str]:
    """This process's environment without its Power BI, identity and dead-letter settings, and
    with the app's: Power BI = the emulator through its managed-identity endpoint, storage =
    Azurite; ``settings`` on top."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POWERBI_", "AZURE_", "MSI_", "IDENTITY_", "DEADLETTER_"))
    }
    env.update(
        POWERBI_API_URL=api.emulator.base,
        POWERBI_AUTH="managed_identity",
        IDENTITY_ENDPOINT=f"{api.emulator.base}/msi/token",
        IDENTITY_HEADER=IDENTITY_HEADER,
        AzureWebJobsStorage=azurite.connection_string,
        **settings,
    )
    return env


@pytest.fixture
def run(api: Api, azurite: Azurite, tmp_path: Path) -> Any:
    """Run the command line with settings that point it at the emulator and Azurite."""
    env = app_environment(api, azurite, DEADLETTER_CONTAINER=f"cli-{uuid.uuid4().hex[:10]}")

    def call(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared", "--settings", str(tmp_path / "none.json"), *args],
            cwd=REPO,
            env={**env, **overrides},
            capture_output=True,
            text=True,
            timeout=120,
        )

    return call


def test_operator_steps_provision_find_push_delete(run: Any, api: Api, tmp_path: Path) -> None:
    """groups, provision (idempotent), datasets, push (with a bad row), delete-rows."""
    groups = run("groups")
    assert groups.returncode == 0, groups.stderr
    assert {"id": WORKSPACE_ID, "name": WORKSPACE_NAME} in json.loads(groups.stdout)

    name = f"Cli-{uuid.uuid4().hex[:6]}"
    seed = json.loads((REPO / "datasets" / "SalesMarketing.json").read_text())
    definition = tmp_path / f"{name}.json"
    definition.write_text(json.dumps({**seed, "name": name}))
    first = run("provision", str(definition), "--workspace", WORKSPACE_NAME)
    again = run("provision", str(definition), "--workspace", WORKSPACE_NAME)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    made, found = json.loads(first.stdout), json.loads(again.stdout)
    assert made["created"] is True and found["created"] is False and made["id"] == found["id"]

    listed = json.loads(run("datasets", "--workspace", WORKSPACE_ID).stdout)
    assert {"id": made["id"], "name": name} in listed

    rows = tmp_path / "rows.ndjson"
    good = [{"ProductID": i, "Product": f"P{i}", "IsCompete": "true"} for i in range(3)]
    rows.write_text("\n".join(json.dumps(r) for r in [*good, {"ProductID": "x"}]) + "\n")
    push = run(
        "push", str(rows), "--dataset", name, "--table", "Product", "--workspace", WORKSPACE_NAME
    )
    assert push.returncode == 1, push.stderr  # one row rejected
    result = json.loads(push.stdout)
    assert (result["sent"], result["rejected"], result["deadLettered"]) == (3, 1, 1)
    assert result["problems"][0]["index"] == 3 and result["deadLetterLocation"]
    stored = api.stored_rows(made["id"], "Product")
    assert [(r["ProductID"], r["IsCompete"]) for r in stored] == [(0, True), (1, True), (2, True)]

    deleted = run(
        "delete-rows", "--dataset", name, "--table", "Product", "--workspace", WORKSPACE_NAME
    )
    assert deleted.returncode == 0, deleted.stderr
    assert api.stored_rows(made["id"], "Product") == []


def test_a_bad_setting_is_named_and_exits_2(run: Any) -> None:
    """A malformed setting stops the command with exit code 2 and the setting's name."""
    result = run("groups", POWERBI_AUTH="password")
    assert result.returncode == 2
    assert "POWERBI_AUTH" in result.stderr and "Traceback" not in result.stderr


def test_no_token_or_secret_in_the_output(run: Any, api: Api) -> None:
    """The command's output and errors never carry the bearer token or the identity header."""
    result = run("push", "/nonexistent.json", "--dataset", "x", "--table", "y")
    assert result.returncode == 2 and "nonexistent" in result.stderr
    for output in (result.stdout, result.stderr):
        assert IDENTITY_HEADER not in output and api.token not in output


def test_values_only_in_local_settings_json_reach_the_libraries(
    run: Any, api: Api, tmp_path: Path
) -> None:
    """The identity endpoint given only in local.settings.json is used, as under the host
    (azure-identity reads it from the process environment, not from the app's settings)."""
    settings = tmp_path / "local.settings.json"
    settings.write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {
                    "IDENTITY_ENDPOINT": f"{api.emulator.base}/msi/token",
                    "IDENTITY_HEADER": IDENTITY_HEADER,
                },
            }
        )
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_")}
    result = subprocess.run(
        [sys.executable, "-m", "shared", "--settings", str(settings), "groups"],
        cwd=REPO,
        env={
            **environment,
            "POWERBI_API_URL": api.emulator.base,
            "POWERBI_AUTH": "managed_identity",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert {"id": WORKSPACE_ID, "name": WORKSPACE_NAME} in json.loads(result.stdout)


def test_infer_prints_or_writes_a_definition_and_profile(run: Any, tmp_path: Path) -> None:
    data = tmp_path / "obs.csv"
    data.write_text("station;day;temp\nKSEA;Jan 1 2000;1,5\nKPDX;Jan 2 2000;NA\n")
    out = tmp_path / "datasets"

    printed = run("infer", str(data), "--dataset", "Weather", "--table", "Obs")
    written = run("infer", str(data), "--dataset", "Weather", "--table", "Obs", "--out", str(out))
    missing = run("infer", str(tmp_path / "nope.csv"), "--dataset", "W", "--table", "T")

    assert printed.returncode == 0, printed.stderr
    report = json.loads(printed.stdout)
    assert report["definition"]["tables"][0]["columns"] == [
        {"name": "station", "dataType": "String"},
        {"name": "day", "dataType": "DateTime"},
        {"name": "temp", "dataType": "Double"},
    ]
    assert "note: delimiter ';'" in printed.stderr
    assert written.returncode == 0, written.stderr
    assert json.loads((out / "Weather.json").read_text()) == report["definition"]
    assert json.loads((out / "Weather.profile.json").read_text()) == report["profile"]
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def _product_dataset(run: Any, tmp_path: Path) -> tuple[str, str]:
    name = f"Cli-{uuid.uuid4().hex[:6]}"
    seed = json.loads((REPO / "datasets" / "SalesMarketing.json").read_text())
    definition = tmp_path / f"{name}.json"
    definition.write_text(json.dumps({**seed, "name": name}))
    made = run("provision", str(definition), "--workspace", WORKSPACE_NAME)
    assert made.returncode == 0, made.stderr
    return name, json.loads(made.stdout)["id"]


def test_push_reads_csv_and_gzip_through_the_blob_readers(
    run: Any, api: Api, tmp_path: Path
) -> None:
    """A gzipped CSV with a quote opened on line 101 and never closed: the 99 rows before it
    stored, and the rest of the file (one item to a CSV reader) dead-lettered with the lines it
    took named, as for an uploaded blob; exit 1."""
    name, dataset_id = _product_dataset(run, tmp_path)
    lines = ["ProductID,Product,IsCompete"]
    lines += [f"{i},P{i},true" for i in range(1, 5001)]
    lines.insert(100, '9999,"unclosed,true')
    data = tmp_path / "products.csv.gz"
    data.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))

    push = run(
        "push", str(data), "--dataset", name, "--table", "Product", "--workspace", WORKSPACE_NAME
    )

    assert push.returncode == 1, push.stderr
    result = json.loads(push.stdout)
    assert (result["received"], result["sent"], result["rejected"]) == (100, 99, 1)
    assert result["deadLettered"] == 1
    (problem,) = result["problems"]
    assert "quoted field opened on line 101 runs to line 5002" in problem["reason"]
    stored = {r["ProductID"] for r in api.stored_rows(dataset_id, "Product")}
    assert stored == set(range(1, 100))
    assert "rows done" not in push.stderr  # not a terminal: no progress line


def test_push_shows_progress_on_a_terminal(api: Api, azurite: Azurite, tmp_path: Path) -> None:
    """With standard error on a terminal (a pty), a long push rewrites one progress line."""
    import pty
    import select

    name = f"Cli-{uuid.uuid4().hex[:6]}"
    seed = json.loads((REPO / "datasets" / "SalesMarketing.json").read_text())
    definitions = tmp_path / "datasets"
    definitions.mkdir()
    (definitions / f"{name}.json").write_text(json.dumps({**seed, "name": name}))
    data = tmp_path / "rows.ndjson"
    data.write_text(
        "".join(json.dumps({"ProductID": i, "Product": f"P{i}"}) + "\n" for i in range(30_000))
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POWERBI_", "IDENTITY_"))},
        "POWERBI_API_URL": api.emulator.base,
        "POWERBI_AUTH": "managed_identity",
        "IDENTITY_ENDPOINT": f"{api.emulator.base}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "DATASETS_DIR": str(definitions),
        "AzureWebJobsStorage": azurite.connection_string,
    }
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared",
            "--settings",
            str(tmp_path / "none.json"),
            "push",
            str(data),
            "--dataset",
            name,
            "--table",
            "Product",
            "--workspace",
            WORKSPACE_NAME,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    shown = b""
    while True:  # until the process closes the terminal (bounded by the wait below)
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        shown += chunk
    out, _ = process.communicate(timeout=120)
    os.close(leader)

    assert process.returncode == 0, shown.decode(errors="replace")
    assert json.loads(out)["sent"] == 30_000
    text = shown.decode()
    assert "30,000 rows done (30,000 sent, 0 rejected)" in text and "rows/s" in text
    assert "\r" in text
    assert text.count("rows done") == 3  # one rewrite per acknowledged Add Rows (3 POSTs)
