"""Ingest profiles: read, checked against the table, compiled (shared/engine/profile.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.engine.profile import (
    CsvDialect,
    ProfileError,
    compile_profile,
    load_profiles,
    merge,
    parse_override,
    read_profile,
)
from shared.engine.schema import Column, TableSchema
from shared.engine.textvalues import DEFAULT_NULL_TOKENS
from shared.errors import ValidationError

WEATHER = TableSchema(
    "Weather",
    (
        Column("Station", "String"),
        Column("Date", "DateTime"),
        Column("Temp", "Double"),
        Column("Rain", "Boolean"),
        Column("Count", "Int64"),
        Column("LoadedAt", "DateTime"),
    ),
)


def test_defaults_null_tokens_for_non_text_columns_only() -> None:
    profile = compile_profile(WEATHER, {}, "test")

    assert profile.columns["Temp"].null_tokens == DEFAULT_NULL_TOKENS
    assert {"NA", "N/A", "null", "NULL", "\\N", ""} <= profile.columns["Date"].null_tokens
    assert profile.columns["Station"].null_tokens == frozenset()  # "NA" may be a name
    assert profile.columns["Temp"].parse is None  # the engine's own coercion
    assert profile.csv == CsvDialect()
    assert profile.columns["Temp"].source == "Temp"


def test_a_full_profile_compiles_each_column_rule() -> None:
    profile = compile_profile(
        WEATHER,
        {
            "nullTokens": ["-", "NA"],
            "dateFormats": ["MMM d yyyy", "dd.MM.yyyy"],
            "timeZone": "Europe/Paris",
            "decimalSeparator": ",",
            "thousandsSeparator": ".",
            "trueWords": ["yes", "y"],
            "falseWords": ["no", "n"],
            "csv": {"delimiter": ";", "header": False, "columnNames": ["a", "b"], "skipLines": 2},
            "encoding": "Windows-1252",
            "matchCase": False,
            "ignore": ["Comment"],
            "columns": {
                "Station": {"constant": "KSEA"},
                "Temp": {"from": "temperature_c", "nullTokens": ["-999"]},
                "LoadedAt": {"derived": "ingestionTime"},
            },
        },
        "datasets/Weather.profile.json",
    )

    temp, date, rain, count = (profile.columns[c] for c in ("Temp", "Date", "Rain", "Count"))
    assert temp.source == "temperature_c"
    assert temp.null_tokens == {"-999"}
    assert temp.parse is not None and temp.parse("1.234,5") == "1234.5"
    assert date.null_tokens == {"-", "NA"}
    assert date.parse is not None and date.parse("Jan 15 2020") == "2020-01-14T23:00:00.000Z"
    assert date.parse("15.07.2020") == "2020-07-14T22:00:00.000Z"
    assert date.parse("2020-07-15T00:00:00Z") == "2020-07-15T00:00:00.000Z"  # ISO still read
    assert rain.parse is not None and rain.parse("Y") is True
    assert count.parse is not None and count.parse("1.234") == "1234"
    assert profile.columns["Station"].constant == "KSEA"
    assert profile.columns["Station"].source is None
    assert profile.columns["LoadedAt"].derived == "ingestionTime"
    assert profile.csv == CsvDialect(";", '"', False, ("a", "b"), 2)
    assert profile.encoding == "cp1252"
    assert profile.match_case is False
    assert profile.ignore == {"Comment"}


@pytest.mark.parametrize(
    ("entry", "field", "problem"),
    [
        ({"nullToken": ["NA"]}, "tables.Weather.nullToken", "did you mean 'nullTokens'"),
        ({"columns": {"Temperature": {}}}, "tables.Weather.columns.Temperature", "no column"),
        ({"columns": {"Temp": {"form": "t"}}}, "tables.Weather.columns.Temp.form", "'from'"),
        (
            {"dateFormats": ["yyyy-MM-dd", "MM/dd"]},
            "tables.Weather.dateFormats[1]",
            "year",
        ),
        ({"timeZone": "Mars/Olympus"}, "tables.Weather.timeZone", "Mars/Olympus"),
        (
            {"columns": {"Date": {"timeZone": "Mars/Olympus"}}},
            "tables.Weather.columns.Date.timeZone",
            "Mars/Olympus",
        ),
        ({"decimalSeparator": ";"}, "tables.Weather.decimalSeparator", "','"),
        (
            {"trueWords": ["y"], "falseWords": ["Y"]},
            "tables.Weather.trueWords",
            "both",
        ),
        ({"csv": {"delimiter": "::"}}, "tables.Weather.csv.delimiter", "one of"),
        ({"csv": {"header": False}}, "tables.Weather.csv.columnNames", "no header"),
        ({"csv": {"skipLines": -1}}, "tables.Weather.csv.skipLines", "0 to 1000"),
        ({"encoding": "ebcdic"}, "tables.Weather.encoding", "utf-8"),
        ({"nullTokens": "NA"}, "tables.Weather.nullTokens", "array of strings"),
        (
            {"columns": {"Temp": {"derived": "now"}}},
            "tables.Weather.columns.Temp.derived",
            "one of",
        ),
        (
            {"columns": {"Temp": {"from": "t", "constant": 1}}},
            "tables.Weather.columns.Temp",
            "choose one",
        ),
        ({"matchCase": "no"}, "tables.Weather.matchCase", "true or false"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_file_and_the_field(
    entry: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(ProfileError) as refused:
        compile_profile(WEATHER, entry, "datasets/Weather.profile.json")

    assert refused.value.field == field
    assert problem in str(refused.value)
    assert str(refused.value).startswith(f"ingest profile datasets/Weather.profile.json: {field}:")
    assert isinstance(refused.value, ValidationError)  # permanent: 400, exit 2, dead letter


def test_overrides_replace_keys_and_merge_columns_one_level_down() -> None:
    declared = {
        "nullTokens": ["NA"],
        "csv": {"delimiter": ";", "skipLines": 1},
        "columns": {"Temp": {"from": "t"}, "Station": {"constant": "A"}},
    }
    override = {
        "nullTokens": ["-"],
        "csv": {"skipLines": 0},
        "columns": {"Station": {"constant": "B"}},
    }

    merged = merge(declared, override)

    assert merged == {
        "nullTokens": ["-"],
        "csv": {"delimiter": ";", "skipLines": 0},
        "columns": {"Temp": {"from": "t"}, "Station": {"constant": "B"}},
    }
    assert declared["columns"] == {"Temp": {"from": "t"}, "Station": {"constant": "A"}}


def test_load_profiles_reads_the_files_beside_the_definitions(tmp_path: Path) -> None:
    (tmp_path / "Weather.json").write_text("{}")  # a definition, not a profile
    (tmp_path / "Weather.profile.json").write_text(
        json.dumps({"tables": {"Weather": {"nullTokens": ["NA"]}}})
    )

    assert load_profiles(tmp_path) == {"Weather": {"Weather": {"nullTokens": ["NA"]}}}


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("{", "(file)", "JSON"),
        ('{"table": {}}', "(file).table", "did you mean 'tables'"),
        ('{"tables": []}', "tables", "an object"),
    ],
)
def test_an_unreadable_profile_file_is_refused(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    (tmp_path / "Weather.profile.json").write_text(text)
    (tmp_path / "Other.profile.json").write_text('{"tables": {"T": {}}}')

    with pytest.raises(ProfileError) as refused:
        read_profile(tmp_path / "Weather.profile.json")
    # Loading the directory keeps the error for that dataset only: its rows are refused
    # with it, the other dataset's profile still loads.
    loaded = load_profiles(tmp_path)
    assert isinstance(loaded["Weather"], ProfileError)
    assert str(loaded["Weather"]) == str(refused.value)
    assert loaded["Other"] == {"T": {}}

    assert refused.value.field == field
    assert problem in str(refused.value)
    assert str(tmp_path / "Weather.profile.json") in str(refused.value)


def test_overrides_given_as_text_must_be_json_objects() -> None:
    assert parse_override('{"nullTokens": ["-"]}', "blob x") == {"nullTokens": ["-"]}
    with pytest.raises(ProfileError, match="blob x: profile: is not JSON"):
        parse_override("nullTokens=-", "blob x")
    with pytest.raises(ProfileError, match="JSON object"):
        parse_override("[1]", "blob x")
