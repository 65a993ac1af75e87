"""Unit tests for shared.sources.formats: format detection and the streaming CSV/NDJSON/JSON/gzip
readers.

Every input is built in memory and fed in small pieces (7-byte and 1-byte chunks) so the
readers are shown to stream and to be safe wherever a chunk boundary falls.
"""

from __future__ import annotations

import csv
import gc
import gzip
import itertools
import json
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.sources import formats
from shared.sources.formats import (
    FormatError,
    Unreadable,
    _lines_named,
    _spanned,
    detect,
    read_rows,
)

CHUNK_SIZES = [7, 1]
BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------
# helpers


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into pieces of ``size`` bytes (the last may be shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def read(
    data: bytes,
    kind: str,
    size: int,
    *,
    gzipped: bool = False,
    max_bytes: int | None = None,
) -> list[Any]:
    """Everything ``read_rows`` yields for ``data`` fed in ``size``-byte chunks."""
    chunks = split(data, size)
    if max_bytes is None:
        return list(read_rows(chunks, kind, gzipped=gzipped))
    return list(read_rows(chunks, kind, gzipped=gzipped, max_bytes=max_bytes))


def rows_of(items: Iterable[Any]) -> list[Any]:
    """The items that are rows (not Unreadable)."""
    return [item for item in items if not isinstance(item, Unreadable)]


def problems_of(items: Iterable[Any]) -> list[Unreadable]:
    """The Unreadable items."""
    return [item for item in items if isinstance(item, Unreadable)]


def restream(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a lazy byte stream into ``size``-byte chunks without materialising it."""
    buffer = b""
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


class CountingSource:
    """An iterable of chunks that counts how many chunks the reader has pulled."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.pulled = 0
        self.exhausted = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.pulled += 1
            yield chunk
        self.exhausted = True


@pytest.fixture(params=CHUNK_SIZES, ids=lambda size: f"chunk{size}")
def size(request: pytest.FixtureRequest) -> int:
    """The chunk size the input is fed in."""
    value: int = request.param
    return value


# Sample files of each format, with the rows they must give.
CSV_SAMPLE = b"id,name,score\n1,alpha,1.5\n2,beta,2\n3,gamma,-3e2\n"
CSV_ROWS: list[dict[str, Any]] = [
    {"id": "1", "name": "alpha", "score": "1.5"},
    {"id": "2", "name": "beta", "score": "2"},
    {"id": "3", "name": "gamma", "score": "-3e2"},
]
JSON_ROWS: list[dict[str, Any]] = [
    {"id": 1, "name": "alpha", "score": 1.5},
    {"id": 2, "name": "beta", "score": 2},
    {"id": 3, "name": "gamma", "score": -300.0},
]
NDJSON_SAMPLE = b"".join(json.dumps(row).encode() + b"\n" for row in JSON_ROWS)
JSON_SAMPLE = json.dumps(JSON_ROWS).encode()
SAMPLES: dict[str, tuple[bytes, list[dict[str, Any]]]] = {
    "csv": (CSV_SAMPLE, CSV_ROWS),
    "ndjson": (NDJSON_SAMPLE, JSON_ROWS),
    "json": (JSON_SAMPLE, JSON_ROWS),
}
KINDS = list(SAMPLES)


def many_rows(kind: str, count: int) -> bytes:
    """A file of ``kind`` holding ``count`` varied rows ``{"i": n, "text": ...}``."""
    rows = [{"i": n, "text": f"row {n} {n * 7919 % 10007}"} for n in range(count)]
    if kind == "csv":
        return b"i,text\n" + b"".join(f"{r['i']},{r['text']}\n".encode() for r in rows)
    if kind == "ndjson":
        return b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    return json.dumps(rows).encode()


def expected_many(kind: str, count: int) -> list[dict[str, Any]]:
    """The rows ``many_rows(kind, count)`` must give."""
    rows = [{"i": n, "text": f"row {n} {n * 7919 % 10007}"} for n in range(count)]
    if kind == "csv":
        return [{"i": str(r["i"]), "text": r["text"]} for r in rows]
    return rows


# --------------------------------------------------------------------------------------------
# detect


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sales.csv", ("csv", False)),
        ("sales.ndjson", ("ndjson", False)),
        ("sales.jsonl", ("ndjson", False)),
        ("sales.json", ("json", False)),
        ("sales.csv.gz", ("csv", True)),
        ("sales.ndjson.gz", ("ndjson", True)),
        ("sales.jsonl.gz", ("ndjson", True)),
        ("sales.json.gz", ("json", True)),
        ("SALES.CSV", ("csv", False)),
        ("Sales.NDJSON", ("ndjson", False)),
        ("SALES.JSONL.GZ", ("ndjson", True)),
        ("folder/Sales.Json.Gz", ("json", True)),
        ("2024.01.report.csv", ("csv", False)),
        ("export.tsv", ("csv", False)),  # the delimiter is found from the first line
        ("export.TAB.gz", ("csv", True)),
    ],
)
def test_detect_by_extension(name: str, expected: tuple[str, bool]) -> None:
    """The extension (any case, with or without .gz) gives the format and whether it is gzip."""
    assert detect(name) == expected
    assert detect(name, None) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/csv", ("csv", False)),
        ("text/csv; charset=utf-8", ("csv", False)),
        ("TEXT/CSV", ("csv", False)),
        ("application/x-ndjson", ("ndjson", False)),
        ("application/ndjson", ("ndjson", False)),
        ("application/jsonl", ("ndjson", False)),
        ("application/json", ("json", False)),
        ("application/json; charset=UTF-8", ("json", False)),
    ],
)
def test_detect_by_content_type(content_type: str, expected: tuple[str, bool]) -> None:
    """A name without a known extension falls back to the content type."""
    assert detect("upload", content_type) == expected


@pytest.mark.parametrize("content_type", ["application/gzip", "application/x-gzip"])
@pytest.mark.parametrize(
    ("name", "kind"), [("sales.csv", "csv"), ("sales.jsonl", "ndjson"), ("sales.json", "json")]
)
def test_detect_gzip_content_type_with_plain_name(name: str, kind: str, content_type: str) -> None:
    """A gzip content type marks the file gzipped; the name still gives the format."""
    assert detect(name, content_type) == (kind, True)


def test_detect_name_wins_over_content_type() -> None:
    """The file name's extension is used before the content type."""
    assert detect("sales.csv", "application/json") == ("csv", False)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("report.xlsx", None),
        ("report", None),
        ("report.txt", "text/plain"),
        ("blob", "application/octet-stream"),
        ("archive.gz", "application/gzip"),
        ("csv", None),
    ],
)
def test_detect_unknown_raises_actionable_format_error(name: str, content_type: str | None) -> None:
    """An unknown kind is a FormatError naming the file and telling how to fix it."""
    with pytest.raises(FormatError) as caught:
        detect(name, content_type)
    message = str(caught.value)
    assert repr(name) in message
    for hint in (".csv", ".ndjson", ".json", "content type"):
        assert hint in message


def test_format_error_is_a_value_error() -> None:
    """FormatError is a ValueError, so callers catching bad input catch it."""
    assert issubclass(FormatError, ValueError)


def test_read_rows_unknown_kind_raises_format_error() -> None:
    """An unknown kind passed to read_rows is a FormatError listing the known formats."""
    with pytest.raises(FormatError, match="csv, ndjson, json"):
        read_rows([b"a,b\n"], "xml")


# --------------------------------------------------------------------------------------------
# CSV


def test_csv_header_and_rows_give_dicts_of_strings(size: int) -> None:
    """The first row is the header; each later row is a dict of header -> text value."""
    items = read(CSV_SAMPLE, "csv", size)
    assert items == CSV_ROWS
    assert all(isinstance(value, str) for row in items for value in row.values())


def test_csv_quoted_fields(size: int) -> None:
    """Quoted fields may hold commas, doubled quotes and newlines, and rows after still come."""
    data = (
        b'id,text,note\n1,"a, b","say ""hi"""\n2,"line one\nline two\n\nline four",x\n3,"",plain\n'
    )
    assert read(data, "csv", size) == [
        {"id": "1", "text": "a, b", "note": 'say "hi"'},
        {"id": "2", "text": "line one\nline two\n\nline four", "note": "x"},
        {"id": "3", "text": "", "note": "plain"},
    ]


def test_csv_crlf_line_endings(size: int) -> None:
    """CRLF line endings are read like LF, with no stray carriage returns in values."""
    data = b"id,name\r\n1,alpha\r\n2,beta\r\n"
    assert read(data, "csv", size) == [{"id": "1", "name": "alpha"}, {"id": "2", "name": "beta"}]


def test_csv_byte_order_mark_is_dropped(size: int) -> None:
    """A UTF-8 BOM does not become part of the first column's name."""
    data = BOM + "id,name\n1,café\n".encode()
    assert read(data, "csv", size) == [{"id": "1", "name": "café"}]


def test_csv_utf8_multibyte_across_chunks(size: int) -> None:
    """Multi-byte UTF-8 characters split across chunk boundaries decode intact."""
    data = "id,name\n1,日本語テキスト\n2,Ünïcødé €\n".encode()
    assert read(data, "csv", size) == [
        {"id": "1", "name": "日本語テキスト"},
        {"id": "2", "name": "Ünïcødé €"},
    ]


def test_csv_blank_lines_are_skipped(size: int) -> None:
    """Blank lines (LF or CRLF) anywhere, even before the header, give no rows and no problems."""
    data = b"\n\r\nid,name\n\n1,alpha\r\n\r\n\n2,beta\n\n\n"
    assert read(data, "csv", size) == [{"id": "1", "name": "alpha"}, {"id": "2", "name": "beta"}]


def test_csv_last_row_without_newline(size: int) -> None:
    """A last row with no trailing newline is still read."""
    assert read(b"id,name\n1,alpha\n2,beta", "csv", size) == [
        {"id": "1", "name": "alpha"},
        {"id": "2", "name": "beta"},
    ]


def test_csv_header_names_are_stripped(size: int) -> None:
    """Spaces around header names are removed."""
    assert read(b" id , name \n1,alpha\n", "csv", size) == [{"id": "1", "name": "alpha"}]


def test_csv_header_only_and_empty_file(size: int) -> None:
    """A header with no rows, or an empty file, gives nothing at all."""
    assert read(b"id,name\n", "csv", size) == []
    assert list(read_rows([], "csv")) == []


@pytest.mark.parametrize(
    ("bad_line", "fields"),
    [(b"2,beta,extra", 3), (b"2", 1)],
    ids=["too-many", "too-few"],
)
def test_csv_ragged_row_is_unreadable_and_reading_goes_on(
    size: int, bad_line: bytes, fields: int
) -> None:
    """A row with the wrong number of fields is an Unreadable naming its line; later rows come."""
    data = b"id,name\n1,alpha\n" + bad_line + b"\n3,gamma\n"
    items = read(data, "csv", size)
    assert len(items) == 3
    assert items[0] == {"id": "1", "name": "alpha"}
    problem = items[1]
    assert isinstance(problem, Unreadable)
    assert problem.line == 3
    assert "line 3" in problem.reason
    assert f"{fields} fields" in problem.reason
    assert "header has 2" in problem.reason
    assert problem.text == bad_line.decode()
    assert items[2] == {"id": "3", "name": "gamma"}


def test_csv_ragged_row_line_counts_physical_lines(size: int) -> None:
    """Line numbers count physical lines, so a multi-line quoted field shifts them."""
    data = b'id,name\n1,"two\nlines"\n3,gamma,extra\n4,delta\n'
    items = read(data, "csv", size)
    assert items[0] == {"id": "1", "name": "two\nlines"}
    assert isinstance(items[1], Unreadable)
    assert items[1].line == 4
    assert items[2] == {"id": "4", "name": "delta"}
    assert len(items) == 3


@pytest.mark.parametrize(
    "header",
    [b"id,name,id", b"id,,name", b"id,name,", b" id ,id", b","],
    ids=["duplicate", "empty-middle", "empty-last", "duplicate-after-strip", "all-empty"],
)
def test_csv_bad_header_is_unreadable_then_stops(size: int, header: bytes) -> None:
    """Duplicate or empty header names give one Unreadable and no rows at all."""
    data = header + b"\n1,2,3\n4,5,6\n"
    items = read(data, "csv", size)
    assert len(items) == 1
    problem = items[0]
    assert isinstance(problem, Unreadable)
    assert problem.line == 1
    assert "header" in problem.reason


def test_csv_invalid_utf8_line_is_unreadable_and_reading_goes_on(size: int) -> None:
    """A line that is not UTF-8 (Latin-1 'café') is an Unreadable naming the line and UTF-8."""
    data = b"id,name\n1,alpha\n2,caf\xe9\n3,gamma\n"
    items = read(data, "csv", size)
    assert len(items) == 3
    assert items[0] == {"id": "1", "name": "alpha"}
    problem = items[1]
    assert isinstance(problem, Unreadable)
    assert problem.line == 3
    assert "line 3" in problem.reason
    assert "UTF-8" in problem.reason
    assert problem.text.startswith("2,caf")
    assert items[2] == {"id": "3", "name": "gamma"}


def test_csv_unterminated_quote_at_eof_is_unreadable(size: int) -> None:
    """An open quote at the end of the file is an Unreadable (csv.Error), never an exception."""
    data = b'id,name\n1,alpha\n2,"never closed\nmore text\n'
    items = read(data, "csv", size)
    assert items[0] == {"id": "1", "name": "alpha"}
    assert len(items) == 2
    problem = items[1]
    assert isinstance(problem, Unreadable)
    # The lines the open quote took are named, so they are not lost without a word.
    assert problem.reason.startswith("lines 3-4: ")
    assert "quoted field opened on line 3 runs to line 4" in problem.reason
    assert "unexpected end of data" in problem.reason
    assert problem.line is not None


# --------------------------------------------------------------------------------------------
# NDJSON


def test_ndjson_rows(size: int) -> None:
    """Each line is one JSON value, parsed to Python objects."""
    data = b'{"a": 1, "b": [1, 2], "c": {"d": null}}\n{"a": 2.5, "b": "x", "c": true}\n'
    assert read(data, "ndjson", size) == [
        {"a": 1, "b": [1, 2], "c": {"d": None}},
        {"a": 2.5, "b": "x", "c": True},
    ]


def test_ndjson_blank_lines_are_skipped(size: int) -> None:
    """Empty, whitespace-only and CRLF blank lines give nothing."""
    data = b'\n{"a": 1}\r\n\r\n   \n\t\n{"a": 2}\n\n'
    assert read(data, "ndjson", size) == [{"a": 1}, {"a": 2}]


def test_ndjson_bad_line_is_unreadable_and_reading_goes_on(size: int) -> None:
    """A line that is not JSON is an Unreadable with its line number; later lines are parsed."""
    data = b'{"a": 1}\n\n{"a": 2,,}\n{"a": 3}\nnot json\n{"a": 4}\n'
    items = read(data, "ndjson", size)
    assert rows_of(items) == [{"a": 1}, {"a": 3}, {"a": 4}]
    assert len(items) == 5
    first, second = problems_of(items)
    assert items[1] is first
    assert items[3] is second
    assert (first.line, second.line) == (3, 5)
    assert "line 3" in first.reason
    assert "not JSON" in first.reason
    assert first.text == '{"a": 2,,}'
    assert "line 5" in second.reason
    assert second.text == "not json"


def test_ndjson_invalid_utf8_line_is_unreadable_and_reading_goes_on(size: int) -> None:
    """A non-UTF-8 line is an Unreadable naming the line and UTF-8; later lines are parsed."""
    data = b'{"a": "ok"}\n{"a": "caf\xe9"}\n{"a": "fine"}\n'
    items = read(data, "ndjson", size)
    assert items[0] == {"a": "ok"}
    assert isinstance(items[1], Unreadable)
    assert items[1].line == 2
    assert "UTF-8" in items[1].reason
    assert items[2] == {"a": "fine"}


def test_ndjson_byte_order_mark_on_first_line(size: int) -> None:
    """A BOM before the first line is dropped, not a parse error."""
    data = BOM + b'{"a": 1}\n{"a": 2}\n'
    assert read(data, "ndjson", size) == [{"a": 1}, {"a": 2}]


def test_ndjson_last_line_without_newline(size: int) -> None:
    """The last line is read even without a trailing newline."""
    assert read(b'{"a": 1}\n{"a": 2}', "ndjson", size) == [{"a": 1}, {"a": 2}]


def test_ndjson_crlf_line_endings(size: int) -> None:
    """CRLF line endings are accepted."""
    assert read(b'{"a": 1}\r\n{"a": 2}\r\n', "ndjson", size) == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------------------------
# JSON


def test_json_top_level_array(size: int) -> None:
    """A top-level array gives its items as rows."""
    assert read(JSON_SAMPLE, "json", size) == JSON_ROWS


def test_json_rows_object(size: int) -> None:
    """An object ``{"rows": [...]}`` gives the items of "rows"."""
    data = json.dumps({"rows": JSON_ROWS}).encode()
    assert read(data, "json", size) == JSON_ROWS


def test_json_rows_object_with_other_keys_first(size: int) -> None:
    """Other keys before (and after) "rows", even nested "rows", are ignored."""
    data = (
        b'{"dataset": "sales", "meta": {"rows": [{"decoy": 1}], "n": [1, 2]}, '
        b'"rows": [{"a": 1}, {"a": 2}], "after": [{"decoy": 2}]}'
    )
    assert read(data, "json", size) == [{"a": 1}, {"a": 2}]


def test_json_numbers_are_int_or_float_not_decimal(size: int) -> None:
    """Integers come back as int and other numbers as float, never Decimal."""
    data = (
        b'[{"i": 42, "neg": -7, "f": 1.25, "e": 1e3, "n": -0.5, "z": 0}, {"i": 9007199254740993}]'
    )
    items = read(data, "json", size)
    assert items == [
        {"i": 42, "neg": -7, "f": 1.25, "e": 1000.0, "n": -0.5, "z": 0},
        {"i": 9007199254740993},
    ]
    row = items[0]
    for key in ("i", "neg", "z"):
        assert type(row[key]) is int
    for key in ("f", "e", "n"):
        assert type(row[key]) is float
    assert type(items[1]["i"]) is int
    assert not any(isinstance(v, Decimal) for item in items for v in item.values())


def test_json_integer_beyond_64_bits_is_read_like_ndjson(size: int) -> None:
    """An integer too big for 64 bits is still valid JSON: it is read as int, as NDJSON does."""
    data = b'[{"a": 1}, {"big": 12345678901234567890}, {"a": 3}]'
    expected = [{"a": 1}, {"big": 12345678901234567890}, {"a": 3}]
    ndjson = b'{"a": 1}\n{"big": 12345678901234567890}\n{"a": 3}\n'
    assert read(ndjson, "ndjson", size) == expected
    assert read(data, "json", size) == expected


def test_json_byte_order_mark(size: int) -> None:
    """A UTF-8 BOM before the JSON is dropped."""
    assert read(BOM + JSON_SAMPLE, "json", size) == JSON_ROWS


def test_json_whitespace_before(size: int) -> None:
    """Whitespace (more than a chunk of it) before the array or object is allowed."""
    assert read(b" \n\t\r\n   \n  " + JSON_SAMPLE, "json", size) == JSON_ROWS
    rows_object = b"\n\n\n          " + json.dumps({"rows": JSON_ROWS}).encode()
    assert read(rows_object, "json", size) == JSON_ROWS


def test_json_byte_order_mark_then_whitespace(size: int) -> None:
    """A BOM followed by whitespace before the array is allowed."""
    assert read(BOM + b"\n  " + JSON_SAMPLE, "json", size) == JSON_ROWS


def test_json_invalid_midway_gives_rows_then_one_unreadable(size: int) -> None:
    """Rows before invalid JSON arrive, then a single Unreadable saying 'invalid after row N'."""
    data = b'[{"a": 1}, {"a": 2}, {"a": oops}, {"a": 4}]'
    items = read(data, "json", size)
    assert items[:2] == [{"a": 1}, {"a": 2}]
    assert len(items) == 3
    problem = items[2]
    assert isinstance(problem, Unreadable)
    assert "invalid after row 2" in problem.reason


def test_json_truncated_plain_file_is_one_unreadable(size: int) -> None:
    """A plain JSON file that stops midway gives the rows before and one Unreadable."""
    data = b'{"rows": [{"a": 1}, {"a": 2}, {"a": '
    items = read(data, "json", size)
    assert items[:2] == [{"a": 1}, {"a": 2}]
    assert len(items) == 3
    assert isinstance(items[2], Unreadable)
    assert "invalid after row 2" in items[2].reason


@pytest.mark.parametrize("data", [b"42", b'"hello"', b"true", b"null", b"  3.5", BOM + b'"x"', b""])
def test_json_scalar_at_top_level_is_unreadable(size: int, data: bytes) -> None:
    """A scalar, string or nothing at top level gives exactly one Unreadable and no rows."""
    items = read(data, "json", size)
    assert len(items) == 1
    assert isinstance(items[0], Unreadable)
    assert "array" in items[0].reason


# --------------------------------------------------------------------------------------------
# gzip


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_by_flag_reads_like_plain(size: int, kind: str) -> None:
    """A gzipped file read with gzipped=True gives the same items as the plain file."""
    plain, expected = SAMPLES[kind]
    assert read(gzip.compress(plain), kind, size, gzipped=True) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_by_magic_bytes_without_flag(size: int, kind: str) -> None:
    """Gzip data is recognised by its magic bytes even without the flag, at any chunk size."""
    plain, expected = SAMPLES[kind]
    assert read(gzip.compress(plain), kind, size) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_many_rows_round_trip(kind: str) -> None:
    """A larger gzipped file (beyond one decompress buffer) gives every row, in order."""
    plain = many_rows(kind, 20_000)
    items = list(read_rows(split(gzip.compress(plain), 4096), kind, gzipped=True))
    assert items == expected_many(kind, 20_000)


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_concatenated_members(size: int, kind: str) -> None:
    """Several gzip members back to back (cut mid-line) read as one file."""
    plain, expected = SAMPLES[kind]
    cuts = [0, 5, len(plain) // 2, len(plain) - 3, len(plain)]
    data = b"".join(gzip.compress(plain[a:b]) for a, b in itertools.pairwise(cuts))
    assert read(data, kind, size, gzipped=True) == expected
    assert read(data, kind, size) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_empty_member_between_members(kind: str) -> None:
    """An empty gzip member between two members is harmless."""
    plain, expected = SAMPLES[kind]
    half = len(plain) // 2
    data = gzip.compress(plain[:half]) + gzip.compress(b"") + gzip.compress(plain[half:])
    assert read(data, kind, 7, gzipped=True) == expected


@pytest.mark.parametrize("gzipped", [True, False], ids=["flag", "magic"])
@pytest.mark.parametrize("kind", KINDS)
def test_gzip_truncated_gives_rows_then_unreadable(size: int, kind: str, gzipped: bool) -> None:
    """Cut gzip data gives the rows decoded before the cut, then one Unreadable saying truncated."""
    compressed = gzip.compress(many_rows(kind, 2_000))
    cut = compressed[: len(compressed) // 2]
    items = read(cut, kind, size, gzipped=gzipped)
    rows = items[:-1]
    assert rows, "rows before the cut must arrive"
    assert rows == expected_many(kind, 2_000)[: len(rows)]
    problem = items[-1]
    assert isinstance(problem, Unreadable)
    assert "truncated" in problem.reason
    if kind == "json":
        assert problem.reason.startswith(f"after row {len(rows)}:")


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_cut_inside_header_is_unreadable(kind: str) -> None:
    """Gzip data that stops inside its header gives just an Unreadable, never an exception."""
    items = list(read_rows([gzip.compress(b'[{"a": 1}]')[:6]], kind, gzipped=True))
    assert len(items) == 1
    assert isinstance(items[0], Unreadable)
    assert "truncated" in items[0].reason


def corrupt_gzip(how: str, kind: str) -> bytes:
    """Gzip data of the ``kind`` sample spoiled in one of three ways."""
    good = gzip.compress(SAMPLES[kind][0])
    if how == "bad-method":
        return b"\x1f\x8b" + b"this is not deflate data at all"
    if how == "bad-body":
        return good[:10] + b"\xff" * 40
    return good[:-8] + bytes(4) + good[-4:]  # a wrong CRC-32 in the trailer


CORRUPTIONS = ["bad-method", "bad-body", "bad-crc"]


@pytest.mark.parametrize("gzipped", [True, False], ids=["flag", "magic"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_gzip_corrupt_bytes_are_unreadable(
    size: int, kind: str, corrupt: str, gzipped: bool
) -> None:
    """Corrupt gzip data ends in an Unreadable saying so, never an exception."""
    items = read(corrupt_gzip(corrupt, kind), kind, size, gzipped=gzipped)
    assert items, "an Unreadable is expected"
    problem = items[-1]
    assert isinstance(problem, Unreadable)
    assert "corrupt" in problem.reason


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_flag_on_plain_data_is_unreadable(size: int, kind: str) -> None:
    """Plain data read as gzip (a wrong .gz name) gives an Unreadable, never an exception."""
    plain, _ = SAMPLES[kind]
    items = read(plain, kind, size, gzipped=True)
    assert len(items) == 1
    assert isinstance(items[0], Unreadable)
    assert "corrupt" in items[0].reason


@pytest.fixture(scope="module")
def zip_bombs() -> dict[str, bytes]:
    """Gzip files that decompress to 50 MB (built once; the 50 MB plain text is not kept)."""
    return {
        "csv": gzip.compress(b"0" * 50_000_000),
        "ndjson": gzip.compress(b"0" * 50_000_000),
        # Whitespace is valid JSON filler, so the JSON reader keeps reading until the cap.
        "json": gzip.compress(b"[" + b" " * 50_000_000 + b"]"),
        "csv-lines": gzip.compress(b"a\n" + (b"1" * 99 + b"\n") * 500_000),
        "ndjson-lines": gzip.compress((b'{"a": 1' + b" " * 92 + b"}\n") * 500_000),
    }


@pytest.mark.parametrize("bomb", ["csv", "ndjson", "json", "csv-lines", "ndjson-lines"])
def test_gzip_zip_bomb_is_refused_without_unpacking(zip_bombs: dict[str, bytes], bomb: str) -> None:
    """A 50 MB gzip bomb under max_bytes=10 MB is an Unreadable naming the limit, never unpacked."""
    kind = bomb.split("-")[0]
    compressed = zip_bombs[bomb]
    chunks = split(compressed, 7)
    gc.collect()
    tracemalloc.start()
    try:
        rows = 0
        problems: list[Unreadable] = []
        for item in read_rows(chunks, kind, gzipped=True, max_bytes=10_000_000):
            if isinstance(item, Unreadable):
                problems.append(item)
            else:
                rows += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(problems) == 1
    assert "10,000,000 bytes" in problems[0].reason
    assert "zip bomb" in problems[0].reason
    # A line with no newline is buffered whole, so the worst case is the line (up to max_bytes)
    # plus its copy while it grows: ~2 x 10 MB. A full unpack would take 50 MB or more.
    assert peak < 21_000_000, f"peak traced memory {peak:,} bytes"
    if bomb.endswith("-lines") or kind == "json":
        # With short lines (or JSON filler) nothing accumulates: memory stays flat.
        assert peak < 2_000_000, f"peak traced memory {peak:,} bytes"
    if bomb.endswith("-lines"):
        assert rows > 90_000


@pytest.mark.parametrize("kind", KINDS)
def test_gzip_exactly_max_bytes_is_accepted(kind: str) -> None:
    """A gzip file decompressing to exactly max_bytes is read in full."""
    plain, expected = SAMPLES[kind]
    items = list(read_rows(split(gzip.compress(plain), 7), kind, True, max_bytes=len(plain)))
    assert items == expected
    over = list(read_rows(split(gzip.compress(plain), 7), kind, True, max_bytes=len(plain) - 1))
    assert isinstance(over[-1], Unreadable)
    assert f"{len(plain) - 1:,} bytes" in over[-1].reason


# --------------------------------------------------------------------------------------------
# size cap on plain data


@pytest.mark.parametrize("size_or_whole", [7, 1, 0], ids=["chunk7", "chunk1", "one-chunk"])
@pytest.mark.parametrize("kind", KINDS)
def test_plain_over_max_bytes_is_unreadable(kind: str, size_or_whole: int) -> None:
    """Plain data over max_bytes ends in an Unreadable mentioning the limit, never an exception."""
    plain = many_rows(kind, 200)
    chunk = size_or_whole or len(plain)
    items = read(plain, kind, chunk, max_bytes=1_000)
    problem = items[-1]
    assert isinstance(problem, Unreadable)
    assert "1,000 bytes" in problem.reason
    assert "larger than" in problem.reason
    assert len(problems_of(items)) == 1
    rows = rows_of(items)
    assert rows == expected_many(kind, 200)[: len(rows)]


@pytest.mark.parametrize("kind", KINDS)
def test_plain_exactly_max_bytes_is_accepted(size: int, kind: str) -> None:
    """Plain data of exactly max_bytes is read in full; one byte less is refused."""
    plain, expected = SAMPLES[kind]
    assert read(plain, kind, size, max_bytes=len(plain)) == expected
    over = read(plain, kind, size, max_bytes=len(plain) - 1)
    assert isinstance(over[-1], Unreadable)


# --------------------------------------------------------------------------------------------
# chunking and laziness


@pytest.mark.parametrize("kind", KINDS)
def test_empty_chunks_are_ignored(kind: str) -> None:
    """Empty chunks anywhere in the stream, even first, change nothing (plain and gzip)."""
    plain, expected = SAMPLES[kind]
    for data in (plain, gzip.compress(plain)):
        chunks = [b"", b""]
        for piece in split(data, 5):
            chunks += [piece, b""]
        assert list(read_rows(chunks, kind)) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_every_chunk_boundary_gives_the_same_rows(kind: str) -> None:
    """Cutting the file in two at every possible byte gives the same rows (plain and gzip)."""
    plain, expected = SAMPLES[kind]
    data = BOM + plain
    for cut in range(len(data) + 1):
        assert list(read_rows([data[:cut], data[cut:]], kind)) == expected, cut
    compressed = gzip.compress(plain)
    for cut in range(len(compressed) + 1):
        chunks = [compressed[:cut], compressed[cut:]]
        assert list(read_rows(chunks, kind, gzipped=True)) == expected, cut


def huge_source(kind: str, count: int) -> Iterator[bytes]:
    """A lazily generated file of ``count`` rows of ``kind``, never held in memory."""
    if kind == "csv":
        yield b"i,text\n"
        for n in range(count):
            yield f"{n},row {n}\n".encode()
    elif kind == "ndjson":
        for n in range(count):
            yield json.dumps({"i": n, "text": f"row {n}"}).encode() + b"\n"
    else:
        yield b'{"rows": ['
        for n in range(count):
            yield (b"," if n else b"") + json.dumps({"i": n, "text": f"row {n}"}).encode()
        yield b"]}"


def first_rows(kind: str) -> list[dict[str, Any]]:
    """The first five rows of ``huge_source(kind, ...)``."""
    rows: list[dict[str, Any]] = [{"i": n, "text": f"row {n}"} for n in range(5)]
    if kind == "csv":
        return [{"i": str(r["i"]), "text": r["text"]} for r in rows]
    return rows


Chunker = Callable[[Iterator[bytes]], Iterator[bytes]]
CHUNKERS: dict[str, Chunker] = {
    "per-line": lambda lines: lines,
    "chunk7": lambda lines: restream(lines, 7),
    "chunk1": lambda lines: restream(lines, 1),
}
# Five short rows are ~150 bytes: the most chunks that taking them may pull, per chunking.
PULL_LIMITS = {"per-line": 10, "chunk7": 40, "chunk1": 300}


@pytest.mark.parametrize("chunker", list(CHUNKERS))
@pytest.mark.parametrize("kind", KINDS)
def test_taking_a_few_rows_pulls_few_chunks(kind: str, chunker: str) -> None:
    """Taking 5 rows of a 200,000-row file pulls only a bounded number of chunks."""
    source = CountingSource(CHUNKERS[chunker](huge_source(kind, 200_000)))
    rows = list(itertools.islice(read_rows(source, kind), 5))
    assert rows == first_rows(kind)
    assert not source.exhausted
    assert source.pulled <= PULL_LIMITS[chunker], source.pulled


@pytest.mark.parametrize("kind", KINDS)
def test_taking_a_few_gzipped_rows_pulls_few_chunks(kind: str) -> None:
    """Taking 5 rows of a 200,000-row gzipped file pulls only a bounded number of chunks."""
    compressed = gzip.compress(b"".join(huge_source(kind, 200_000)))
    source = CountingSource(split(compressed, 7))
    rows = list(itertools.islice(read_rows(source, kind), 5))
    assert rows == first_rows(kind)
    # The file is ~130,000 chunks; a few dozen hold the gzip header and the first rows.
    assert source.pulled <= 60, source.pulled


def test_read_rows_is_lazy_until_iterated() -> None:
    """read_rows looks at no more than the first chunk before its result is iterated."""
    source = CountingSource(huge_source("ndjson", 200_000))
    read_rows(source, "ndjson")
    assert source.pulled <= 1


def test_an_over_long_line_is_refused_and_reading_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line past MAX_LINE_BYTES is one Unreadable (not held in memory); later lines still come."""
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 1_000)
    data = b'{"a": 1}\n' + b"x" * 5_000 + b'\n{"a": 2}\n'
    items = list(formats.read_rows([data[i : i + 64] for i in range(0, len(data), 64)], "ndjson"))
    assert items[0] == {"a": 1} and items[-1] == {"a": 2}
    (refused,) = [i for i in items if isinstance(i, formats.Unreadable)]
    assert "longer than 1,000 bytes" in refused.reason and refused.line == 2


# --------------------------------------------------------------------------------------------
# the chunk-at-a-time readers against the line-at-a-time ones they replaced
#
# The reference below is the CSV and NDJSON reading code as it was before reading went a chunk
# at a time (msgspec for NDJSON, a comma split for plain CSV): for random files cut into random
# chunks, read_rows must give exactly what it gives (rows, Unreadables, their lines and texts).


def _ref_lines(data: Iterable[bytes]) -> Iterator[tuple[int, bytes | Unreadable]]:
    """Byte lines with their numbers; a stream failure becomes a final Unreadable. A line
    longer than ``MAX_LINE_BYTES`` is reported and skipped rather than held in memory."""
    number = 0
    rest = b""
    skipping = False
    try:
        for chunk in data:
            rest += chunk
            *whole, rest = rest.split(b"\n")
            for line in whole:
                number += 1
                if skipping:
                    skipping = False
                    continue
                yield number, line.rstrip(b"\r")
            if len(rest) > formats.MAX_LINE_BYTES:
                if not skipping:
                    yield (
                        number + 1,
                        Unreadable(
                            f"line {number + 1} is longer than {formats.MAX_LINE_BYTES:,} bytes",
                            line=number + 1,
                        ),
                    )
                skipping = True
                rest = b""
    except formats._StreamFailure as exc:
        yield number + 1, Unreadable(str(exc), line=number + 1, final=True)
        return
    if rest and not skipping:
        yield number + 1, rest.rstrip(b"\r")


def _ref_decode(raw: bytes, number: int) -> str | Unreadable:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(
            f"line {number} is not UTF-8 (byte {exc.start}): save the file as UTF-8, or "
            'declare its encoding in the table\'s profile ("encoding": "cp1252")',
            raw[:200].decode("utf-8", errors="replace"),
            number,
        )
    return text.removeprefix("\ufeff") if number == 1 else text


def _ref_ndjson(data: Iterable[bytes]) -> Iterator[Any]:
    for number, raw in _ref_lines(data):
        if isinstance(raw, Unreadable):
            yield raw
            if raw.final:
                return
            continue
        text = _ref_decode(raw, number)
        if isinstance(text, Unreadable):
            yield text
            continue
        if not text.strip():
            continue
        try:
            yield json.loads(text)
        except (ValueError, RecursionError) as exc:
            yield Unreadable(f"line {number} is not JSON: {exc}", text[:200], number)


def _ref_csv(data: Iterable[bytes]) -> Iterator[Any]:
    problems: list[Unreadable] = []

    def text_lines() -> Iterator[str]:
        for number, raw in _ref_lines(data):
            if isinstance(raw, Unreadable):
                problems.append(raw)
                if raw.final:
                    return
                yield ""  # keep csv's line count in step
                continue
            text = _ref_decode(raw, number)
            if isinstance(text, Unreadable):
                problems.append(text)
                yield ""  # keep csv's line count in step; an empty line is skipped
                continue
            yield text + "\n"

    reader = csv.reader(text_lines(), strict=True)
    header: list[str] | None = None
    while True:
        record: list[str] | None = None
        failure: Unreadable | None = None
        finished = False
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            finished = True
        except csv.Error as exc:
            end = reader.line_num
            failure = Unreadable(
                f"{_lines_named(start, end)}: {exc}{_spanned(start, end)}", line=end
            )
        yield from problems
        problems.clear()
        if finished:
            return
        if failure is not None:
            yield failure
            continue
        if not record or record == [""]:
            continue
        if header is None:
            header = [name.strip() for name in record]
            if len(set(header)) != len(header) or "" in header:
                # The line the header record starts on (after skipped or unreadable lines).
                yield Unreadable("the header row has empty or repeated column names", line=start)
                return
            continue
        if len(record) != len(header):
            yield Unreadable(
                f"{_lines_named(start, reader.line_num)}: {len(record)} fields, but the header "
                f"has {len(header)}{_spanned(start, reader.line_num)}",
                ",".join(record)[:200],
                reader.line_num,
            )
            continue
        yield dict(zip(header, record, strict=True))


def _reference(data: bytes, kind: str, size: int) -> list[Any]:
    chunks = formats._capped(split(data, size), formats.DEFAULT_MAX_BYTES)
    return list(_ref_csv(chunks) if kind == "csv" else _ref_ndjson(chunks))


CSV_PIECES = [
    "1",
    "x",
    "",
    ",",
    ",,",
    '"',
    '""',
    '"a,b"',
    '"multi\nline"',
    "\r",
    " ",
    "é",
    "\x00",
    "\u2028",
    "1.5",
    "true",
    "2026-01-01T00:00:00Z",
]
BAD_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf"]


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from(["a,b,c", "a,b", "a", "a,a", "a,,b", " a , b ", "x y,é"]))
    lines = [header]
    for _ in range(draw(st.integers(0, 25))):
        if draw(st.integers(0, 3)):  # a well-formed line, most of the time
            fields = draw(
                st.lists(
                    st.sampled_from(["1", "x", "", "é", "2.5", "true"]), min_size=3, max_size=3
                )
            )
            lines.append(",".join(fields[: header.count(",") + 1]))
        else:
            lines.append("".join(draw(st.lists(st.sampled_from(CSV_PIECES), max_size=6))))
    return _as_file(draw, lines)


def _as_file(draw: st.DrawFn, lines: list[str]) -> bytes:
    """``lines`` as a file: LF or CRLF, maybe a last newline, sometimes a byte that is not
    UTF-8 somewhere and sometimes a BOM."""
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    data = newline.join(lines).encode()
    if draw(st.booleans()):
        data += newline.encode()
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(BAD_BYTES)) + data[at:]
    if draw(st.integers(0, 4)) == 0:
        data = BOM + data
    return data


JSON_LINES = [
    '{"a": 1, "b": "x"}',
    '{"a":1.5e3,"b":null}',
    '{"a": 123456789012345678901234567890}',
    '{"a": 1e400}',
    '{"a": NaN}',
    "Infinity",
    "-Infinity",
    "",
    "   ",
    "1 2",
    "[1,",
    "2]",
    '"\\ud800"',
    '"\\ud83d\\ude00"',
    "[]",
    "5",
    "nul",
    '{"a":1,"a":2}',
    "\t{}\t",
    '{"é": "€"}',
    "\x0b",
    '{"a": "tab\there"}',
    "1" * 4301,
]


@st.composite
def ndjson_files(draw: st.DrawFn) -> bytes:
    lines = draw(
        st.lists(
            st.sampled_from(JSON_LINES)
            | st.dictionaries(
                st.text(max_size=3), st.integers() | st.floats() | st.text(max_size=3)
            ).map(json.dumps),
            max_size=25,
        )
    )
    return _as_file(draw, lines)


def _same_items(got: list[Any], expected: list[Any]) -> None:
    # repr: NaN != NaN, and 1 == 1.0 == True must not pass for each other.
    assert [repr(item) for item in got] == [repr(item) for item in expected]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=csv_files(),
    size=st.integers(1, 64) | st.just(1 << 20),
    limit=st.sampled_from([20, 1 << 24]),
)
def test_csv_chunks_read_as_lines_did(data: bytes, size: int, limit: int) -> None:
    """Plain chunks split on commas, the rest through csv.reader: the same rows and problems
    (quotes, carriage returns, bad UTF-8, a BOM, short and long lines, the line cap)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formats, "MAX_LINE_BYTES", limit)
        _same_items(list(read_rows(split(data, size), "csv")), _reference(data, "csv", size))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=ndjson_files(),
    size=st.integers(1, 64) | st.just(1 << 20),
    limit=st.sampled_from([20, 1 << 24]),
)
def test_ndjson_chunks_read_as_lines_did(data: bytes, size: int, limit: int) -> None:
    """msgspec where it reads every line of a chunk, json.loads line by line where it does not:
    the same rows and problems as json.loads alone (NaN, Infinity, 1e400, two values on a line,
    blank lines, bad UTF-8, lone surrogates, a BOM, the line cap)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formats, "MAX_LINE_BYTES", limit)
        _same_items(list(read_rows(split(data, size), "ndjson")), _reference(data, "ndjson", size))
