"""Real-world files load as their owners meant them (issue 14).

Small files written here carry the quirks of files from R, pandas, European Excel, database
exports and spreadsheets: ``NA`` for missing numbers, ``Jan 1 2000`` and ``2012/01/01`` dates,
``;`` and decimal commas in cp1252, tab-separated ``\\N``/``NULL`` with Unix times, UTF-16 with
``yes``/``Y``/``1`` booleans and thousands separators, title lines above a header, renamed and
ignored columns, constants and derived columns. Each goes through the blob path, the HTTP routes
and the command line, under a profile declared beside its definition (or given per blob, per
request), and is read back from the emulator. Then ``infer`` on each file, and the upload with
nothing edited: every row stored, values as meant.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.emulator.conftest import IDENTITY_HEADER, REPO, WORKSPACE_ID, Api
from tests.integration.test_blob_pipeline import Files, files, wait_for
from tests.integration.test_devhost import Devhost

__all__ = ["files"]  # the fixture, imported for these tests


@dataclass(frozen=True)
class Quirky:
    """A file as its owner wrote it, the table it is for, the profile that reads it, and the
    rows the owner meant (the columns checked; sorted by ``key``)."""

    table: str
    file: str
    data: bytes
    columns: dict[str, str]
    profile: dict[str, Any]
    key: str
    meant: list[dict[str, Any]]


WEATHER = Quirky(  # R's write.csv: NA for missing values, dates with month names
    "Obs",
    "weather.csv",
    b"station,date,temp,wind,notes\n"
    b"KSEA,Jan 1 2000,NA,5.2,NA\n"
    b"KPDX,Feb 29 2000,12.5,NA,windy\n"
    b"KBFI,Dec 31 1999,-3.25,0,calm\n",
    {
        "station": "String",
        "date": "DateTime",
        "temp": "Double",
        "wind": "Double",
        "notes": "String",
    },
    {"dateFormats": ["MMM d yyyy"]},
    "station",
    [
        {"station": "KBFI", "date": "1999-12-31T00:00:00.000Z", "temp": -3.25, "wind": 0.0},
        {"station": "KPDX", "date": "2000-02-29T00:00:00.000Z", "temp": 12.5, "wind": None},
        # "NA" is null in a number column, and stays text in a text column (a name, a note).
        {"station": "KSEA", "date": "2000-01-01T00:00:00.000Z", "temp": None, "notes": "NA"},
    ],
)
SLASHED = Quirky(  # yyyy/MM/dd dates
    "Orders",
    "slashed.csv",
    b"id,when,amount\n1,2012/01/01,10\n2,2012/12/31,NA\n3,2013/02/28,7\n",
    {"id": "Int64", "when": "DateTime", "amount": "Int64"},
    {"dateFormats": ["yyyy/MM/dd"]},
    "id",
    [
        {"id": 1, "when": "2012-01-01T00:00:00.000Z", "amount": 10},
        {"id": 2, "when": "2012-12-31T00:00:00.000Z", "amount": None},
        {"id": 3, "when": "2013-02-28T00:00:00.000Z", "amount": 7},
    ],
)
EUROPEAN = Quirky(  # German Excel: cp1252, ';', decimal comma, '.' thousands, local time
    "Umsatz",
    "european.csv",
    "Ort;Datum;Temperatur;Umsatz\n"
    "Köln;31.12.1999 23:30;-3,5;1.234,50\n"
    "München;01.07.2000 12:00;NA;12,00\n"
    "Zürich;15.03.2001 08:15;21,25;1.000.000,00\n".encode("cp1252"),
    {"Ort": "String", "Datum": "DateTime", "Temperatur": "Double", "Umsatz": "Double"},
    {
        "encoding": "cp1252",
        "csv": {"delimiter": ";"},
        "dateFormats": ["dd.MM.yyyy HH:mm"],
        "timeZone": "Europe/Berlin",
        "decimalSeparator": ",",
        "thousandsSeparator": ".",
    },
    "Ort",
    [
        {"Ort": "Köln", "Datum": "1999-12-31T22:30:00.000Z", "Temperatur": -3.5, "Umsatz": 1234.5},
        {"Ort": "München", "Datum": "2000-07-01T10:00:00.000Z", "Temperatur": None},
        {"Ort": "Zürich", "Datum": "2001-03-15T07:15:00.000Z", "Umsatz": 1000000.0},
    ],
)
EXPORT = Quirky(  # a database export: tabs, \N and NULL, Unix seconds and milliseconds
    "Users",
    "export.tsv",
    b"id\tname\tcreated\tupdated_ms\tscore\n"
    b"1\tAlice\t1700000000\t1700000000123\t\\N\n"
    b"2\tNULL\t1700003600\t1700003600456\t3.5\n"
    b"3\tBob\t1700007200\t1700007200789\tNULL\n",
    {
        "id": "Int64",
        "name": "String",
        "created": "DateTime",
        "updated": "DateTime",
        "score": "Double",
    },
    {
        "columns": {
            "name": {"nullTokens": ["NULL"]},
            "created": {"dateFormats": ["unixSeconds"]},
            "updated": {"from": "updated_ms", "dateFormats": ["unixMilliseconds"]},
        }
    },
    "id",
    [
        {
            "id": 1,
            "name": "Alice",
            "created": "2023-11-14T22:13:20.000Z",
            "updated": "2023-11-14T22:13:20.123Z",
            "score": None,
        },
        # Power BI keeps times of day in 1/300 s (the emulator too): .456 is stored as .457.
        {"id": 2, "name": None, "updated": "2023-11-14T23:13:20.457Z", "score": 3.5},
        {"id": 3, "name": "Bob", "created": "2023-11-15T00:13:20.000Z", "score": None},
    ],
)
SHEET = Quirky(  # a spreadsheet saved as "Unicode text": UTF-16 with BOM, words for booleans
    "Items",
    "sheet.csv",
    b"\xff\xfe"
    + (
        'Item,Active,Member,Count,Revenue\nWidget,yes,Y,1,"1,234"\n'
        'Gadget,no,N,0,"12,345,678"\nGizmo,YES,n,1,999\n'
    ).encode("utf-16-le"),
    {
        "Item": "String",
        "Active": "Boolean",
        "Member": "Boolean",
        "Count": "Boolean",
        "Revenue": "Int64",
    },
    {"trueWords": ["yes", "y", "1"], "falseWords": ["no", "n", "0"], "thousandsSeparator": ","},
    "Item",
    [
        {"Item": "Gadget", "Active": False, "Member": False, "Count": False, "Revenue": 12345678},
        {"Item": "Gizmo", "Active": True, "Member": False, "Count": True, "Revenue": 999},
        {"Item": "Widget", "Active": True, "Member": True, "Count": True, "Revenue": 1234},
    ],
)
MAPPED = Quirky(  # title lines, '|', other names and case, a column to drop, filled columns
    "Stations",
    "mapped.csv",
    b"Station report\ngenerated by the logger\n"
    b"STATION|Temperature C|comment|Day\n"
    b"KSEA|1.5|ok|2020-01-02\n"
    b"KPDX|NA|sensor down|2020-01-03\n",
    {
        "Station": "String",
        "Temp": "Double",
        "Day": "DateTime",
        "Country": "String",
        "Source": "String",
        "Line": "Int64",
        "LoadedAt": "DateTime",
    },
    {
        "csv": {"skipLines": 2},
        "matchCase": False,
        "ignore": ["Comment"],
        "columns": {
            "Temp": {"from": "temperature c"},
            "Country": {"constant": "US"},
            "Source": {"derived": "sourceFile"},
            "Line": {"derived": "lineNumber"},
            "LoadedAt": {"derived": "ingestionTime"},
        },
    },
    "Station",
    [
        {"Station": "KPDX", "Temp": None, "Day": "2020-01-03T00:00:00.000Z", "Line": 5},
        {"Station": "KSEA", "Temp": 1.5, "Day": "2020-01-02T00:00:00.000Z", "Line": 4},
    ],
)
NO_HEADER = Quirky(  # no header row: the profile names the columns
    "Readings",
    "noheader.csv",
    b"KSEA,1.5\nKPDX,N/A\n",
    {"Station": "String", "Temp": "Double"},
    {"csv": {"header": False, "columnNames": ["Station", "Temp"]}},
    "Station",
    [{"Station": "KPDX", "Temp": None}, {"Station": "KSEA", "Temp": 1.5}],
)
EVENTS = Quirky(  # NDJSON with epoch milliseconds as numbers and yes/no words
    "Events",
    "events.ndjson",
    b'{"id": 1, "at": 1700000000123, "ok": "yes", "v": null}\n'
    b'{"id": 2, "at": 1700000001000, "ok": "no", "v": 2.5}\n',
    {"id": "Int64", "at": "DateTime", "ok": "Boolean", "v": "Double"},
    {
        "columns": {
            "at": {"dateFormats": ["unixMilliseconds"]},
            "ok": {"trueWords": ["yes"], "falseWords": ["no"]},
        }
    },
    "id",
    [
        {"id": 1, "at": "2023-11-14T22:13:20.123Z", "ok": True, "v": None},
        {"id": 2, "at": "2023-11-14T22:13:21.000Z", "ok": False, "v": 2.5},
    ],
)
DAYS = Quirky(  # gzipped JSON with month names and NA in a number column
    "Days",
    "days.json.gz",
    gzip.compress(
        json.dumps(
            {
                "rows": [
                    {"id": 1, "day": "Jan 5 2021", "n": "NA"},
                    {"id": 2, "day": "Mar 10 2021", "n": 4},
                ]
            }
        ).encode()
    ),
    {"id": "Int64", "day": "DateTime", "n": "Int64"},
    {"dateFormats": ["MMM d yyyy"]},
    "id",
    [
        {"id": 1, "day": "2021-01-05T00:00:00.000Z", "n": None},
        {"id": 2, "day": "2021-03-10T00:00:00.000Z", "n": 4},
    ],
)
QUIRKY = [WEATHER, SLASHED, EUROPEAN, EXPORT, SHEET, MAPPED, NO_HEADER, EVENTS, DAYS]
#: The column that tells rows apart, where ``infer`` names it otherwise than the hand-written
#: definition (the file's own header, or a name for a file without one).
INFERRED_KEY = {MAPPED.file: "STATION", NO_HEADER.file: "Column1"}


def write_dataset(directory: Path, name: str, cases: list[Quirky], profiles: bool = True) -> None:
    """``<name>.json`` (a table per case) and, with ``profiles``, ``<name>.profile.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = [
        {"name": c.table, "columns": [{"name": k, "dataType": t} for k, t in c.columns.items()]}
        for c in cases
    ]
    (directory / f"{name}.json").write_text(json.dumps({"name": name, "tables": tables}))
    if profiles:
        body = {"tables": {c.table: c.profile for c in cases}}
        (directory / f"{name}.profile.json").write_text(json.dumps(body))


def dataset_id(api: Api, name: str) -> str | None:
    found = api.request("GET", f"{api.prefix(WORKSPACE_ID)}/datasets").json()["value"]
    return next((d["id"] for d in found if d["name"] == name), None)


def stored(api: Api, name: str, table: str) -> list[dict[str, Any]]:
    found = dataset_id(api, name)
    return api.stored_rows(found, table) if found else []


def assert_meant(rows: list[dict[str, Any]], case: Quirky) -> None:
    """The stored rows are the rows the owner meant (the columns ``meant`` names)."""
    rows = sorted(rows, key=lambda row: str(row[case.key]))
    assert len(rows) == len(case.meant)
    assert [
        {k: row.get(k) for k in meant} for row, meant in zip(rows, case.meant, strict=True)
    ] == case.meant


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# -- the blob path ------------------------------------------------------------------------------


def test_each_quirky_file_loads_through_the_blob_path_as_meant(
    api: Api, files: Files, tmp_path: Path
) -> None:
    """Every file above, uploaded under its declared profile: every row stored with the values
    its owner meant; the derived columns say where and when each row came from."""
    name = unique("Quirks")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, QUIRKY)
    started = datetime.now(UTC)
    files.start(DATASETS_DIR=str(datasets))
    for case in QUIRKY:
        files.upload(f"{name}/{case.table}/{case.file}", case.data)

    for case in QUIRKY:
        wait_for(
            lambda case=case: len(stored(api, name, case.table)) == len(case.meant),  # type: ignore[misc]
            90,
            f"{case.file}'s rows",
        )
        assert_meant(stored(api, name, case.table), case)
    assert files.dead_letters() == []

    for row in stored(api, name, MAPPED.table):
        assert row["Country"] == "US"
        assert row["Source"].endswith(f"/{name}/{MAPPED.table}/{MAPPED.file}")
        loaded = datetime.fromisoformat(row["LoadedAt"].replace("Z", "+00:00"))
        assert started.replace(microsecond=0) <= loaded <= datetime.now(UTC)


def test_a_profiled_row_with_three_bad_columns_is_one_dead_letter_naming_all_three(
    api: Api, files: Files, tmp_path: Path
) -> None:
    """The European file with a row wrong in three columns (a 13th month, a word for a number,
    a thousands separator out of place): the good rows are stored as meant, the bad one is one
    dead letter naming each column by the file's own name, and why."""
    name = unique("Bad")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, [EUROPEAN])
    data = EUROPEAN.data + "Bonn;32.13.2000 10:00;warm;1.2.3\n".encode("cp1252")
    files.start(DATASETS_DIR=str(datasets))
    files.upload(f"{name}/{EUROPEAN.table}/bad.csv", data)

    wait_for(lambda: len(files.dead_letters()) == 1, 90, "the dead letter")
    wait_for(lambda: len(stored(api, name, EUROPEAN.table)) == 3, 60, "the good rows")
    assert_meant(stored(api, name, EUROPEAN.table), EUROPEAN)
    (letter,) = files.dead_letters()
    assert letter["index"] == 3 and letter["column"] == "Datum"
    assert letter["reason"].startswith("3 columns refused: Datum: ")
    assert "Temperatur: expected a number with ',' for decimals" in letter["reason"]
    assert (
        "Umsatz: expected a number with ',' for decimals and '.' for thousands, got '1.2.3'"
        in (letter["reason"])
    )


def test_a_blob_brings_its_own_profile_in_metadata(api: Api, files: Files, tmp_path: Path) -> None:
    """No profile declared: the weather file alone would be refused (its dates); its metadata
    ``profile`` reads it, and only it (the same file without metadata is refused row by row)."""
    name = unique("Meta")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, [WEATHER], profiles=False)
    files.start(DATASETS_DIR=str(datasets))
    files.ingest.upload_blob(
        f"{name}/{WEATHER.table}/with.csv",
        WEATHER.data,
        metadata={"profile": json.dumps(WEATHER.profile)},
    )
    wait_for(lambda: len(stored(api, name, WEATHER.table)) == 3, 90, "the rows")
    assert_meant(stored(api, name, WEATHER.table), WEATHER)

    files.upload(f"{name}/{WEATHER.table}/without.csv", WEATHER.data)
    wait_for(lambda: len(files.dead_letters()) == 3, 90, "three dead letters")
    assert all("expected an ISO 8601" in d["reason"] for d in files.dead_letters())
    assert len(stored(api, name, WEATHER.table)) == 3


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("metadata", "the 'profile' metadata of"),
        ("declared", ".profile.json"),
    ],
)
def test_a_bad_profile_dead_letters_the_blob_whole_before_any_row_moves(
    api: Api, files: Files, tmp_path: Path, where: str, expected: str
) -> None:
    """A profile with a misspelt option (in the blob's metadata, or in the declared file): the
    blob is one dead letter naming the profile and the field, and no row is stored."""
    name = unique("Refused")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, [WEATHER], profiles=False)
    bad = {"dateFormat": ["MMM d yyyy"]}
    metadata = {}
    if where == "metadata":
        metadata = {"profile": json.dumps(bad)}
    else:
        (datasets / f"{name}.profile.json").write_text(json.dumps({"tables": {"Obs": bad}}))
    files.start(DATASETS_DIR=str(datasets))
    files.ingest.upload_blob(f"{name}/Obs/w.csv", WEATHER.data, metadata=metadata)

    wait_for(lambda: len(files.dead_letters()) == 1, 90, "the dead letter")
    (letter,) = files.dead_letters()
    assert expected in letter["reason"]
    assert "tables.Obs.dateFormat: unknown option (did you mean 'dateFormats'?)" in letter["reason"]
    assert letter["row"]["blob"].endswith(f"/{name}/Obs/w.csv")
    assert stored(api, name, "Obs") == []


# -- the HTTP routes ----------------------------------------------------------------------------


def post(host: Devhost, path: str, body: Any, **params: str) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(f"{host.base}/api/{path}", json=body, params=params, timeout=60)


def test_http_routes_read_rows_under_declared_and_per_request_profiles(
    api: Api, files: Files, tmp_path: Path
) -> None:
    """Power BI's Add Rows route with ``?profile=``, an envelope with its own ``profile``, and
    a declared profile with no override: each stores the rows as meant. The same rows through
    the queue (``?mode=queue``) keep their envelope's profile."""
    name = unique("Http")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, [WEATHER, SLASHED, EUROPEAN], profiles=False)
    (datasets / f"{name}.profile.json").write_text(json.dumps({"tables": {"Obs": WEATHER.profile}}))
    host = files.start(DATASETS_DIR=str(datasets))

    declared = post(
        host,
        f"datasets/{name}/tables/Obs/rows",
        {"rows": [{"station": "KSEA", "date": "Jan 1 2000", "temp": "NA", "notes": "NA"}]},
    )
    query = post(
        host,
        f"datasets/{name}/tables/Orders/rows",
        {"rows": [{"id": 1, "when": "2012/01/01", "amount": "NA"}]},
        profile=json.dumps(SLASHED.profile),
    )
    german = {k: v for k, v in EUROPEAN.profile.items() if k not in ("encoding", "csv")}
    envelope = post(
        host,
        "rows",
        {
            "dataset": name,
            "table": "Umsatz",
            "profile": german,
            "rows": [{"Ort": "Köln", "Datum": "31.12.1999 23:30", "Temperatur": "-3,5"}],
        },
    )
    queued = post(
        host,
        "rows",
        {
            "dataset": name,
            "table": "Umsatz",
            "profile": german,
            "rows": [{"Ort": "Zürich", "Umsatz": "1.000.000,00"}],
        },
        mode="queue",
    )

    for answer in (declared, query, envelope):
        assert answer.status_code == 200, answer.text
        assert answer.json()["sent"] == 1
    assert queued.status_code == 202, queued.text
    assert {k: stored(api, name, "Obs")[0][k] for k in ("date", "temp", "notes")} == {
        "date": "2000-01-01T00:00:00.000Z",
        "temp": None,
        "notes": "NA",
    }
    assert {k: stored(api, name, "Orders")[0][k] for k in ("when", "amount")} == {
        "when": "2012-01-01T00:00:00.000Z",
        "amount": None,
    }
    wait_for(lambda: len(stored(api, name, "Umsatz")) == 2, 60, "the queued row")
    by_place = {row["Ort"]: row for row in stored(api, name, "Umsatz")}
    assert by_place["Köln"]["Datum"] == "1999-12-31T22:30:00.000Z"
    assert by_place["Köln"]["Temperatur"] == -3.5
    assert by_place["Zürich"]["Umsatz"] == 1000000.0


def test_http_refuses_a_bad_profile_with_a_400_and_pushes_nothing(
    api: Api, files: Files, tmp_path: Path
) -> None:
    """A pattern that does not compile in ``?profile=``, a mapping to a column the table lacks
    in an envelope, a misspelt option in the declared file: 400 ``InvalidProfile`` naming
    where and the field; nothing stored, nothing queued."""
    name = unique("HttpBad")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, [WEATHER, SLASHED], profiles=False)
    (datasets / f"{name}.profile.json").write_text(
        json.dumps({"tables": {"Orders": {"nulTokens": ["-"]}}})
    )
    host = files.start(DATASETS_DIR=str(datasets))
    row = {"station": "KSEA", "date": "Jan 1 2000"}

    pattern = post(
        host,
        f"datasets/{name}/tables/Obs/rows",
        {"rows": [row]},
        profile=json.dumps({"dateFormats": ["MMM q yyyy"]}),
    )
    mapping = post(
        host,
        "rows",
        {
            "dataset": name,
            "table": "Obs",
            "profile": {"columns": {"Temp": {"from": "t"}}},
            "rows": [row],
        },
        mode="queue",
    )
    declared = post(host, f"datasets/{name}/tables/Orders/rows", {"rows": [{"id": 1}]})
    not_json = post(host, f"datasets/{name}/tables/Obs/rows", {"rows": [row]}, profile="{dates")

    answers = {
        "pattern": (pattern, "query.profile", "tables.Obs.dateFormats[0]"),
        "mapping": (mapping, "body.profile", "tables.Obs.columns.Temp"),
        "declared": (declared, f"{name}.profile.json", "tables.Orders.nulTokens"),
        "not json": (not_json, "query.profile", "profile"),
    }
    for what, (answer, where, field) in answers.items():
        assert answer.status_code == 400, (what, answer.text)
        problem = answer.json()["error"]
        assert problem["code"] == "InvalidProfile", what
        assert problem["field"] == field, what
        assert where in problem["where"], what
    assert "'q' at position 5" in pattern.json()["error"]["message"]
    assert "has no column 'Temp' (did you mean 'temp'?)" in mapping.json()["error"]["message"]
    assert dataset_id(api, name) is None  # not even created: nothing moved


# -- the command line ---------------------------------------------------------------------------


def cli(api: Api, datasets: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POWERBI_", "AZURE_", "MSI_", "IDENTITY_", "DEADLETTER_"))
        and key not in ("AzureWebJobsStorage", "DATASETS_DIR")
    }
    env |= {
        "POWERBI_API_URL": api.emulator.base,
        "POWERBI_AUTH": "managed_identity",
        "IDENTITY_ENDPOINT": f"{api.emulator.base}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        "DATASETS_DIR": str(datasets),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return subprocess.run(
        [sys.executable, "-m", "shared", "--settings", str(tmp_path / "none.json"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_pushes_files_under_their_profiles(api: Api, tmp_path: Path) -> None:
    """``push`` reads each file through the blob path's readers under the declared profile, or
    a ``--profile`` given on the command line (JSON, or a file); a bad one is exit 2 with the
    field named, and nothing is sent."""
    name = unique("Cli")
    datasets = tmp_path / "datasets"
    write_dataset(datasets, name, [EUROPEAN, EXPORT, SHEET, WEATHER], profiles=False)
    (datasets / f"{name}.profile.json").write_text(
        json.dumps({"tables": {c.table: c.profile for c in (EUROPEAN, EXPORT, SHEET)}})
    )
    for case in (EUROPEAN, EXPORT, SHEET, WEATHER):
        (tmp_path / case.file).write_bytes(case.data)
    override = tmp_path / "weather.profile.json"
    override.write_text(json.dumps(WEATHER.profile))

    bad = cli(
        api,
        datasets,
        tmp_path,
        *("push", str(tmp_path / WEATHER.file), "--dataset", name, "--table", "Obs"),
        *("--profile", '{"timeZone": "Mars/Olympus"}'),
    )
    assert bad.returncode == 2, bad.stderr
    assert "--profile: tables.Obs.timeZone: unknown time zone 'Mars/Olympus'" in bad.stderr
    assert dataset_id(api, name) is None

    for case in (EUROPEAN, EXPORT, SHEET):
        done = cli(
            api,
            datasets,
            tmp_path,
            "push",
            str(tmp_path / case.file),
            "--dataset",
            name,
            "--table",
            case.table,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["sent"] == len(case.meant)
        assert_meant(stored(api, name, case.table), case)
    done = cli(
        api,
        datasets,
        tmp_path,
        *("push", str(tmp_path / WEATHER.file), "--dataset", name, "--table", "Obs"),
        *("--profile", str(override)),
    )
    assert done.returncode == 0, done.stderr
    assert_meant(stored(api, name, "Obs"), WEATHER)


# -- infer, then upload with nothing edited -----------------------------------------------------


def test_infer_then_upload_with_no_edit_stores_every_row_as_meant(
    api: Api, files: Files, tmp_path: Path
) -> None:
    """``infer --out`` on each file (one dataset per file), then the blob upload with nothing
    edited: every row stored, no dead letter; a ``NA`` number is null, ``Jan 1 2000`` is
    2000-01-01T00:00:00Z, decimal commas and thousands read, ``NULL`` and ``\\N`` are null,
    yes/no and Y/N are booleans, title lines skipped, a file without a header named."""
    datasets = tmp_path / "datasets"
    names = {case.file: unique("Inferred") for case in QUIRKY}
    for case in QUIRKY:
        source = tmp_path / case.file
        source.write_bytes(case.data)
        inferred = cli(
            api,
            datasets,
            tmp_path,
            *("infer", str(source), "--dataset", names[case.file], "--table", case.table),
            *("--out", str(datasets)),
        )
        assert inferred.returncode == 0, inferred.stderr
    files.start(DATASETS_DIR=str(datasets))
    for case in QUIRKY:
        files.upload(f"{names[case.file]}/{case.table}/{case.file}", case.data)

    for case in QUIRKY:
        name = names[case.file]
        wait_for(
            lambda name=name, case=case: len(stored(api, name, case.table)) == len(case.meant),  # type: ignore[misc]
            90,
            f"{case.file}'s rows",
        )
    assert files.dead_letters() == []

    def rows(case: Quirky) -> dict[str, dict[str, Any]]:
        key = INFERRED_KEY.get(case.file, case.key)
        return {str(r[key]): r for r in stored(api, names[case.file], case.table)}

    weather = rows(WEATHER)
    assert weather["KSEA"]["date"] == "2000-01-01T00:00:00.000Z"
    assert weather["KSEA"]["temp"] is None and weather["KSEA"]["notes"] == "NA"
    assert weather["KBFI"]["temp"] == -3.25
    assert rows(SLASHED)["2"]["when"] == "2012-12-31T00:00:00.000Z"
    assert rows(SLASHED)["2"]["amount"] is None
    european = rows(EUROPEAN)
    # infer cannot know the owner's time zone: naive times are taken as UTC (and noted).
    assert european["Köln"]["Datum"] == "1999-12-31T23:30:00.000Z"
    assert european["Köln"]["Umsatz"] == 1234.5 and european["München"]["Temperatur"] is None
    assert european["Zürich"]["Umsatz"] == 1000000.0
    export = rows(EXPORT)
    assert export["2"]["name"] is None and export["1"]["score"] is None
    assert export["3"]["score"] is None and export["2"]["score"] == 3.5
    sheet = rows(SHEET)
    assert sheet["Widget"]["Active"] is True and sheet["Gadget"]["Member"] is False
    assert sheet["Gizmo"]["Active"] is True and sheet["Widget"]["Revenue"] == 1234
    assert sheet["Gadget"]["Revenue"] == 12345678
    events = rows(EVENTS)
    assert events["1"]["ok"] is True and events["2"]["ok"] is False
    days = rows(DAYS)
    assert days["1"]["day"] == "2021-01-05T00:00:00.000Z" and days["1"]["n"] is None
    # The title lines are skipped; the file's own names (and case) are the columns.
    mapped = rows(MAPPED)
    assert mapped["KSEA"]["Temperature C"] == 1.5 and mapped["KPDX"]["Temperature C"] is None
    assert mapped["KPDX"]["Day"] == "2020-01-03T00:00:00.000Z"
    assert rows(NO_HEADER)["KPDX"]["Column2"] is None
