"""``python -m shared migrate``, run as a real process against the emulator's Kusto endpoints
(the real azure-kusto clients, the app's managed identity from the emulator) with queued
ingestion through Azurite: tables created from the definition, the routing file written, a
second run changes nothing, a conflicting KQL table is refused before any change, --dry-run
changes nothing, an unreachable Eventhouse is named; then a push through the Ingestor, routed
by the file migrate wrote, reaches both destinations."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.contracts import Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.eventhouse import EventhouseClient
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import Ingestor
from shared.engine.retry import RetryPolicy
from shared.engine.routing import load_routing
from shared.engine.schema import load_definitions
from shared.settings import Settings
from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, REPO, Api, EmulatorProcess
from tests.emulator.kusto_fixtures import start_kusto_emulator
from tests.integration.test_cli import app_environment
from tests.seed import product

DATABASE = "Sales"
FAST = RetryPolicy(max_attempts=8, base_delay=0.0, max_delay=0.0)


@pytest.fixture(scope="module")
def emulator(
    azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorProcess]:
    """Power BI and Kusto in one emulator; queued ingestion through Azurite."""
    process = start_kusto_emulator(
        azurite, tmp_path_factory.mktemp("migrate"), "--kusto-database", DATABASE
    )
    yield process
    process.stop()


@pytest.fixture
def kusto(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[EventhouseClient]:
    """A client of the test's own (the app's identity through the emulator's MSI endpoint)."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emulator.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    settings = Settings.from_env({"EVENTHOUSE_URI": emulator.base, "EVENTHOUSE_DATABASE": DATABASE})
    with EventhouseClient.from_settings(settings) as client:
        yield client


class Case:
    """A fresh dataset (the seed's SalesMarketing under a new name, with a second table) in a
    datasets folder of its own, and a KQL table prefix of its own (the emulator is shared)."""

    def __init__(self, emulator: EmulatorProcess, azurite: Azurite, tmp_path: Path) -> None:
        self.emulator = emulator
        self.api = Api(emulator)
        self.name = f"Mig{uuid.uuid4().hex[:6]}"
        self.prefix = f"M{uuid.uuid4().hex[:6]}_"
        self.folder = tmp_path / "datasets"
        self.folder.mkdir()
        seed = json.loads((REPO / "datasets" / "SalesMarketing.json").read_text())
        notes = {"name": "Notes", "columns": [{"name": "Text", "dataType": "String"}]}
        body = {**seed, "name": self.name, "tables": [*seed["tables"], notes]}
        (self.folder / f"{self.name}.json").write_text(json.dumps(body))
        self.routing = self.folder / f"{self.name}.destinations.json"
        self.routing.write_text(json.dumps({"eventhouse": {"table_prefix": self.prefix}}))
        self.env = app_environment(
            self.api,
            azurite,
            DATASETS_DIR=str(self.folder),
            EVENTHOUSE_URI=emulator.base,
            EVENTHOUSE_DATABASE=DATABASE,
        )
        self.settings_file = tmp_path / "none.json"

    def migrate(self, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        command = ["--settings", str(self.settings_file), "migrate", "--dataset", self.name]
        result = subprocess.run(
            [sys.executable, "-m", "shared", *command, *args],
            cwd=REPO,
            env={**self.env, **overrides},
            capture_output=True,
            text=True,
            timeout=120,
        )
        for output in (result.stdout, result.stderr):  # never a token nor the identity header
            assert "eyJ" not in output and IDENTITY_HEADER not in output
        return result

    def tables(self, kusto: EventhouseClient) -> set[str]:
        names = {str(r["TableName"]) for r in kusto.execute(".show tables", DATABASE)}
        return {n for n in names if n.startswith(self.prefix)}


@pytest.fixture
def case(emulator: EmulatorProcess, azurite: Azurite, tmp_path: Path) -> Case:
    return Case(emulator, azurite, tmp_path)


def columns(kusto: EventhouseClient, table: str) -> list[tuple[str, str]]:
    (row,) = kusto.execute(f".show table {table} schema as json", DATABASE)
    schema = json.loads(row["Schema"])
    return [(c["Name"], c["CslType"]) for c in schema["OrderedColumns"]]


def test_migrate_creates_the_tables_writes_the_file_and_twice_changes_nothing(
    case: Case, kusto: EventhouseClient
) -> None:
    first = case.migrate()
    written = case.routing.read_text()
    again = case.migrate("--json")

    assert first.returncode == 0, first.stderr
    product_table, notes_table = f"{case.prefix}Product", f"{case.prefix}Notes"
    assert case.tables(kusto) == {product_table, notes_table}
    assert columns(kusto, product_table) == [
        ("ProductID", "long"),
        ("Manufacturer", "string"),
        ("Category", "string"),
        ("Segment", "string"),
        ("Product", "string"),
        ("IsCompete", "bool"),
    ]
    mappings = kusto.execute(f".show table {product_table} ingestion json mappings", DATABASE)
    assert [m["Name"] for m in mappings] == ["powerbi_push_json"]
    assert json.loads(written) == {  # the prefix kept, both tables to both destinations
        "eventhouse": {"table_prefix": case.prefix},
        "tables": {"Product": ["powerbi", "eventhouse"], "Notes": ["powerbi", "eventhouse"]},
    }
    lines = first.stdout.splitlines()
    assert (
        lines[0]
        == f"Product -> Sales.{product_table}: created (6 columns), mapping powerbi_push_json"
    )
    assert (
        lines[1] == f"Notes -> Sales.{notes_table}: created (1 columns), mapping powerbi_push_json"
    )
    assert "written (Product: powerbi -> powerbi+eventhouse" in lines[2]
    assert lines[3].startswith("note: rows already in Power BI are not copied")

    assert again.returncode == 0, again.stderr
    assert case.routing.read_text() == written  # the same file, byte for byte
    report = json.loads(again.stdout)
    assert report["routing_changed"] is False and report["rows_copied"] == 0
    assert [t["existed"] for t in report["tables"]] == [True, True]
    assert [t["columns_added"] for t in report["tables"]] == [[], []]
    assert "exists with the definition's columns" in again.stderr  # progress beside JSON
    assert case.tables(kusto) == {product_table, notes_table}


def test_eventhouse_only_for_one_table_after_both(case: Case, kusto: EventhouseClient) -> None:
    """The last step of the move: one table to the Eventhouse only; the other keeps both."""
    assert case.migrate().returncode == 0
    switched = case.migrate("--tables", "Product", "--eventhouse-only")

    assert switched.returncode == 0, switched.stderr
    assert json.loads(case.routing.read_text())["tables"] == {
        "Product": ["eventhouse"],
        "Notes": ["powerbi", "eventhouse"],
    }
    assert "Product: powerbi+eventhouse -> eventhouse" in switched.stdout


def test_dry_run_changes_nothing(case: Case, kusto: EventhouseClient) -> None:
    before = case.routing.read_text()
    result = case.migrate("--dry-run", "--tables", "Product")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"Product -> Sales.{case.prefix}Product: would create (6 columns)"
    )
    assert "would write (Product: powerbi -> powerbi+eventhouse)" in result.stdout
    assert case.routing.read_text() == before
    assert case.tables(kusto) == set()


def test_a_kql_table_with_a_conflicting_column_is_refused_before_any_change(
    case: Case, kusto: EventhouseClient
) -> None:
    """ProductID already a string in the KQL table: exit 2, one line naming the column; the
    other table is not created and the routing file is not touched."""
    table = f"{case.prefix}Product"
    kusto.execute(f".create-merge table {table} (ProductID:string, Extra:int)", DATABASE)
    before = case.routing.read_text()

    result = case.migrate()

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert f"KQL table '{table}'" in result.stderr
    assert "column 'ProductID' is string in the KQL database, long in the definition" in (
        result.stderr
    )
    assert case.routing.read_text() == before
    assert case.tables(kusto) == {table}
    assert columns(kusto, table) == [("ProductID", "string"), ("Extra", "int")]


def test_missing_columns_are_added_to_an_existing_table(
    case: Case, kusto: EventhouseClient
) -> None:
    table = f"{case.prefix}Product"
    kusto.execute(f".create-merge table {table} (ProductID:long, Note:string)", DATABASE)

    result = case.migrate("--tables", "Product")

    assert result.returncode == 0, result.stderr
    assert "exists; added column(s) Manufacturer, Category, Segment, Product, IsCompete" in (
        result.stdout
    )
    assert [c for c, _ in columns(kusto, table)] == [
        "ProductID",
        "Note",
        "Manufacturer",
        "Category",
        "Segment",
        "Product",
        "IsCompete",
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"EVENTHOUSE_URI": ""}, "migrate: EVENTHOUSE_URI is not set"),
        ({"EVENTHOUSE_DATABASE": "Nowhere"}, "migrate: database 'Nowhere' does not exist"),
        ({}, "is unreachable"),
    ],
)
def test_clear_errors_exit_2_with_one_line(
    case: Case, overrides: dict[str, str], expected: str
) -> None:
    if not overrides:  # a port nothing listens on
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            overrides = {"EVENTHOUSE_URI": f"http://127.0.0.1:{probe.getsockname()[1]}"}
    before = case.routing.read_text()

    result = case.migrate(**overrides)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert case.routing.read_text() == before


def test_after_migrate_a_push_reaches_both_destinations(
    case: Case, kusto: EventhouseClient
) -> None:
    """The file migrate wrote, loaded as the runtime loads it, routes a push to Power BI and
    the Eventhouse: every row in each."""
    assert case.migrate("--tables", "Product").returncode == 0
    settings = Settings.from_env(
        {
            "DATASETS_DIR": str(case.folder),
            "EVENTHOUSE_URI": case.emulator.base,
            "EVENTHOUSE_DATABASE": DATABASE,
        }
    )
    definitions = load_definitions(case.folder)
    ingestor = Ingestor(
        PowerBIClient(case.emulator.base, StaticTokenProvider(case.api.token), retry=FAST),
        definitions=definitions,
        routing=load_routing(case.folder, definitions, settings),
        eventhouse=kusto,
        retry=FAST,
    )

    result = ingestor.push(Target(case.name, "Product"), [product(i) for i in range(1_500)])

    assert set(result.destinations) == {"powerbi", "eventhouse"}
    assert [result.destinations[d].sent for d in ("powerbi", "eventhouse")] == [1_500, 1_500]
    dataset_id = result.destinations["powerbi"].dataset_id
    assert dataset_id
    stored = case.api.stored_rows(dataset_id, "Product")
    assert sorted(r["ProductID"] for r in stored) == list(range(1_500))
    requests.post(f"{case.emulator.base}/_emulator/kusto/flush", timeout=60).raise_for_status()
    table = f"{case.prefix}Product"
    back: list[dict[str, Any]] = kusto.rows(table, 2_000)
    assert sorted(int(r["ProductID"]) for r in back) == list(range(1_500))
    assert kusto.count(table) == 1_500
