"""``infer``: a definition and a profile from a sample of a real-world file
(shared/cli/infer.py). Every file here is written by the test, each with the quirks of a kind
of source: R and pandas exports, European Excel, database dumps, spreadsheets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from shared.cli.infer import Inference, InferError, infer, read_sample, write
from shared.engine.profile import compile_profile, load_profiles
from shared.engine.schema import DatasetDefinition, load_definitions


def _infer(tmp_path: Path, name: str, content: bytes) -> Inference:
    path = tmp_path / name
    path.write_bytes(content)
    sample, truncated = read_sample(path)
    return infer(sample, name, "DS", "T", truncated=truncated)


def _types(found: Inference) -> dict[str, str]:
    return {c["name"]: c["dataType"] for c in found.definition["tables"][0]["columns"]}


def _entry(found: Inference) -> dict[str, Any]:
    entry: dict[str, Any] = found.profile["tables"]["T"]
    return entry


def test_an_r_export_with_na_and_month_names(tmp_path: Path) -> None:
    found = _infer(
        tmp_path,
        "weather.csv",
        b'"origin","time_hour","temp","wind_gust","precip"\n'
        b'"EWR",Jan 1 2013,39.02,NA,0\n'
        b'"EWR",Jan 2 2013,NA,20.7,0.5\n'
        b'"JFK",Dec 31 2013,35.6,NA,0\n',
    )

    assert _types(found) == {
        "origin": "String",
        "time_hour": "DateTime",
        "temp": "Double",
        "wind_gust": "Double",
        "precip": "Double",
    }
    assert _entry(found)["columns"]["time_hour"] == {"dateFormats": ["MMM d yyyy"]}
    assert "nullTokens" not in _entry(found)  # NA is a default token
    assert found.rows_sampled == 3


def test_slash_dates_ymd_and_an_ambiguous_day_month_is_noted(tmp_path: Path) -> None:
    found = _infer(tmp_path, "a.csv", b"day,when\n2012/01/01,01/02/2020\n2012/01/02,03/04/2020\n")

    assert _entry(found)["columns"]["day"] == {"dateFormats": ["yyyy/MM/dd"]}
    assert _entry(found)["columns"]["when"] == {"dateFormats": ["MM/dd/yyyy"]}
    assert any("when" in note and "dd/MM/yyyy" in note for note in found.notes)


def test_a_day_above_twelve_tells_day_first_dates_apart(tmp_path: Path) -> None:
    found = _infer(tmp_path, "a.csv", b"when\n01/02/2020\n25/12/2020\n")

    assert _entry(found)["columns"]["when"] == {"dateFormats": ["dd/MM/yyyy"]}


def test_european_excel_semicolons_decimal_commas_and_cp1252(tmp_path: Path) -> None:
    found = _infer(
        tmp_path,
        "umsatz.csv",
        "Stadt;Betrag;Menge;Datum\nKöln;1.234,50;1.000;31.12.2020\nMünchen;-7,25;12;01.01.2021\n".encode(
            "cp1252"
        ),
    )

    assert _types(found) == {
        "Stadt": "String",
        "Betrag": "Double",
        "Menge": "Int64",
        "Datum": "DateTime",
    }
    entry = _entry(found)
    assert entry["encoding"] == "cp1252"
    assert entry["csv"] == {"delimiter": ";"}
    assert entry["columns"]["Betrag"] == {"decimalSeparator": ",", "thousandsSeparator": "."}
    assert entry["columns"]["Menge"] == {"decimalSeparator": ",", "thousandsSeparator": "."}
    assert entry["columns"]["Datum"] == {"dateFormats": ["dd.MM.yyyy"]}


def test_database_nulls_and_spreadsheet_booleans(tmp_path: Path) -> None:
    found = _infer(
        tmp_path,
        "dump.tsv.csv",
        b"id\tactive\tscore\tnote\n1\tY\t\\N\tNULL\n2\tN\t3.5\t-\n3\tY\t-\thello\n",
    )

    assert _types(found) == {
        "id": "Int64",
        "active": "Boolean",
        "score": "Double",
        "note": "String",
    }
    entry = _entry(found)
    assert entry["csv"] == {"delimiter": "\t"}
    assert entry["columns"]["active"] == {"trueWords": ["y"], "falseWords": ["n"]}
    assert set(entry["nullTokens"]) >= {"-", "\\N", "NULL", "NA", ""}  # "-" met in score
    # A database's null marker in a text column is null there too; "-" is not (it may be text).
    assert entry["columns"]["note"] == {"nullTokens": ["NULL"]}
    assert any("note: NULL read as null in this text column" in n for n in found.notes)


def test_codes_with_leading_zeros_stay_text(tmp_path: Path) -> None:
    found = _infer(tmp_path, "zip.csv", b"zip,n\n02134,1\n10001,0\n")

    assert _types(found) == {"zip": "String", "n": "Int64"}
    assert any("leading zeros" in note for note in found.notes)
    assert any("only 0 and 1" in note for note in found.notes)


def test_no_header_row(tmp_path: Path) -> None:
    found = _infer(tmp_path, "raw.csv", b"1,2020-01-01,3.5\n2,2020-01-02,4\n")

    assert _types(found) == {"Column1": "Int64", "Column2": "DateTime", "Column3": "Double"}
    assert _entry(found)["csv"] == {
        "header": False,
        "columnNames": ["Column1", "Column2", "Column3"],
    }


def test_gzipped_ndjson_with_json_types(tmp_path: Path) -> None:
    lines = [
        {"id": 1, "ok": True, "price": 1.5, "at": "2020-01-01T00:00:00Z", "tag": "a"},
        {"id": 2, "ok": False, "price": 2, "at": "2020-01-02T10:00:00+01:00", "tag": None},
    ]
    content = gzip.compress("\n".join(json.dumps(x) for x in lines).encode())
    found = _infer(tmp_path, "events.ndjson.gz", content)

    assert found.kind == "ndjson"
    assert _types(found) == {
        "id": "Int64",
        "ok": "Boolean",
        "price": "Double",
        "at": "DateTime",
        "tag": "String",
    }


def test_a_json_array_cut_by_the_sample_keeps_its_whole_rows(tmp_path: Path) -> None:
    rows = [{"n": i, "s": "x" * 50} for i in range(50_000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows))
    sample, truncated = read_sample(path, limit=100_000)
    found = infer(sample, "big.json", "DS", "T", truncated=truncated)

    assert truncated
    assert _types(found) == {"n": "Int64", "s": "String"}
    assert 1_000 < found.rows_sampled < 50_000


def test_utf16_with_bom(tmp_path: Path) -> None:
    found = _infer(tmp_path, "u.csv", "name,qty\nÄpfel,3\n".encode("utf-16"))

    assert _types(found) == {"name": "String", "qty": "Int64"}
    assert "encoding" not in _entry(found)  # the BOM says it


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InferError, match="no rows"):
        _infer(tmp_path, "empty.csv", b"")


def test_what_infer_writes_is_a_valid_definition_and_profile(tmp_path: Path) -> None:
    """The output is read back by the same loaders the app uses, and a second table is added
    to the existing definition of the dataset."""
    out = tmp_path / "datasets"
    first = _infer(tmp_path, "a.csv", b"a;b\n1,5;Jan 1 2000\n")
    write(first, out)
    second = infer(b"x,y\n1,2\n", "b.csv", "DS", "U")
    write(second, out)

    (definition,) = load_definitions(out).values()
    profiles = load_profiles(out)
    assert isinstance(definition, DatasetDefinition)
    assert list(definition.tables) == ["T", "U"]
    for table, entry in profiles["DS"].items():
        compile_profile(definition.tables[table], entry, "out")  # raises if unusable
    with pytest.raises(InferError, match="other columns"):
        write(infer(b"z\n1\n", "c.csv", "DS", "U"), out)


def test_title_lines_above_the_table_are_skipped(tmp_path: Path) -> None:
    """A report's title and a note above the header have fewer fields than the table: they
    are skipped (``csv.skipLines``) and said; a file that starts with its header skips
    nothing."""
    found = _infer(
        tmp_path,
        "report.csv",
        b"Station report\ngenerated by the logger\nSTATION|Temp|Day\nKSEA|1.5|2020-01-02\n"
        b"KPDX|NA|2020-01-03\n",
    )
    plain = _infer(tmp_path, "plain.csv", b"a,b\n1,2\n")

    assert _types(found) == {"STATION": "String", "Temp": "Double", "Day": "DateTime"}
    assert _entry(found)["csv"] == {"delimiter": "|", "skipLines": 2}
    assert any("first 2 line(s)" in note for note in found.notes)
    assert "csv" not in _entry(plain)
