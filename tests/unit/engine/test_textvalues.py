"""Readers of values as their owners wrote them (shared/engine/textvalues.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.engine.profile import compile_profile
from shared.engine.schema import Column, TableSchema
from shared.engine.textvalues import (
    PatternError,
    compile_boolean,
    compile_datetime,
    compile_iso,
    compile_number,
    compile_rewrite,
    format_utc,
)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("MMM d yyyy", "Jan 1 2000", "2000-01-01T00:00:00.000Z"),
        ("MMM d yyyy", "dec 31 1999", "1999-12-31T00:00:00.000Z"),
        ("MMMM d, yyyy", "September 9, 2021", "2021-09-09T00:00:00.000Z"),
        ("yyyy/MM/dd", "2012/01/01", "2012-01-01T00:00:00.000Z"),
        ("dd.MM.yyyy", "31.12.2020", "2020-12-31T00:00:00.000Z"),
        ("dd/MM/yy", "05/06/29", "2029-06-05T00:00:00.000Z"),
        ("dd/MM/yy", "05/06/30", "1930-06-05T00:00:00.000Z"),
        ("M/d/yyyy h:mm tt", "1/2/2020 12:05 AM", "2020-01-02T00:05:00.000Z"),
        ("M/d/yyyy h:mm tt", "1/2/2020 12:05 PM", "2020-01-02T12:05:00.000Z"),
        ("M/d/yyyy h:mm tt", "1/2/2020 1:05 pm", "2020-01-02T13:05:00.000Z"),
        ("yyyy-MM-dd HH:mm:ss.fff", "2020-01-01 10:00:00.123", "2020-01-01T10:00:00.123Z"),
        ("yyyy-MM-dd'T'HH:mm:ssK", "2020-01-01T10:00:00+02:00", "2020-01-01T08:00:00.000Z"),
        ("yyyy-MM-dd'T'HH:mm:ssK", "2020-01-01T10:00:00Z", "2020-01-01T10:00:00.000Z"),
        ("ddd, dd MMM yyyy HH:mm:ss", "Wed, 01 Jan 2020 10:00:00", "2020-01-01T10:00:00.000Z"),
        ("yyyyMMdd", "20200229", "2020-02-29T00:00:00.000Z"),
        ("unixSeconds", "946684800", "2000-01-01T00:00:00.000Z"),
        ("unixSeconds", "946684800.5", "2000-01-01T00:00:00.500Z"),
        ("unixMilliseconds", "946684800123", "2000-01-01T00:00:00.123Z"),
    ],
)
def test_patterns_read_what_their_owners_wrote(pattern: str, text: str, expected: str) -> None:
    assert compile_datetime(pattern)(text) == expected


def test_naive_values_are_read_in_the_declared_zone_and_written_in_utc() -> None:
    paris = compile_datetime("dd.MM.yyyy HH:mm", "Europe/Paris")

    assert paris("15.01.2020 12:00") == "2020-01-15T11:00:00.000Z"  # CET, UTC+1
    assert paris("15.07.2020 12:00") == "2020-07-15T10:00:00.000Z"  # CEST, UTC+2
    # An explicit offset wins over the zone.
    offset = compile_datetime("dd.MM.yyyy HH:mmzzz", "Europe/Paris")
    assert offset("15.07.2020 12:00+00:00") == "2020-07-15T12:00:00.000Z"
    assert compile_iso("America/New_York")("2020-01-15T12:00:00") == "2020-01-15T17:00:00.000Z"


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("yyyy/MM/dd", "2012-01-01"),  # other separators
        ("yyyy/MM/dd", "2021/02/29"),  # not a real date
        ("MMM d yyyy", "Foo 1 2000"),  # not a month
        ("MMMM d yyyy", "Jan 1 2000"),  # MMMM is the full name, as in .NET
        ("MMM d yyyy", "January 1 2000"),  # MMM the abbreviation
        ("dd.MM.yyyy", "1.1.2000"),  # dd wants two digits
        ("M/d/yyyy h:mm tt", "1/2/2020 13:05 PM"),  # no 13 o'clock on a 12-hour clock
        ("yyyy-MM-ddK", "2020-01-01+15:00"),  # offsets end at 14 hours
        ("unixSeconds", "soon"),
        ("unixSeconds", "1e300"),
    ],
)
def test_text_that_does_not_fit_is_refused_with_the_pattern_named(pattern: str, text: str) -> None:
    with pytest.raises(ValueError) as refused:
        compile_datetime(pattern)(text)

    assert repr(text[:40]) in str(refused.value)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("MM/dd", "year, the month and the day"),
        ("yyyy-MM-dd h:mm", "without AM/PM"),
        ("yyyy-MM-dd HH:mm tt", "24-hour clock"),
        ("yyyy-MM-dd yyyy", "twice"),
        ("yyyyy-MM-dd", "too many letters"),
        ("yyyy-MM-dd 'at", "unclosed quote"),
        ("yyyy-MM-dd at", "not a date-time specifier"),
        ("yyyy-MM-dd ffffffff", "at most 7"),
    ],
)
def test_patterns_that_cannot_be_read_are_refused_when_compiled(pattern: str, problem: str) -> None:
    with pytest.raises(PatternError, match=problem):
        compile_datetime(pattern)


def test_an_unknown_time_zone_is_refused_when_compiled() -> None:
    with pytest.raises(PatternError, match="Mars/Olympus"):
        compile_datetime("yyyy-MM-dd", "Mars/Olympus")


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9998, 12, 31)))
def test_a_pattern_reads_back_what_strftime_wrote(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    text = moment.strftime("%d.%m.%Y %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"

    assert compile_datetime("dd.MM.yyyy HH:mm:ss.fff")(text) == format_utc(
        moment.replace(tzinfo=UTC)
    )


@pytest.mark.parametrize(
    ("decimal", "thousands", "text", "expected"),
    [
        (",", ".", "1.234,5", "1234.5"),
        (",", ".", "-1.234.567,25", "-1234567.25"),
        (",", None, "12,5", "12.5"),
        (",", " ", "1 234,5", "1234.5"),
        (".", ",", "1,234.5", "1234.5"),
        (".", ",", "1234.5", "1234.5"),  # groups are optional
        (".", "'", "1'234'567", "1234567"),
        (",", ".", "1,5e3", "1.5e3"),
    ],
)
def test_numbers_with_local_separators(
    decimal: str, thousands: str | None, text: str, expected: str
) -> None:
    assert compile_number(decimal, thousands)(text) == expected


@pytest.mark.parametrize("text", ["1.2.3", "12.34,5", "1..234", "1,2", "abc", ""])
def test_malformed_groups_are_refused_not_guessed(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number"):
        compile_number(",", ".")(text) if text != "1,2" else compile_number(".", ",")(text)


def test_separator_declarations_are_checked() -> None:
    with pytest.raises(PatternError):
        compile_number(";")
    with pytest.raises(PatternError):
        compile_number(",", ",")


def test_boolean_words() -> None:
    read = compile_boolean(["yes", "Y", "1"], ["no", "n", "0"])

    assert [read(w) for w in ("Yes", " y ", "1", "TRUE", "no", "N", "0", "false")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="maybe"):
        read("maybe")
    with pytest.raises(PatternError, match="both"):
        compile_boolean(["yes"], ["YES"])


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_unix_milliseconds_keep_every_millisecond(millis: int) -> None:
    seconds, rest = divmod(millis, 1000)
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, milliseconds=rest)

    assert compile_datetime("unixMilliseconds")(str(millis)) == format_utc(expected)


# -- whole-column rewrites (the block path's date patterns) -------------------------------------

_REWRITE_PATTERNS = [
    "yyyy/MM/dd HH:mm:ss",  # ISO order: checked and translated
    "yyyy-MM-dd",
    "yyyy.MM.dd HH:mm",
    "yyyy-MM-dd HH:mm:ss.fff",
    "yyyy:MM:dd HH-mm-ss",  # ISO order with the separators swapped both ways
    "dd.MM.yyyy",  # another order: re.sub
    "dd/MM/yyyy HH:mm",
]


def _written(moment: datetime, pattern: str) -> str:
    """``moment`` as ``pattern`` writes it (the specifiers these patterns use)."""
    out = pattern
    for spec, value in (
        ("yyyy", f"{moment.year:04d}"),
        ("MM", f"{moment.month:02d}"),
        ("dd", f"{moment.day:02d}"),
        ("HH", f"{moment.hour:02d}"),
        ("mm", f"{moment.minute:02d}"),
        ("ss", f"{moment.second:02d}"),
        ("fff", f"{moment.microsecond // 1000:03d}"),
    ):
        out = out.replace(spec, value)
    return out


_cells = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda m: ("moment", m)
    ),
    st.sampled_from(
        ["2000/02/30 10:00:00", "31.04.2001", "2001-13-01", "0000-01-01", "2024-02-29T10:00:00Z"]
    ).map(lambda t: ("text", t)),
    st.text(alphabet="0123456789/-.: T\nZ", max_size=20).map(lambda t: ("text", t)),
)


@given(st.sampled_from(_REWRITE_PATTERNS), st.lists(_cells, min_size=1, max_size=12))
def test_a_column_rewrite_reads_what_the_value_reader_reads(
    pattern: str, cells: list[tuple[str, Any]]
) -> None:
    """Whenever the whole-column rewrite (and the engine's ISO column check after it) vouches
    for a column, each value is what the per-value reader gives it; a column it cannot vouch
    for goes value by value."""
    table = TableSchema("T", (Column("d", "DateTime"),))
    rule = compile_profile(table, {"dateFormats": [pattern]}, "t").columns["d"]
    assert rule.rewrite is not None and rule.parse is not None
    values = [_written(v, pattern) if kind == "moment" else v for kind, v in cells]

    out = rule.rewrite("\n".join(values), len(values))

    if out is not None:
        assert out == [rule.parse(value) for value in values]
    elif all(kind == "moment" and (v.month, v.day) != (2, 29) for kind, v in cells):
        # Real moments written in the pattern always take the fast path, but for 29 February,
        # which the ISO column check leaves to the per-value reader (leap years).
        raise AssertionError(f"the rewrite refused real moments: {values!r}")


def test_patterns_the_column_rewrite_leaves_to_the_value_reader() -> None:
    """Names, 12-hour clocks, offsets, epochs, a time zone, one character for two places."""
    for pattern, zone in [
        ("MMM d yyyy", None),
        ("M/d/yyyy h:mm tt", None),
        ("yyyy-MM-dd HH:mm zzz", None),
        ("unixSeconds", None),
        ("yyyy-MM-dd", "Europe/Paris"),
    ]:
        assert compile_rewrite(pattern, zone) is None, pattern
    # One character in two places of another meaning: the re.sub way, still right.
    rewrite = compile_rewrite("yyyy-MM-dd-HH")
    assert rewrite is not None and rewrite("2000-01-02-03", 1) == ["2000-01-02T03:00:00.000Z"]
