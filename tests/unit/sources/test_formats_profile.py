"""The file readers under a table's ingest profile (shared/sources/formats.py with
shared/engine/profile.py): delimiter detection and declaration, encodings, skipped title
lines, named columns, the quote character and the line numbers rows carry.

Every file is read whole (one chunk) and again in chunks of 1, 7 and 64 bytes, which must give
the same items: a chunk boundary may fall inside a byte-order mark, a multi-byte character, a
quoted field or a line ending.
"""

from __future__ import annotations

import codecs
import gzip
from typing import Any

import pytest

from shared.contracts import Unreadable
from shared.engine.profile import compile_profile
from shared.engine.schema import LINE_KEY, Column, TableSchema
from shared.sources.formats import read_rows

CHUNK_SIZES = (1, 7, 64)

#: The table the profiles are compiled for; the readers give the file's own column names, so
#: only derived columns (the line number) depend on it.
TABLE = TableSchema(
    "T",
    (
        Column("a", "String"),
        Column("b", "String"),
        Column("c", "String"),
        Column("Line", "Int64"),
    ),
)
NUMBERED: dict[str, Any] = {"columns": {"Line": {"derived": "lineNumber"}}}


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into pieces of ``size`` bytes (the last may be shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def read_as(data: bytes, entry: dict[str, Any], size: int | None, kind: str = "csv") -> list[Any]:
    """Everything ``read_rows`` yields for ``data`` under the profile ``entry``, fed whole
    (``size`` None) or in ``size``-byte chunks."""
    profile = compile_profile(TABLE, entry, "t")
    chunks = [data] if size is None else split(data, size)
    return list(read_rows(chunks, kind, profile=profile))


def read(data: bytes, entry: dict[str, Any], kind: str = "csv") -> list[Any]:
    """What ``data`` gives under ``entry``, checked to be the same for every chunk size."""
    whole = read_as(data, entry, None, kind)
    for size in CHUNK_SIZES:
        assert read_as(data, entry, size, kind) == whole, f"{size}-byte chunks differ"
    return whole


def rows_of(items: list[Any]) -> list[Any]:
    return [item for item in items if not isinstance(item, Unreadable)]


def problems_of(items: list[Any]) -> list[Unreadable]:
    return [item for item in items if isinstance(item, Unreadable)]


# --- delimiter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_the_delimiter_is_sniffed_from_the_header(delimiter: str) -> None:
    """Without a declared delimiter, a file of ; tab | or , is split on its own."""
    data = delimiter.join(["a", "b", "c"]) + "\n1" + delimiter + "2" + delimiter + "3\n"

    assert read(data.encode(), {}) == [{"a": "1", "b": "2", "c": "3"}]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'"x,y,z";b;c\n1;2;3\n', {"x,y,z": "1", "b": "2", "c": "3"}),
        (b'"x;y;z",b,c\n1,2,3\n', {"x;y;z": "1", "b": "2", "c": "3"}),
        (b'"p,q,r,s"\ta\n1\t2\n', {"p,q,r,s": "1", "a": "2"}),
        (b'"p;q;r"|"s,t,u"|a\n1|2|3\n', {"p;q;r": "1", "s,t,u": "2", "a": "3"}),
    ],
)
def test_delimiters_inside_a_quoted_header_field_do_not_fool_the_sniff(
    data: bytes, expected: dict[str, str]
) -> None:
    """A quoted header name holding more of another delimiter than the file's own: the sniff
    counts only what is outside quotes."""
    assert read(data, {}) == [expected]


def test_the_sniff_honours_a_declared_quote_character() -> None:
    """With quote "'" declared, the semicolons inside 'x;y;z' are not counted: the file is
    split on commas."""
    data = b"'x;y;z',b\n1,2\n"

    assert read(data, {"csv": {"quote": "'"}}) == [{"x;y;z": "1", "b": "2"}]


def test_a_declared_delimiter_wins_over_the_sniff() -> None:
    """A declared delimiter is used as given: "a;b,c" splits on whichever is declared, and a
    header the sniff reads as ; (three of them, one ,) splits on , when , is declared."""
    data = b"a;b,c\n1;2,3\n"

    assert read(data, {"csv": {"delimiter": ","}}) == [{"a;b": "1;2", "c": "3"}]
    assert read(data, {"csv": {"delimiter": ";"}}) == [{"a": "1", "b,c": "2,3"}]
    sniffed_semicolons = b"a;b;c,d\n1;2;3,4\n"
    assert read(sniffed_semicolons, {}) == [{"a": "1", "b": "2", "c,d": "3,4"}]
    assert read(sniffed_semicolons, {"csv": {"delimiter": ","}}) == [{"a;b;c": "1;2;3", "d": "4"}]


# --- encodings ---------------------------------------------------------------------------------

CITIES = "City;Price\nKöln;5 €\nMünchen;7,50 €\n"
CITY_ROWS = [{"City": "Köln", "Price": "5 €"}, {"City": "München", "Price": "7,50 €"}]


@pytest.mark.parametrize("declared", ["cp1252", "windows-1252", "CP1252"])
def test_a_declared_cp1252_file_is_read_right(declared: str) -> None:
    """ö and € (0x80 in cp1252) come out as themselves, whatever the chunking."""
    data = CITIES.encode("cp1252")
    assert b"\x80" in data

    assert read(data, {"encoding": declared}) == CITY_ROWS


@pytest.mark.parametrize("declared", ["latin-1", "iso-8859-1"])
def test_a_declared_latin_1_file_is_read_right(declared: str) -> None:
    """Latin-1's ö, ü and ¤ are read as themselves."""
    data = "City;Price\nKöln;5 ¤\nMünchen;7\n".encode("latin-1")

    assert read(data, {"encoding": declared}) == [
        {"City": "Köln", "Price": "5 ¤"},
        {"City": "München", "Price": "7"},
    ]


@pytest.mark.parametrize(
    ("bom", "codec"),
    [
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF8, "utf-8"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-8-bom"],
)
def test_a_byte_order_mark_is_recognised_without_declaring(bom: bytes, codec: str) -> None:
    """UTF-16 (either byte order) and UTF-8 with a byte-order mark need no declaration; the
    mark is not part of the first column's name."""
    data = bom + CITIES.encode(codec)

    assert read(data, {}) == CITY_ROWS


def test_utf_16_rows_carry_their_line_numbers() -> None:
    """A UTF-16 file's rows are numbered by its lines, as a UTF-8 file's are."""
    data = codecs.BOM_UTF16_LE + "a\tb\n1\t2\n\n3\t4\n".encode("utf-16-le")

    assert read(data, NUMBERED) == [
        {"a": "1", "b": "2", LINE_KEY: 2},
        {"a": "3", "b": "4", LINE_KEY: 4},
    ]


def test_an_undeclared_cp1252_file_says_to_declare_the_encoding() -> None:
    """cp1252 bytes read as UTF-8: each line that is not UTF-8 is an Unreadable saying to
    declare the encoding (naming the option), and reading goes on."""
    data = "City;Price\nKöln;5\nBonn;6\nMünchen;7\n".encode("cp1252")

    items = read(data, {})

    assert rows_of(items) == [{"City": "Bonn", "Price": "6"}]
    refused = problems_of(items)
    assert [item.line for item in refused] == [2, 4]
    for item in refused:
        assert "not UTF-8" in item.reason
        assert "declare its encoding" in item.reason
        assert '"encoding": "cp1252"' in item.reason
        assert not item.final


@pytest.mark.parametrize("size", [None, *CHUNK_SIZES])
def test_a_byte_cp1252_lacks_ends_the_file_with_an_unreadable_naming_cp1252(
    size: int | None,
) -> None:
    """0x81 has no character in cp1252: declared cp1252, the file ends in one final
    Unreadable naming cp1252 and the byte's offset (not an exception), whatever the
    chunking."""
    data = b"City;Price\nK\x81ln;5\n"

    items = read_as(data, {"encoding": "cp1252"}, size)

    assert rows_of(items) == []
    last = items[-1]
    assert isinstance(last, Unreadable)
    assert last.final
    assert "cp1252" in last.reason
    assert "(byte 12)" in last.reason
    assert last.line == 2  # the line the bad byte is on, whatever the chunking


def test_rows_before_a_byte_cp1252_lacks_arrive_whatever_the_chunking() -> None:
    """Twenty good rows, then a line with 0x81, declared cp1252: the good rows come before
    the final Unreadable whether the file comes in one chunk or many (the module's promise:
    the good rows of a damaged file still arrive)."""
    good = b"".join(f"Town {n};{n}\n".encode() for n in range(20))
    data = b"City;Price\n" + good + b"K\x81ln;5\nBonn;6\n"
    expected = [{"City": f"Town {n}", "Price": str(n)} for n in range(20)]

    got = {
        size: rows_of(read_as(data, {"encoding": "cp1252"}, size)) for size in (None, *CHUNK_SIZES)
    }

    assert {size: len(rows) for size, rows in got.items()} == dict.fromkeys(got, 20)
    assert all(rows == expected for rows in got.values())


# --- skipped lines, named columns ----------------------------------------------------------------


def test_skip_lines_drops_title_lines_above_the_header() -> None:
    """Two title lines (with commas, which must not decide the delimiter) are skipped; the
    header is the third line and the delimiter is sniffed from it."""
    data = b"Sales report, all regions, 2026\nMade by: someone, somewhere\na;b\n1;2\n3;4\n"

    assert read(data, {"csv": {"skipLines": 2}}) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_skip_lines_past_the_end_gives_nothing() -> None:
    """A file shorter than its skipped lines has no rows and no problem."""
    assert read(b"only\ntitle\n", {"csv": {"skipLines": 5}}) == []


def test_a_file_without_a_header_takes_the_declared_column_names() -> None:
    """header false: every line is a row, its fields named by csv.columnNames in order."""
    entry = {"csv": {"header": False, "columnNames": ["a", "b"], "delimiter": ";"}}

    assert read(b"1;2\n3;4\n", entry) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_a_headerless_file_with_skipped_lines_and_line_numbers() -> None:
    """header false after a skipped title: rows from line 2, numbered by their file lines."""
    entry = {"csv": {"header": False, "columnNames": ["a", "b"], "skipLines": 1}, **NUMBERED}

    assert read(b"title;x\n1;2\n\n3;4\n", entry) == [
        {"a": "1", "b": "2", LINE_KEY: 2},
        {"a": "3", "b": "4", LINE_KEY: 4},
    ]


def test_column_names_rename_the_header_positionally() -> None:
    """header true with columnNames: the file's header row is read and replaced, name by
    name, by the declared ones."""
    entry = {"csv": {"columnNames": ["a", "b", "c"]}}

    assert read(b"Alpha,Beta,Gamma\n1,2,3\n", entry) == [{"a": "1", "b": "2", "c": "3"}]


@pytest.mark.parametrize("header", [b"x,y,z\n", b"x\n"])
def test_column_names_of_another_count_than_the_header_stop_the_file(header: bytes) -> None:
    """A header of 3 (or 1) fields against 2 declared names: one final Unreadable naming
    csv.columnNames and both counts, and no row is guessed."""
    entry = {"csv": {"columnNames": ["a", "b"]}}

    items = read(header + b"1,2\n", entry)

    assert len(items) == 1
    (problem,) = items
    assert isinstance(problem, Unreadable)
    assert problem.final
    assert "csv.columnNames" in problem.reason
    assert f"has {header.count(b',') + 1} fields" in problem.reason
    assert "gives 2 names" in problem.reason


# --- quotes ------------------------------------------------------------------------------------


def test_a_declared_quote_character_keeps_delimiters_and_doubled_quotes() -> None:
    """quote "'": a field in single quotes holds the delimiter, a doubled quote, a double
    quote as plain text and a line break; unquoted fields are as they are."""
    data = b"a,b\n'x,y','it''s'\n'say \"hi\"',plain\n'two\nlines',\"3\"\n"

    assert read(data, {"csv": {"quote": "'"}}) == [
        {"a": "x,y", "b": "it's"},
        {"a": 'say "hi"', "b": "plain"},
        {"a": "two\nlines", "b": '"3"'},
    ]


def test_double_quotes_with_embedded_delimiters_and_quotes() -> None:
    """The default quote: ; inside quotes is text, "" is one quote, on a ; file."""
    data = b'a;b\n"1;2";"say ""hi"""\n3;4\n'

    assert read(data, {}) == [{"a": "1;2", "b": 'say "hi"'}, {"a": "3", "b": "4"}]


# --- line numbers ------------------------------------------------------------------------------


def test_csv_rows_carry_the_line_they_start_on() -> None:
    """With a profile deriving lineNumber: a skipped title, blank lines, CRLF endings and a
    quoted field over three lines are counted, so each row carries its first line."""
    data = (
        b"Title, with a comma\r\n"  # line 1, skipped
        b"a,b\r\n"  # 2, header
        b"1,2\r\n"  # 3
        b"\r\n"  # 4, blank
        b'"multi\r\nline\r\nfield",3\r\n'  # 5-7
        b"\r\n"  # 8
        b"\r\n"  # 9
        b"5,6\r\n"  # 10
        b"7,8"  # 11, no final newline
    )

    rows = read(data, {"csv": {"skipLines": 1}, **NUMBERED})

    assert [row[LINE_KEY] for row in rows] == [3, 5, 10, 11]
    # CRLF is read like LF inside a quoted field too: no stray carriage returns in values.
    assert rows[1] == {"a": "multi\nline\nfield", "b": "3", LINE_KEY: 5}


def test_line_numbers_count_lines_before_the_header_and_bad_lines() -> None:
    """Blank lines before the header, a row of the wrong width and a line that is not UTF-8
    each keep their place in the count."""
    data = b"\n\na,b\n1,2\n1,2,3\n\xff,x\n5,6\n"

    items = read(data, NUMBERED)

    assert items[0] == {"a": "1", "b": "2", LINE_KEY: 4}
    assert [(type(item).__name__, item.line) for item in items[1:3]] == [
        ("Unreadable", 5),
        ("Unreadable", 6),
    ]
    assert items[3] == {"a": "5", "b": "6", LINE_KEY: 7}


def test_many_numbered_rows_across_chunks() -> None:
    """Three hundred rows with a blank line after every fiftieth: each row's number is its
    line in the file, whatever the chunking (more rows than the readers' pieces)."""
    lines = [b"a,b"]
    expected = []
    for n in range(300):
        lines.append(f"{n},x{n}".encode())
        expected.append({"a": str(n), "b": f"x{n}", LINE_KEY: len(lines)})
        if n % 50 == 49:
            lines.append(b"")
    data = b"\n".join(lines) + b"\n"

    assert read(data, NUMBERED) == expected


def test_ndjson_rows_carry_their_line_numbers() -> None:
    """NDJSON rows too: blank lines and a bad line are counted."""
    data = b'{"a": "1"}\n\n{bad\n{"a": "2"}\r\n{"a": "3"}'

    items = read(data, NUMBERED, kind="ndjson")

    assert rows_of(items) == [
        {"a": "1", LINE_KEY: 1},
        {"a": "2", LINE_KEY: 4},
        {"a": "3", LINE_KEY: 5},
    ]
    assert [item.line for item in problems_of(items)] == [3]


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("csv", b"a,b\n1,2\n\n3,4\n"),
        ("csv", b'a,b\n"1\n1",2\n3,4\n'),
        ("ndjson", b'{"a": 1}\n\n{"a": 2}\n'),
    ],
)
def test_without_a_derived_line_number_rows_carry_no_line_key(kind: str, data: bytes) -> None:
    """A profile that derives no line number (and no profile at all) gives rows with the
    file's columns only."""
    for entry in ({}, {"csv": {"skipLines": 0}, "columns": {"a": {"from": "a"}}}):
        rows = read(data, entry, kind)
        assert len(rows) == 2
        assert all(LINE_KEY not in row for row in rows)
    unprofiled = rows_of(list(read_rows([data], kind)))
    assert len(unprofiled) == 2
    assert all(LINE_KEY not in row for row in unprofiled)


# --- together ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flagged", [True, False], ids=["gzip-flag", "gzip-magic"])
def test_gzip_cp1252_and_semicolons_together(flagged: bool) -> None:
    """A gzipped cp1252 file split on ; (sniffed), with numbered rows: decompressed,
    decoded and split right in one chunk and in small ones."""
    data = gzip.compress(("Titel\n" + CITIES).encode("cp1252"))
    entry = {"encoding": "cp1252", "csv": {"skipLines": 1}, **NUMBERED}
    profile = compile_profile(TABLE, entry, "t")

    whole = list(read_rows([data], "csv", gzipped=flagged, profile=profile))
    for size in CHUNK_SIZES:
        assert list(read_rows(split(data, size), "csv", gzipped=flagged, profile=profile)) == whole

    assert whole == [{**row, LINE_KEY: line} for row, line in zip(CITY_ROWS, (3, 4), strict=True)]
