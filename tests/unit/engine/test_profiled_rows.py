"""Rows read through an ingest profile: RowValidator with a compiled TableProfile
(shared/engine/profile.py, shared/engine/textvalues.py, shared/engine/schema.py).

Each example feeds rows as a CSV file (text) or an NDJSON file (JSON types) gives them and
checks the values the validator sends, or the problem it names. The property test at the end
compares the block path (check_block, with the date rewrite) with the per-row validator under
random profiles, as tests/unit/engine/test_fast_path.py does without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.engine.profile import ProfileError, TableProfile, compile_profile
from shared.engine.schema import LINE_KEY, Column, RowContext, RowValidator, TableSchema
from shared.errors import RowProblem

WHERE = "datasets/Test.profile.json"

EVERY_TYPE = TableSchema(
    "T",
    (
        Column("I", "Int64"),
        Column("D", "Double"),
        Column("M", "Decimal"),
        Column("B", "Boolean"),
        Column("W", "DateTime"),
        Column("S", "String"),
    ),
)
NON_TEXT = ("I", "D", "M", "B", "W")
DEFAULT_TOKENS = ["NA", "N/A", "null", "NULL", "\\N", ""]


def validator(
    schema: TableSchema, entry: dict[str, Any], context: RowContext | None = None
) -> RowValidator:
    """The validator of ``schema`` with ``entry`` (one table's profile) compiled."""
    return RowValidator(schema, compile_profile(schema, entry, WHERE), context)


def one(schema: TableSchema, column: str, entry: dict[str, Any], value: Any) -> Any:
    """What the profiled validator makes of ``value`` in ``column`` (a row of that column
    only): the coerced value, or the RowProblem."""
    checked = validator(schema, entry)({column: value}, 0)
    return checked if isinstance(checked, RowProblem) else checked[column]


def built(rows: list[Any]) -> list[dict[str, Any]]:
    """check_block's rows (msgspec Structs) as the dicts they encode as."""
    out: list[dict[str, Any]] = [msgspec.to_builtins(row) for row in rows]
    return out


def exactly(rows: list[Any]) -> list[list[tuple[str, str]]]:
    """Rows compared by key order and each value's repr (1 is not 1.0, -0.0 is not 0.0)."""
    return [[(key, repr(value)) for key, value in row.items()] for row in rows]


def problems(rows: list[Any]) -> list[RowProblem]:
    return [row for row in rows if isinstance(row, RowProblem)]


WHEN = TableSchema("T", (Column("W", "DateTime"),))
AMOUNT = TableSchema("T", (Column("D", "Double"),))
FLAG = TableSchema("T", (Column("B", "Boolean"),))


# --- null tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("token", DEFAULT_TOKENS)
def test_default_null_tokens_are_null_in_non_text_columns_without_a_profile(token: str) -> None:
    """Without a profile, NA, N/A, null, NULL, \\N and "" are None in every non-text column,
    and a String column keeps them as the text they are (a name may be "NA"); the block path
    gives the same."""
    plain = RowValidator(EVERY_TYPE)
    row = dict.fromkeys((c.name for c in EVERY_TYPE.columns), token)

    checked = plain(row, 0)

    assert checked == {"I": None, "D": None, "M": None, "B": None, "W": None, "S": token}
    fast = plain.check_block([row, row])
    assert fast is not None
    assert built(fast[0]) == [checked, checked]


def test_text_keeps_na_as_text_unless_its_column_declares_null_tokens() -> None:
    """A String column's "NA" is the text "NA"; declared in the column's nullTokens it is
    None, and so is "" when declared too; an undeclared token stays text."""
    text = TableSchema("T", (Column("S", "String"),))

    assert one(text, "S", {}, "NA") == "NA"
    assert one(text, "S", {}, "") == ""
    declared = {"columns": {"S": {"nullTokens": ["NA", "-"]}}}
    assert one(text, "S", declared, "NA") is None
    assert one(text, "S", declared, "-") is None
    assert one(text, "S", declared, "") == ""  # not declared: text
    assert one(text, "S", declared, "N/A") == "N/A"
    with_empty = {"columns": {"S": {"nullTokens": ["NA", ""]}}}
    assert one(text, "S", with_empty, "") is None
    assert one(text, "S", with_empty, "NA") is None
    rows = [{"S": "NA"}, {"S": ""}, {"S": "Oslo"}]
    fast = validator(text, with_empty).check_block(rows)
    assert fast is not None
    assert built(fast[0]) == [{"S": None}, {"S": None}, {"S": "Oslo"}]


def test_declared_table_tokens_replace_the_defaults_in_non_text_columns() -> None:
    """Table nullTokens ["-"]: "-" is None in an Int64 column, "" still is (an empty field),
    and "NA", no longer a token, is refused as a number."""
    count = TableSchema("T", (Column("I", "Int64"),))
    entry = {"nullTokens": ["-"]}

    assert one(count, "I", entry, "-") is None
    assert one(count, "I", entry, "") is None
    refused = one(count, "I", entry, "NA")
    assert isinstance(refused, RowProblem)
    assert refused.column == "I"
    assert "expected a whole number" in refused.reason


# --- dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "value", "expected"),
    [
        ({"dateFormats": ["MMM d yyyy"]}, "Jan 1 2000", "2000-01-01T00:00:00.000Z"),
        ({"dateFormats": ["yyyy/MM/dd"]}, "2012/01/01", "2012-01-01T00:00:00.000Z"),
        (
            {"dateFormats": ["dd.MM.yyyy HH:mm"], "timeZone": "Europe/Berlin"},
            "31.12.1999 23:30",
            "1999-12-31T22:30:00.000Z",
        ),
        (
            {"dateFormats": ["dd.MM.yyyy HH:mm"], "timeZone": "Europe/Berlin"},
            "01.07.2020 12:00",
            "2020-07-01T10:00:00.000Z",  # summer time, UTC+2
        ),
        ({"dateFormats": ["unixSeconds"]}, "946684800", "2000-01-01T00:00:00.000Z"),
        ({"dateFormats": ["unixSeconds"]}, 946684800, "2000-01-01T00:00:00.000Z"),
        ({"dateFormats": ["unixSeconds"]}, 946684800.5, "2000-01-01T00:00:00.500Z"),
        ({"dateFormats": ["unixMilliseconds"]}, "946684800123", "2000-01-01T00:00:00.123Z"),
        ({"dateFormats": ["unixMilliseconds"]}, 946684800123, "2000-01-01T00:00:00.123Z"),
        # ISO 8601 is still read beside a declared pattern.
        ({"dateFormats": ["yyyy/MM/dd"]}, "2000-01-01T05:00:00Z", "2000-01-01T05:00:00.000Z"),
        (
            {"dateFormats": ["MMM d yyyy"]},
            "2000-01-01T05:00:00+02:00",
            "2000-01-01T03:00:00.000Z",
        ),
    ],
)
def test_declared_date_formats_read_what_their_owners_wrote(
    entry: dict[str, Any], value: Any, expected: str
) -> None:
    """A DateTime column read by the table's dateFormats (and timeZone), from CSV text and
    from NDJSON numbers (Unix time), comes out as ISO 8601 UTC with milliseconds."""
    assert one(WHEN, "W", entry, value) == expected


def test_a_date_matching_no_pattern_is_refused_naming_the_patterns() -> None:
    """A value no declared pattern (nor ISO 8601) reads is a RowProblem for its column whose
    reason names every pattern tried and the value."""
    refused = one(WHEN, "W", {"dateFormats": ["yyyy/MM/dd", "MMM d yyyy"]}, "1st of May")

    assert isinstance(refused, RowProblem)
    assert refused.column == "W"
    assert "'yyyy/MM/dd'" in refused.reason
    assert "'MMM d yyyy'" in refused.reason
    assert "ISO 8601" in refused.reason
    assert "'1st of May'" in refused.reason


def test_a_date_matching_the_pattern_but_not_the_calendar_is_refused() -> None:
    """30 February has the shape of yyyy/MM/dd but is no day: refused, not rolled over."""
    refused = one(WHEN, "W", {"dateFormats": ["yyyy/MM/dd"]}, "2001/02/30")

    assert isinstance(refused, RowProblem)
    assert "2001/02/30" in refused.reason


# --- numbers -----------------------------------------------------------------------------------

DECIMAL_COMMA = {"decimalSeparator": ",", "thousandsSeparator": "."}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1.234,5", 1234.5), ("1234,5", 1234.5), ("-1.000.000,25", -1000000.25), ("7", 7.0)],
)
def test_decimal_comma_and_thousands_dot_are_read(value: str, expected: float) -> None:
    """With "," for decimals and "." for thousands, a Double column reads 1.234,5 as 1234.5."""
    assert one(AMOUNT, "D", DECIMAL_COMMA, value) == expected


@pytest.mark.parametrize("value", ["1.2.3", "1.5", "12.34,5", "1,2,3"])
def test_thousands_not_in_groups_of_three_are_refused(value: str) -> None:
    """Separators out of place (1.2.3, a dot where the comma is the decimal mark) are refused
    rather than guessed, with a reason naming both separators."""
    refused = one(AMOUNT, "D", DECIMAL_COMMA, value)

    assert isinstance(refused, RowProblem)
    assert "','" in refused.reason and "'.'" in refused.reason
    assert repr(value) in refused.reason


@pytest.mark.parametrize(("value", "expected"), [(1234.5, 1234.5), (2, 2.0), (1.5e20, 1.5e20)])
def test_json_numbers_are_untouched_by_a_decimal_comma_profile(value: Any, expected: float) -> None:
    """A JSON number is already a number: the decimal-comma reader does not see it (1234.5
    as text would be refused by it)."""
    got = one(AMOUNT, "D", DECIMAL_COMMA, value)

    assert repr(got) == repr(expected)


# --- booleans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "value", "expected"),
    [
        ({"trueWords": ["yes"], "falseWords": ["no"]}, "yes", True),
        ({"trueWords": ["yes"], "falseWords": ["no"]}, "No", False),
        ({"trueWords": ["yes"], "falseWords": ["no"]}, "true", True),
        ({"trueWords": ["Y"], "falseWords": ["N"]}, "Y", True),
        ({"trueWords": ["Y"], "falseWords": ["N"]}, "n", False),
        ({"trueWords": ["1"], "falseWords": ["0"]}, "1", True),
        ({"trueWords": ["1"], "falseWords": ["0"]}, "0", False),
        ({"trueWords": ["1"], "falseWords": ["0"]}, 1, True),
        ({"trueWords": ["1"], "falseWords": ["0"]}, 0, False),
        ({"trueWords": ["1"], "falseWords": ["0"]}, True, True),
    ],
)
def test_declared_boolean_words_are_read(entry: dict[str, Any], value: Any, expected: bool) -> None:
    """trueWords and falseWords are read without case, from text and from NDJSON 1 and 0."""
    assert one(FLAG, "B", entry, value) is expected


@pytest.mark.parametrize("value", ["maybe", "2", 2])
def test_an_undeclared_word_is_refused_listing_the_words(value: Any) -> None:
    """A word that is neither true nor false is refused with the words that are."""
    refused = one(FLAG, "B", {"trueWords": ["1", "yes"], "falseWords": ["0", "no"]}, value)

    assert isinstance(refused, RowProblem)
    assert "'yes'" in refused.reason and "'no'" in refused.reason


# --- mapping -----------------------------------------------------------------------------------

WEATHER = TableSchema(
    "Weather",
    (
        Column("Temp", "Double"),
        Column("Station", "String"),
        Column("LoadedAt", "DateTime"),
        Column("File", "String"),
        Column("Line", "Int64"),
    ),
)
MAPPED = {
    "ignore": ["Comment"],
    "columns": {
        "Temp": {"from": "temperature_c"},
        "Station": {"constant": "KSEA"},
        "LoadedAt": {"derived": "ingestionTime"},
        "File": {"derived": "sourceFile"},
        "Line": {"derived": "lineNumber"},
    },
}
CONTEXT = RowContext("weather/2026-01-02.csv", "2026-01-02T03:04:05.000Z")


def test_a_mapped_row_is_renamed_filled_and_stamped() -> None:
    """The file's column is renamed by "from", the ignored column is dropped, the constant and
    the derived columns are added: ingestion time and source file from the context, the line
    number from the reader's LINE_KEY."""
    checked = validator(WEATHER, MAPPED, CONTEXT)(
        {"temperature_c": "21.5", "Comment": "sunny", LINE_KEY: 17}, 4
    )

    assert checked == {
        "Temp": 21.5,
        "Station": "KSEA",
        "LoadedAt": "2026-01-02T03:04:05.000Z",
        "File": "weather/2026-01-02.csv",
        "Line": 17,
    }


def test_with_context_gives_the_derived_values_of_that_push() -> None:
    """One validator, two pushes: with_context gives each its own ingestion time and file,
    the original is unchanged."""
    base = validator(WEATHER, MAPPED)
    other = RowContext("weather/b.csv", "2027-05-06T07:08:09.000Z")
    row = {"temperature_c": "1"}

    first = base.with_context(CONTEXT)(row, 0)
    second = base.with_context(other)(row, 0)

    assert isinstance(first, dict) and isinstance(second, dict)
    assert (first["LoadedAt"], first["File"]) == (CONTEXT.ingested_at, CONTEXT.source)
    assert (second["LoadedAt"], second["File"]) == (other.ingested_at, other.source)
    assert base.context.source is None  # the original keeps its own (empty) context


@pytest.mark.parametrize(
    ("data_type", "expected"), [("Int64", 5), ("Double", 5.0), ("Decimal", 5.0), ("String", "5")]
)
def test_line_number_is_the_row_index_plus_one_without_line_key(
    data_type: str, expected: Any
) -> None:
    """Rows that carry no LINE_KEY (a request's JSON) number from their index: row 4 is line
    5, written as the column's type; the block path numbers from ``first``."""
    schema = TableSchema("T", (Column("v", "Int64"), Column("Line", data_type)))
    numbered = validator(schema, {"columns": {"Line": {"derived": "lineNumber"}}})

    checked = numbered({"v": "1"}, 4)
    fast = numbered.check_block([{"v": "1"}, {"v": "2"}], first=4)

    assert isinstance(checked, dict)
    assert repr(checked["Line"]) == repr(expected)
    assert fast is not None
    assert exactly(built(fast[0])) == exactly([numbered({"v": "1"}, 4), numbered({"v": "2"}, 5)])


def test_line_key_from_the_reader_wins_over_the_index_in_blocks_too() -> None:
    """When the reader numbered the rows (skipped and blank lines between them), the block
    path gives those numbers, as the per-row validator does, and LINE_KEY is not a column."""
    numbered = validator(WEATHER, MAPPED, CONTEXT)
    rows = [{"temperature_c": "1", LINE_KEY: 3}, {"temperature_c": "2", LINE_KEY: 9}]

    fast = numbered.check_block(rows)

    assert fast is not None
    assert [row["Line"] for row in built(fast[0])] == [3, 9]
    assert built(fast[0]) == [numbered(row, index) for index, row in enumerate(rows)]


def test_match_case_false_fills_a_column_whatever_its_case() -> None:
    """With matchCase false the header "TEMP" fills "Temp" (and a renamed source matches
    without case too); with the default, "TEMP" is an unknown column."""
    schema = TableSchema("T", (Column("Temp", "Double"), Column("Wind", "Int64")))
    loose = {"matchCase": False, "columns": {"Wind": {"from": "wind_kmh"}}}

    assert validator(schema, loose)({"TEMP": "1.5", "WIND_KMH": "3"}, 0) == {
        "Temp": 1.5,
        "Wind": 3,
    }
    strict = validator(schema, {})({"TEMP": "1.5"}, 0)
    assert isinstance(strict, RowProblem)
    assert strict.column == "TEMP"
    assert "has no column 'TEMP'" in strict.reason


def test_ignored_columns_are_dropped_not_refused() -> None:
    """Columns listed in "ignore" (matched without case under matchCase false) are left out
    of the row, by the per-row and the block path alike."""
    schema = TableSchema("T", (Column("Temp", "Double"),))
    entry = {"matchCase": False, "ignore": ["Comment", "Notes"]}
    row = {"Comment": "x", "Temp": "2", "NOTES": "y"}
    ignoring = validator(schema, entry)

    assert ignoring(row, 0) == {"Temp": 2.0}
    fast = ignoring.check_block([row])
    assert fast is not None and built(fast[0]) == [{"Temp": 2.0}]


def test_an_unmapped_file_column_is_refused_naming_it() -> None:
    """A file column the profile neither reads nor ignores is refused, naming the table and
    the column."""
    refused = validator(WEATHER, MAPPED, CONTEXT)({"temperature_c": "1", "Humidity": "80"}, 2)

    assert isinstance(refused, RowProblem)
    assert (refused.index, refused.column) == (2, "Humidity")
    assert refused.reason == "table 'Weather' has no column 'Humidity'"


def test_a_file_column_named_as_a_constant_column_is_refused_as_filled_by_the_profile() -> None:
    """The file has a "Station" column but the profile fills Station with a constant: the
    row is refused saying so (the file's value would otherwise be silently lost), and
    ignoring "Station" lets the constant stand."""
    row = {"temperature_c": "1", "Station": "KBFI"}

    refused = validator(WEATHER, MAPPED, CONTEXT)(row, 0)
    ignoring = validator(WEATHER, {**MAPPED, "ignore": ["Station"]}, CONTEXT)(row, 0)

    assert isinstance(refused, RowProblem)
    assert refused.column == "Station"
    assert "is filled by the profile" in refused.reason
    assert "'ignore'" in refused.reason
    assert isinstance(ignoring, dict) and ignoring["Station"] == "KSEA"


def test_a_file_column_named_as_a_renamed_column_is_refused_as_reading_another() -> None:
    """The file has "Temp" but Temp is read from "temperature_c": refused, saying Temp reads
    another column of the file."""
    refused = validator(WEATHER, MAPPED, CONTEXT)({"temperature_c": "1", "Temp": "2"}, 0)

    assert isinstance(refused, RowProblem)
    assert refused.column == "Temp"
    assert "reads another column of the file" in refused.reason


@pytest.mark.parametrize(
    ("entry", "row"),
    [
        (
            {"matchCase": False, "columns": {"Temp": {"from": "temperature"}}},
            {"temperature": "1", "TEMPERATURE": "2"},
        ),
        ({"matchCase": False}, {"Temp": "1", "TEMP": "2"}),
        ({"matchCase": False}, {"temp": "1", "TEMP": "2"}),
    ],
    ids=["renamed", "own-name", "both-other-case"],
)
def test_two_file_columns_that_case_fold_to_one_target_are_refused(
    entry: dict[str, Any], row: dict[str, Any]
) -> None:
    """Under matchCase false two file columns that differ only in case would both fill one
    table column: the row is refused naming the second, not filled with whichever came
    last; the block path leaves it to the per-row validator."""
    schema = TableSchema("T", (Column("Temp", "Double"),))
    folding = validator(schema, entry)

    refused = folding(row, 0)

    assert folding.check_block([row]) is None
    assert isinstance(refused, RowProblem), f"accepted as {refused!r}"
    assert refused.column == list(row)[1]
    assert refused.reason == "a second column of the row is read into 'Temp'"


@pytest.mark.parametrize(
    ("data_type", "constant", "expected"),
    [
        ("Int64", "42", 42),
        ("Double", 1, 1.0),
        ("Decimal", "2.5", 2.5),
        ("Boolean", "TRUE", True),
        ("DateTime", "2000-01-01", "2000-01-01T00:00:00.000Z"),
        ("String", 7, "7"),
    ],
)
def test_constants_are_coerced_to_the_column_type_when_compiled(
    data_type: str, constant: Any, expected: Any
) -> None:
    """A constant is stored as its column stores values, once, at compile time; every row
    then carries it (per row and per block)."""
    schema = TableSchema("T", (Column("v", "Int64"), Column("C", data_type)))
    entry = {"columns": {"C": {"constant": constant}}}
    profile = compile_profile(schema, entry, WHERE)
    filled = RowValidator(schema, profile)

    assert repr(profile.columns["C"].constant) == repr(expected)
    checked = filled({"v": "1"}, 0)
    assert isinstance(checked, dict) and repr(checked["C"]) == repr(expected)
    fast = filled.check_block([{"v": "1"}, {"v": "2"}])
    assert fast is not None
    assert [repr(row["C"]) for row in built(fast[0])] == [repr(expected)] * 2


@pytest.mark.parametrize(
    ("data_type", "constant"),
    [("Int64", "abc"), ("Double", "NaN"), ("Boolean", "yes"), ("DateTime", "someday")],
)
def test_a_bad_constant_is_a_profile_error_naming_its_field(data_type: str, constant: Any) -> None:
    """A constant its column cannot hold fails the profile, naming
    tables.T.columns.C.constant: no row is read with it."""
    schema = TableSchema("T", (Column("C", data_type),))

    with pytest.raises(ProfileError) as refused:
        compile_profile(schema, {"columns": {"C": {"constant": constant}}}, WHERE)

    assert refused.value.field == "tables.T.columns.C.constant"
    assert str(refused.value).startswith(f"ingest profile {WHERE}: tables.T.columns.C.constant:")


# --- problems ----------------------------------------------------------------------------------


def test_one_problem_names_every_bad_column_of_a_row() -> None:
    """Three bad values in one row (a date no pattern reads, a number with misplaced
    separators, an unknown word) give one RowProblem: its column is the first bad one, its
    reason starts with "3 columns refused:" and names each with its own reason; the good
    column does not appear."""
    schema = TableSchema(
        "T",
        (
            Column("When", "DateTime"),
            Column("Amount", "Double"),
            Column("Ok", "Boolean"),
            Column("Name", "String"),
        ),
    )
    entry = {
        "dateFormats": ["dd.MM.yyyy"],
        "trueWords": ["ja"],
        "falseWords": ["nein"],
        **DECIMAL_COMMA,
    }
    row = {"When": "2000-13-45", "Amount": "1.2.3", "Ok": "vielleicht", "Name": "Bonn"}

    refused = validator(schema, entry)(row, 6)

    assert isinstance(refused, RowProblem)
    assert (refused.index, refused.column) == (6, "When")
    assert refused.reason.startswith("3 columns refused: ")
    parts = refused.reason.removeprefix("3 columns refused: ").split("; ")
    assert [part.split(":")[0] for part in parts] == ["When", "Amount", "Ok"]
    assert "'dd.MM.yyyy'" in parts[0] and "'2000-13-45'" in parts[0]
    assert "'1.2.3'" in parts[1]
    assert "'vielleicht'" in parts[2]
    assert "Name" not in refused.reason
    assert validator(schema, entry).check_block([row]) is None


# --- the block path ----------------------------------------------------------------------------


def spied(profile: TableProfile, column: str) -> tuple[TableProfile, list[str]]:
    """``profile`` whose ``column`` reader records each text it is given (and reads it as
    before): the values the per-value path read."""
    seen: list[str] = []
    rule = profile.columns[column]
    read = rule.parse
    assert read is not None

    def recorded(text: str) -> Any:
        seen.append(text)
        return read(text)

    columns = {**profile.columns, column: dataclasses.replace(rule, parse=recorded)}
    return dataclasses.replace(profile, columns=columns), seen


def slash_date(n: int) -> str:
    day = f"{1990 + n % 40:04d}/{1 + n % 12:02d}/{1 + n % 28:02d}"
    return f"{day} {n % 24:02d}:{n % 60:02d}:{n * 7 % 60:02d}"


def dotted_date(n: int) -> str:
    return f"{1 + n % 28:02d}.{1 + n % 12:02d}.{1900 + n % 200:04d}"


@pytest.mark.parametrize(
    ("pattern", "make", "second"),
    [
        ("yyyy/MM/dd HH:mm:ss", slash_date, "1991-02-02T01:01:07.000Z"),
        ("dd.MM.yyyy", dotted_date, "1901-02-02T00:00:00.000Z"),
    ],
    ids=["slashes-and-time", "dotted"],
)
def test_a_date_pattern_column_is_rewritten_at_once(
    pattern: str, make: Callable[[int], str], second: str
) -> None:
    """512 rows of a fixed-width pattern with some "NA": check_block vouches for them
    without reading any value one by one (the column is rewritten in one pass), and each row
    is what the per-row validator gives."""
    schema = TableSchema("T", (Column("id", "Int64"), Column("W", "DateTime")))
    profile, seen = spied(compile_profile(schema, {"dateFormats": [pattern]}, WHERE), "W")
    rewriting = RowValidator(schema, profile)
    rows = [{"id": str(n), "W": "NA" if n % 37 == 0 else make(n)} for n in range(512)]

    fast = rewriting.check_block(rows)

    assert fast is not None
    assert seen == []  # no value went through the per-value reader
    one_by_one = [rewriting(row, index) for index, row in enumerate(rows)]
    assert len(seen) == 512 - 14  # the per-row path reads each non-token value
    assert exactly(built(fast[0])) == exactly(one_by_one)
    assert [row["W"] for row in built(fast[0])[:2]] == [None, second]


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        ("yyyy/MM/dd HH:mm:ss", "2000/02/29 12:00:00", "2000/02/30 12:00:00"),
        ("yyyy/MM/dd HH:mm:ss", "2000/02/29 12:00:00", "2001/02/29 00:00:00"),
        ("yyyy/MM/dd HH:mm:ss", "2000/02/29 12:00:00", "2000/01/01 24:00:00"),
        ("yyyy/MM/dd HH:mm:ss", "2000/02/29 12:00:00", "0000/01/01 00:00:00"),
        ("dd.MM.yyyy", "31.12.1999", "31.04.1999"),
        ("dd.MM.yyyy", "31.12.1999", "01.13.1999"),
    ],
)
def test_an_impossible_date_sends_the_block_row_by_row_and_is_refused(
    pattern: str, good: str, bad: str
) -> None:
    """A block of valid dates with one impossible one (30 February, 29 February of a common
    year, hour 24, year 0, 31 April, month 13): check_block returns None, and the per-row
    validator refuses that row only, reads the others as the pattern says."""
    rewriting = validator(WHEN, {"dateFormats": [pattern]})
    rows = [{"W": good}] * 255 + [{"W": bad}] + [{"W": "NA"}] * 256

    assert rewriting.check_block(rows) is None
    one_by_one = [rewriting(row, index) for index, row in enumerate(rows)]
    refused = problems(one_by_one)
    assert [(p.index, p.column) for p in refused] == [(255, "W")]
    assert bad in refused[0].reason
    read_good = {
        "2000/02/29 12:00:00": "2000-02-29T12:00:00.000Z",
        "31.12.1999": "1999-12-31T00:00:00.000Z",
    }[good]
    assert one_by_one[0] == {"W": read_good}
    assert one_by_one[-1] == {"W": None}
    fast = rewriting.check_block(rows[:255])
    assert fast is not None and built(fast[0]) == [{"W": read_good}] * 255


@pytest.mark.parametrize(
    ("entry", "row"),
    [
        ({"columns": {"a": {"constant": "7"}}}, {"b": "1", "Unknown": "1"}),
        ({"columns": {"a": {"derived": "lineNumber"}}}, {"b": "1", "Unknown": "1"}),
        (
            {"matchCase": False, "columns": {"a": {"constant": "7"}, "b": {"from": "bee"}}},
            {"bee": "1", "BEE": "2"},
        ),
    ],
    ids=["constant-and-unknown", "line-number-and-unknown", "constant-and-case-folded-pair"],
)
def test_a_block_the_rows_refuse_is_not_vouched_for_when_the_profile_adds_columns(
    entry: dict[str, Any], row: dict[str, Any]
) -> None:
    """A row with a column the table lacks (or two that fill one column) is refused by the
    per-row validator; check_block must then return None even when the profile adds a
    constant or derived column, not a row of the added columns alone (which would send the
    row without its read values and without a word)."""
    schema = TableSchema("T", (Column("a", "Int64"), Column("b", "Int64")))
    adding = validator(schema, entry)

    assert isinstance(adding(row, 0), RowProblem)
    fast = adding.check_block([row])
    assert fast is None, f"vouched for {built(fast[0])}"


# --- property: the block path under random profiles --------------------------------------------

DATE_PATTERNS: dict[str, Callable[[datetime], str]] = {
    "yyyy/MM/dd HH:mm:ss": lambda m: (
        f"{m.year:04d}/{m.month:02d}/{m.day:02d} {m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    ),
    "dd.MM.yyyy": lambda m: f"{m.day:02d}.{m.month:02d}.{m.year:04d}",
}
TOKENS = ["NA", "-", "?", "n/a", "NULL", "", "-999", "\\N"]
GARBAGE = [
    "",
    " ",
    "x",
    "NA",
    "N/A",
    "1.2.3",
    "1,5",
    "1.5",
    "1.234,5",
    "NaN",
    "inf",
    "1e400",
    "yes",
    "TRUE",
    "2000/13/01 00:00:00",
    "2000/02/30 00:00:00",
    "2001/02/29 00:00:00",
    "2000/02/29 00:00:00",
    "0000/01/01 00:00:00",
    "2000/01/01 24:00:00",
    " 2000/01/01 00:00:00",
    "2000/01/01 00:00:00 ",
    "\u0662000/01/01 00:00:00",
    "2000/01/01 00:00:00\n2000/01/01 00:00:00",
    "31.02.2001",
    "29.02.2000",
    "01.01.0000",
    " 01.01.2000",
    "1.1.2000",
    "2000-01-01T00:00:00Z",
    "2000-01-01T00:00:00.123Z",
    "2000-01-01T00:00:00+01:00",
    "2000-01-01",
    "12/31/2025",
]
NAMES = ["a", "b", "Price", "When", "x y", "é"]
TYPES = ["Int64", "Double", "Decimal", "Boolean", "DateTime", "DateTime", "String"]
CONSTANTS = {
    "Int64": "7",
    "Double": "2.5",
    "Decimal": 3,
    "Boolean": True,
    "DateTime": "2000-01-01T00:00:00Z",
    "String": "k",
}


@st.composite
def profiled_tables(
    draw: st.DrawFn,
) -> tuple[TableSchema, dict[str, Any], list[dict[str, Any]]]:
    """A small schema, a random profile for it and CSV-like text rows in the file's column
    order: mostly values the profile reads, sometimes tokens, "" or garbage, rarely a row
    with an unknown column."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    schema = TableSchema("T", tuple(Column(name, draw(st.sampled_from(TYPES))) for name in names))
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["nullTokens"] = draw(st.lists(st.sampled_from(TOKENS), unique=True, max_size=4))
    match_case = draw(st.booleans())
    if not match_case:
        entry["matchCase"] = False
    columns: dict[str, dict[str, Any]] = {}
    renamed = draw(st.sampled_from([None, *names]))
    constant = draw(st.sampled_from([None, *names]))
    for column in schema.columns:
        rule: dict[str, Any] = {}
        if column.name == constant and len(names) > 1:
            rule["constant"] = CONSTANTS[column.data_type]
        elif column.name == renamed:
            rule["from"] = f"src {column.name}"
        if "constant" not in rule:
            if column.data_type == "DateTime" and draw(st.integers(0, 3)):
                rule["dateFormats"] = [draw(st.sampled_from(sorted(DATE_PATTERNS)))]
            elif column.data_type == "Double" and draw(st.booleans()):
                rule["decimalSeparator"] = ","
                if draw(st.booleans()):
                    rule["thousandsSeparator"] = "."
            if draw(st.integers(0, 3)) == 0:
                rule["nullTokens"] = draw(
                    st.lists(st.sampled_from(TOKENS), unique=True, max_size=3)
                )
        if rule:
            columns[column.name] = rule
    if columns:
        entry["columns"] = columns
    ignored = draw(st.booleans())
    if ignored:
        entry["ignore"] = ["Comment"]

    def typical(column: Column) -> st.SearchStrategy[str]:
        rule = columns.get(column.name, {})
        if column.data_type == "DateTime" and "dateFormats" in rule:
            write = DATE_PATTERNS[rule["dateFormats"][0]]
            return st.datetimes().map(write)
        if column.data_type == "DateTime":
            return st.datetimes().map(lambda m: m.isoformat(timespec="seconds") + "Z")
        if column.data_type == "Double" and "decimalSeparator" in rule:
            grouped = "thousandsSeparator" in rule
            return st.floats(-1e9, 1e9).map(
                lambda x: (
                    (f"{x:,.2f}" if grouped else f"{x:.2f}")
                    .replace(",", "_")
                    .replace(".", ",")
                    .replace("_", ".")
                )
            )
        return {
            "Int64": st.integers(-(10**12), 10**12).map(str),
            "Double": st.floats(allow_nan=False, allow_infinity=False).map(repr),
            "Decimal": st.integers(-999, 999).map(str) | st.just("0.5"),
            "Boolean": st.sampled_from(["true", "false", "false", ""]),
            "String": st.text(max_size=6),
        }[column.data_type]

    read = [c for c in schema.columns if "constant" not in columns.get(c.name, {})]
    sources = [columns.get(c.name, {}).get("from", c.name) for c in read]
    if not match_case:
        sources = [draw(st.sampled_from([s, s.upper(), s.swapcase()])) for s in sources]
    header = draw(st.permutations(sources))
    if ignored:
        header = list(header)
        header.insert(draw(st.integers(0, len(header))), "Comment")
    by_source = dict(zip(sources, read, strict=True))
    rows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 20))):
        row: dict[str, Any] = {}
        for key in header:
            if key == "Comment":
                row[key] = draw(st.text(max_size=4))
                continue
            odd = draw(st.integers(0, 24)) == 0
            row[key] = draw(st.sampled_from(TOKENS + GARBAGE) if odd else typical(by_source[key]))
        if draw(st.integers(0, 40)) == 0:
            row["Unknown"] = "1"
        rows.append(row)
    return schema, entry, rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=profiled_tables())
def test_a_profiled_block_is_each_row_as_the_validator_makes_it(
    table: tuple[TableSchema, dict[str, Any], list[dict[str, Any]]],
) -> None:
    """Under random profiles (tokens, a rename, a constant, an ignored column, matchCase,
    date patterns the column rewrite takes, a decimal comma), whenever check_block vouches
    for a block each row is what the per-row validator gives (types and key order
    included), and a block holding any refused row is never vouched for."""
    schema, entry, rows = table
    profiled = validator(schema, entry, CONTEXT)

    fast = profiled.check_block(rows)
    one_by_one = [profiled(row, index) for index, row in enumerate(rows)]

    if problems(one_by_one):
        assert fast is None
    elif fast is not None:
        assert exactly(built(fast[0])) == exactly(one_by_one)
