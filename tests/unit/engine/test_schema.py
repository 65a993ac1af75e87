"""Unit tests for shared.engine.schema: type names, value coercion and dataset definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.engine.schema import (
    Column,
    DatasetDefinition,
    RowValidator,
    TableSchema,
    canonical_type,
    load_definitions,
)
from shared.errors import ConfigError, RowProblem

ROOT = Path(__file__).resolve().parents[3]

COLUMNS = {
    "i": "Int64",
    "d": "Double",
    "m": "Decimal",
    "b": "Boolean",
    "t": "DateTime",
    "s": "String",
}
BODY: dict[str, Any] = {
    "name": "AllTypes",
    "tables": [
        {
            "name": "Values",
            "columns": [{"name": name, "dataType": kind} for name, kind in COLUMNS.items()],
        }
    ],
}
VALIDATE = DatasetDefinition.from_body(BODY).tables["Values"].validator()


def coerce(column: str, value: object, index: int = 0) -> object:
    """The coerced value of a one-column row, or the RowProblem."""
    result = VALIDATE({column: value}, index)
    if isinstance(result, RowProblem):
        return result
    assert set(result) == {column}
    return result[column]


def assert_refused(column: str, value: object, index: int = 3) -> RowProblem:
    problem = coerce(column, value, index)
    assert isinstance(problem, RowProblem), f"{value!r} was accepted as {problem!r}"
    assert problem.index == index
    assert problem.column == column
    assert problem.reason
    return problem


def assert_coerced(column: str, value: object, expected: object) -> None:
    result = coerce(column, value)
    assert not isinstance(result, RowProblem), f"{value!r} refused: {result}"
    assert result == expected
    assert type(result) is type(expected)


def table(columns: int = 1, kind: str = "Int64", name: str = "T") -> dict[str, Any]:
    return {
        "name": name,
        "columns": [{"name": f"c{n}", "dataType": kind} for n in range(columns)],
    }


# --- type names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("int", "Int64"),
        ("INT64", "Int64"),
        ("Int64", "Int64"),
        ("int64", "Int64"),
        ("bool", "Boolean"),
        ("BOOLEAN", "Boolean"),
        ("Boolean", "Boolean"),
        ("string", "String"),
        ("STRING", "String"),
        ("DateTime", "DateTime"),
        ("datetime", "DateTime"),
        ("Datetime", "DateTime"),
        ("dateTime", "DateTime"),
        ("Double", "Double"),
        ("double", "Double"),
        ("Decimal", "Decimal"),
        ("DECIMAL", "Decimal"),
        (" Int64 ", "Int64"),
    ],
)
def test_canonical_type_aliases(name: str, canonical: str) -> None:
    """Type names match case-insensitively, with int and bool as aliases."""
    assert canonical_type(name) == canonical


@pytest.mark.parametrize(
    "name", ["Date", "float", "integer", "text", "Int32", "boolean?", "", None, 64, ["Int64"]]
)
def test_canonical_type_unknown_is_none(name: object) -> None:
    """An unknown or non-string type name is None."""
    assert canonical_type(name) is None


# --- Int64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**63 - 2, 2**63 - 2),
        (-(2**63) + 1, -(2**63) + 1),
        (0, 0),
        ("42", 42),
        (" 7 ", 7),
        ("-12", -12),
        ("9223372036854775806", 2**63 - 2),
        (3.0, 3),
        (-0.0, 0),
    ],
)
def test_int64_accepts_whole_numbers_inside_the_range(value: object, expected: int) -> None:
    """Int64 takes whole numbers (ints, numeric strings, integral floats) strictly inside range."""
    assert_coerced("i", value, expected)


@pytest.mark.parametrize(
    "value",
    [
        2**63 - 1,
        -(2**63),
        2**63,
        "9223372036854775807",
        "-9223372036854775808",
        3.5,
        float("nan"),
        float("inf"),
        9.3e18,
        True,
        False,
        "abc",
        "3.0",
        "  ",
        [1],
        {"a": 1},
    ],
)
def test_int64_refuses_the_extremes_and_non_integers(value: object) -> None:
    """Int64.MaxValue, Int64.MinValue, fractions, booleans and junk are refused."""
    assert_refused("i", value)


# --- Double and Decimal -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e308, 1e308),
        (-1e308, -1e308),
        ("2.5", 2.5),
        (" -2.5 ", -2.5),
        (3, 3.0),
        (0, 0.0),
        (2**63, float(2**63)),
    ],
)
def test_double_accepts_finite_numbers(value: object, expected: float) -> None:
    """Double takes finite numbers below Double.MaxValue; ints and numeric strings become float."""
    assert_coerced("d", value, expected)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        "NaN",
        "inf",
        "-Infinity",
        1.7976931348623157e308,
        -1.7976931348623157e308,
        "1e400",
        True,
        "abc",
        [1.0],
    ],
)
def test_double_refuses_nan_infinities_and_the_extremes(value: object) -> None:
    """NaN, infinities, Double.MaxValue/MinValue, booleans and junk are refused."""
    assert_refused("d", value)


@pytest.mark.parametrize("column", ["d", "m"])
def test_number_too_large_for_a_double_is_a_row_problem(column: str) -> None:
    """An integer beyond float range (valid JSON, e.g. 10**400) is refused, not a crash."""
    assert_refused(column, 10**400)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(9.99e23, 9.99e23), (-9.99e23, -9.99e23), ("1234.5678", 1234.5678), (7, 7.0)],
)
def test_decimal_accepts_values_below_1e24(value: object, expected: float) -> None:
    """Decimal (precision 28, scale 4) takes values whose magnitude is below 1e24."""
    assert_coerced("m", value, expected)


@pytest.mark.parametrize("value", [1e24, -1e24, 10**24, "1e24", 1e25, float("nan"), "x"])
def test_decimal_refuses_1e24_and_beyond(value: object) -> None:
    """Decimal refuses magnitudes of 1e24 and more, and everything Double refuses."""
    assert_refused("m", value)


# --- Boolean ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("TRUE", True), ("true", True), (" false ", False)],
)
def test_boolean_accepts_true_and_false(value: object, expected: bool) -> None:
    """Boolean takes true/false, as JSON booleans or as case-insensitive strings."""
    assert_coerced("b", value, expected)


@pytest.mark.parametrize("value", ["yes", "no", "1", "0", "t", 1, 0, 1.0, [True]])
def test_boolean_refuses_anything_else(value: object) -> None:
    """Boolean refuses yes/no, numbers and numeric strings."""
    assert_refused("b", value)


# --- DateTime ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01T10:00:00+02:00", "2024-03-01T08:00:00.000Z"),
        ("2024-03-01T10:00:00-05:30", "2024-03-01T15:30:00.000Z"),
        ("2024-03-01T00:30:00+01:00", "2024-02-29T23:30:00.000Z"),
        ("2024-03-01T10:00:00Z", "2024-03-01T10:00:00.000Z"),
        ("2024-03-01T10:00:00", "2024-03-01T10:00:00.000Z"),
        ("2024-03-01T10:00:00.123456", "2024-03-01T10:00:00.123Z"),
        ("2024-03-01", "2024-03-01T00:00:00.000Z"),
        (" 2024-03-01 ", "2024-03-01T00:00:00.000Z"),
        ("07/30/2014", "2014-07-30T00:00:00.000Z"),
        ("7/4/2014", "2014-07-04T00:00:00.000Z"),
        ("07/30/2014 13:05:09", "2014-07-30T13:05:09.000Z"),
        ("07/30/2014 13:05", "2014-07-30T13:05:00.000Z"),
    ],
)
def test_datetime_becomes_iso_8601_utc_with_milliseconds(value: str, expected: str) -> None:
    """ISO 8601 (offset converted, naive taken as UTC) and MM/dd/yyyy become ISO UTC with Z."""
    assert_coerced("t", value, expected)


@pytest.mark.parametrize(
    "value",
    [
        "13/45/2014",
        "02/30/2024",
        "07/30/2014 24:00:00",
        "2014-13-01",
        "30.07.2014",
        "yesterday",
        "   ",
        123,
        1.5,
        True,
        {"date": "2024-03-01"},
    ],
)
def test_datetime_refuses_impossible_dates_and_non_strings(value: object) -> None:
    """Impossible dates, unknown formats and non-string values are refused."""
    assert_refused("t", value)


@pytest.mark.parametrize("value", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
def test_datetime_out_of_range_after_utc_conversion_is_a_row_problem(value: str) -> None:
    """A date-time whose UTC equivalent falls outside years 1-9999 is refused, not a crash."""
    assert_refused("t", value)


# --- String -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a" * 4_000, "a" * 4_000),
        ("😀" * 2_000, "😀" * 2_000),
        ("é" * 4_000, "é" * 4_000),
        ("", ""),
        ("  padded  ", "  padded  "),
        (5, "5"),
        (2.5, "2.5"),
        (True, "True"),
        (False, "False"),
    ],
)
def test_string_accepts_up_to_4000_utf16_units(value: object, expected: str) -> None:
    """String takes text of at most 4,000 UTF-16 units; numbers and booleans become text."""
    assert_coerced("s", value, expected)


@pytest.mark.parametrize(
    "value", ["a" * 4_001, "😀" * 2_001, "a" * 3_999 + "😀", {"a": 1}, ["a"], b"bytes"]
)
def test_string_refuses_longer_text_and_structures(value: object) -> None:
    """Text beyond 4,000 UTF-16 units (an emoji counts 2), objects and arrays are refused."""
    assert_refused("s", value)


def test_string_with_a_lone_surrogate_is_a_row_problem() -> None:
    """Long text holding a lone surrogate (possible from JSON "\\ud800") is refused, not a crash."""
    assert_refused("s", "\ud800" * 2_001)


# --- nulls, rows and columns ------------------------------------------------------------------


@pytest.mark.parametrize("column", ["i", "d", "m", "b", "t"])
def test_empty_string_is_null_for_non_string_columns(column: str) -> None:
    """An empty string in a non-String column is sent as null."""
    assert coerce(column, "") is None


@pytest.mark.parametrize("column", list(COLUMNS))
def test_none_is_null_for_every_column(column: str) -> None:
    """None stays null whatever the column's type."""
    assert coerce(column, None) is None


def test_validator_returns_only_the_given_columns() -> None:
    """A row keeps exactly the columns it has: missing columns are not filled in."""
    row = {"i": "1", "s": "x", "b": "true"}

    assert VALIDATE(row, 0) == {"i": 1, "s": "x", "b": True}


def test_validator_coerces_every_column_of_a_full_row() -> None:
    """A row with every type is coerced column by column."""
    row = {
        "i": "42",
        "d": "2.5",
        "m": 3,
        "b": "FALSE",
        "t": "07/30/2014",
        "s": 7,
    }

    assert VALIDATE(row, 0) == {
        "i": 42,
        "d": 2.5,
        "m": 3.0,
        "b": False,
        "t": "2014-07-30T00:00:00.000Z",
        "s": "7",
    }


def test_validator_does_not_modify_the_input_row() -> None:
    """Coercion builds a new row and leaves the caller's row untouched."""
    row = {"i": "42", "t": ""}

    VALIDATE(row, 0)

    assert row == {"i": "42", "t": ""}


def test_unknown_column_is_a_row_problem_naming_it() -> None:
    """A column the table does not have is refused with the row index and the column name."""
    problem = VALIDATE({"i": 1, "Nope": 2}, 17)

    assert isinstance(problem, RowProblem)
    assert problem.index == 17
    assert problem.column == "Nope"
    assert "Nope" in problem.reason


def test_column_names_are_case_sensitive() -> None:
    """A column name differing only in case is an unknown column."""
    problem = VALIDATE({"I": 1}, 0)

    assert isinstance(problem, RowProblem)
    assert problem.column == "I"


@pytest.mark.parametrize("row", [[1, 2], "i=1", 5, None, ("i", 1)])
def test_non_object_row_is_a_row_problem(row: object) -> None:
    """A row that is not a JSON object is refused with its index and no column."""
    problem = VALIDATE(row, 9)

    assert isinstance(problem, RowProblem)
    assert problem.index == 9
    assert problem.column is None


def test_empty_row_is_an_empty_row() -> None:
    """An empty object is valid and stays empty."""
    assert VALIDATE({}, 0) == {}


def test_row_validator_from_table_schema() -> None:
    """RowValidator can be built directly from a TableSchema and reused for many rows."""
    schema = DatasetDefinition.from_body(BODY).tables["Values"]
    validate = RowValidator(schema)

    assert [validate({"i": str(n)}, n) for n in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


# --- DatasetDefinition and load_definitions ---------------------------------------------------


def test_sales_marketing_loads_with_canonical_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets/SalesMarketing.json loads and its int/bool/string types become canonical."""
    monkeypatch.chdir(ROOT)

    definitions = load_definitions(Path("datasets"))

    assert set(definitions) == {"SalesMarketing"}
    definition = definitions["SalesMarketing"]
    assert definition.name == "SalesMarketing"
    assert list(definition.tables) == ["Product"]
    types = {c.name: c.data_type for c in definition.tables["Product"].columns}
    assert types == {
        "ProductID": "Int64",
        "Manufacturer": "String",
        "Category": "String",
        "Segment": "String",
        "Product": "String",
        "IsCompete": "Boolean",
    }
    validate = definition.tables["Product"].validator()
    assert validate({"ProductID": "1", "IsCompete": "true"}, 0) == {
        "ProductID": 1,
        "IsCompete": True,
    }


def test_from_body_keeps_the_body() -> None:
    """The definition keeps the Create Dataset body as given (it is what gets sent)."""
    definition = DatasetDefinition.from_body(BODY, "all.json")

    assert definition.body is BODY


def test_75_columns_and_75_tables_are_allowed() -> None:
    """75 columns in a table and 75 tables in a dataset are within the limits."""
    body = {"name": "Wide", "tables": [table(75, name=f"T{n}") for n in range(75)]}

    definition = DatasetDefinition.from_body(body)

    assert len(definition.tables) == 75
    assert all(len(t.columns) == 75 for t in definition.tables.values())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": "X", "tables": [table(kind="Date")]}, id="unknown-dataType"),
        pytest.param(
            {"name": "X", "tables": [{"name": "T", "columns": [{"name": "c"}]}]},
            id="missing-dataType",
        ),
        pytest.param(
            {"name": "X", "tables": [{"name": "T", "columns": [{"dataType": "Int64"}]}]},
            id="column-without-name",
        ),
        pytest.param({"name": "X", "tables": []}, id="empty-tables"),
        pytest.param({"name": "X"}, id="no-tables"),
        pytest.param({"name": "X", "tables": [table(76)]}, id="76-columns"),
        pytest.param(
            {"name": "X", "tables": [table(name=f"T{n}") for n in range(76)]}, id="76-tables"
        ),
        pytest.param({"name": "X", "tables": [{"name": "T", "columns": []}]}, id="no-columns"),
        pytest.param({"name": "X", "tables": [{"columns": [{}]}]}, id="table-without-name"),
        pytest.param({"tables": [table()]}, id="missing-name"),
        pytest.param({"name": 5, "tables": [table()]}, id="name-not-a-string"),
        pytest.param([{"name": "X", "tables": [table()]}], id="body-not-an-object"),
    ],
)
def test_malformed_definition_is_a_config_error_naming_the_source(body: object) -> None:
    """A definition that breaks the rules is a ConfigError whose setting is the source."""
    with pytest.raises(ConfigError) as caught:
        DatasetDefinition.from_body(body, "datasets/X.json")

    assert caught.value.setting == "datasets/X.json"
    assert "datasets/X.json" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"name": "X", "tables": [{"name": "T", "columns": ["c0"]}]}, id="column-not-an-object"
        ),
        pytest.param({"name": "X", "tables": [{"name": "T", "columns": 5}]}, id="columns-a-number"),
        pytest.param({"name": "X", "tables": 5}, id="tables-a-number"),
    ],
)
def test_wrongly_shaped_definition_is_a_config_error(body: object) -> None:
    """A definition whose tables or columns are not lists of objects is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        DatasetDefinition.from_body(body, "datasets/X.json")

    assert caught.value.setting == "datasets/X.json"


def _write(path: Path, body: object) -> Path:
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_load_definitions_by_dataset_name(tmp_path: Path) -> None:
    """Every *.json file is loaded and keyed by the dataset's name, not the file name."""
    _write(tmp_path / "a.json", {"name": "Alpha", "tables": [table()]})
    _write(tmp_path / "b.json", {"name": "Beta", "tables": [table()]})
    (tmp_path / "notes.txt").write_text("not a definition", encoding="utf-8")

    assert sorted(load_definitions(tmp_path)) == ["Alpha", "Beta"]


def test_load_definitions_of_an_empty_directory(tmp_path: Path) -> None:
    """A directory with no definitions loads as no datasets."""
    assert load_definitions(tmp_path) == {}


def test_two_files_defining_one_dataset_is_a_config_error(tmp_path: Path) -> None:
    """Two files with the same dataset name are a ConfigError naming the second file."""
    _write(tmp_path / "a.json", {"name": "Same", "tables": [table()]})
    second = _write(tmp_path / "b.json", {"name": "Same", "tables": [table(2)]})

    with pytest.raises(ConfigError) as caught:
        load_definitions(tmp_path)

    assert caught.value.setting == str(second)
    assert "Same" in str(caught.value)


def test_invalid_json_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """A file that is not JSON is a ConfigError naming the file."""
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_definitions(tmp_path)

    assert caught.value.setting == str(broken)


def test_malformed_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """A JSON file that is not a valid definition is a ConfigError naming the file."""
    bad = _write(tmp_path / "bad.json", {"name": "Bad", "tables": [table(kind="Date")]})

    with pytest.raises(ConfigError) as caught:
        load_definitions(tmp_path)

    assert caught.value.setting == str(bad)


def test_every_bad_column_of_a_row_is_named_in_its_one_problem() -> None:
    table = TableSchema(
        "T", (Column("n", "Int64"), Column("when", "DateTime"), Column("ok", "Boolean"))
    )
    check = table.validator()

    problem = check({"n": "x", "when": "soon", "ok": True, "extra": 1}, 7)

    assert isinstance(problem, RowProblem)
    assert problem.index == 7 and problem.column == "n"
    assert problem.reason.startswith("3 columns refused: n: expected a whole number")
    assert "; when: expected an ISO 8601" in problem.reason
    assert "; extra: table 'T' has no column 'extra'" in problem.reason
    # One bad column reads as before: its own reason, its own column.
    assert check({"n": "x"}, 0) == RowProblem(0, "expected a whole number, got 'x'", "n")


def test_drift_names_added_columns_and_every_live_column_the_definition_does_not_match() -> None:
    """The one comparison the engine (Ingestor._widen) and `doctor` share."""
    schema = DatasetDefinition.from_body(
        {
            "name": "D",
            "tables": [
                {
                    "name": "T",
                    "columns": [
                        {"name": "A", "dataType": "int"},
                        {"name": "B", "dataType": "String"},
                        {"name": "New", "dataType": "Double"},
                    ],
                }
            ],
        }
    ).tables["T"]
    same = schema.drift(
        [
            {"name": "A", "dataType": "Int64"},
            {"name": "B", "dataType": "string"},
            {"name": "New", "dataType": "Double"},
        ]
    )
    assert same.added == () and same.conflicts == ()
    drift = schema.drift(
        [
            {"name": "A", "dataType": "String"},
            {"name": "B", "dataType": "String"},
            {"name": "Gone", "dataType": "Boolean"},
        ]
    )
    assert drift.added == ("New",)
    assert drift.conflicts == (
        "T.A is String in Power BI, Int64 in the definition",
        "T.Gone (Boolean) is not in the definition",
    )
