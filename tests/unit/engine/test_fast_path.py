"""The block path (RowValidator.check_block + pack_blocks, as Ingestor._run uses them) against
the straightforward one (RowValidator per row + pack per row): for random schemas and random
rows (NaN, infinities, huge integers, bad and odd date-times, numeric text, long text, missing
and extra columns), the same bodies byte for byte, the same rows in them and the same problems.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import limits
from shared.engine.batching import (
    PLAIN_FLOAT_MAX,
    PLAIN_FLOAT_MIN,
    Batch,
    Block,
    pack,
    pack_blocks,
    serialise,
)
from shared.engine.schema import TYPES, Column, RowValidator, TableSchema
from shared.errors import RowProblem

# --- values ------------------------------------------------------------------------------------

EDGE_INTS = [
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**63 - 2,
    -(2**63) + 1,
    2**64,
    10**30,
    -(10**400),
]
EDGE_FLOATS = [
    0.0,
    -0.0,
    1.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e-5,
    -1e-5,
    PLAIN_FLOAT_MIN,
    PLAIN_FLOAT_MAX,
    9.999999999999998e15,
    1e24,
    -1e24,
    9.99e23,
    1.7976931348623157e308,
    5e-324,
    3.0,
]
TEXTS = [
    "",
    " ",
    "5",
    " 5 ",
    "+5",
    "1_000",
    "\u0661\u0662",  # Arabic-Indic digits: int() and float() take them
    "\u2003 7\u2003",  # an em space around
    "5.0",
    "1e5",
    "nan",
    "NaN",
    "inf",
    "-Infinity",
    "1e400",
    "9223372036854775807",
    "9223372036854775806",
    "true",
    "false",
    "TRUE",
    " false ",
    "yes",
    "2026-01-01T00:00:00Z",
    "2026-12-31T23:59:59Z",
    "2024-02-29T12:00:00Z",
    "2026-02-29T12:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-01-01T00:00:00.123Z",
    "2026-01-01T00:00:00.123456Z",
    "2026-01-01T00:00:00+02:00",
    "2026-01-01T00:00:00",
    "2026-01-01",
    "12/31/2025",
    "2/3/2026 4:05",
    "2026-01-01T00:00:00Z\n2026-01-01T00:00:00Z",
    "\u0662026-01-01T00:00:00Z",
    "a,b",
    'quote " and \\ backslash',
    "tab\there",
    "é€😀",
    "\ud800",
    "x" * 2000,
    "x" * 2001,
    "😀" * 2000,
    "😀" * 2001,
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from(EDGE_INTS)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from(EDGE_FLOATS)
    | st.floats()
    | st.sampled_from(TEXTS)
    | st.text(max_size=8)
    | st.datetimes().map(lambda moment: moment.isoformat(timespec="seconds") + "Z")
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
)
VALUES = SCALARS | st.lists(SCALARS, max_size=2) | st.dictionaries(st.text(max_size=3), SCALARS)

NAMES = st.sampled_from(["a", "b", "Price", "Updated", "x y", "é", "k0", "v1", "rows"])


@st.composite
def schemas(draw: st.DrawFn) -> TableSchema:
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    return TableSchema("T", tuple(Column(name, draw(st.sampled_from(TYPES))) for name in names))


@st.composite
def tables(draw: st.DrawFn) -> tuple[TableSchema, list[Any]]:
    """A schema and rows for it: mostly every column in the schema's order (the block path),
    some with a column missing, an unknown one, another order, or not an object at all."""
    schema = draw(schemas())
    names = [column.name for column in schema.columns]
    # Values that suit each column most of the time, so that blocks pass as well as fail;
    # as text (a CSV file) or as JSON types (NDJSON), one or the other for the whole table.
    as_text = draw(st.booleans())
    date_time = st.datetimes().map(
        lambda m: m.isoformat(timespec="seconds") + "Z"
    ) | st.datetimes().map(lambda m: m.isoformat(timespec="milliseconds") + "Z")
    typical: dict[str, st.SearchStrategy[Any]] = {
        "Int64": st.integers(-(2**63) + 1, 2**63 - 2).map(str)
        | st.sampled_from(["0", "-0", "+7", " 8", "00", "1_0"]),
        "Double": st.floats(allow_nan=False, allow_infinity=False).map(repr)
        | st.floats(0.01, 1e6).map(lambda x: f"{x:.2f}")
        | st.sampled_from(["1e16", "1e-05", "-0.0", "0", "1e308", "1e309"]),
        "Decimal": st.floats(-1e25, 1e25).map(repr) | st.integers(-999, 999).map(str),
        "Boolean": st.sampled_from(["true", "false", "true", "false", "TRUE", " false", ""]),
        "DateTime": date_time,
        "String": st.text(max_size=10),
    }
    if not as_text:
        typical = {
            "Int64": st.integers(-(2**63) + 1, 2**63 - 2) | st.sampled_from([2**63 - 1, 2**64]),
            "Double": st.floats(allow_nan=False, allow_infinity=False, width=64)
            | st.integers(-999, 999)
            | st.sampled_from([1e16, 1e-5, -0.0, 1.7976931348623157e308]),
            "Decimal": st.floats(-1e25, 1e25) | st.integers(-999, 999),
            "Boolean": st.booleans(),
            "DateTime": date_time,
            "String": st.text(max_size=10),
        }
    rows: list[Any] = []
    for _ in range(draw(st.integers(0, 40))):
        shape = draw(st.sampled_from(["same"] * 12 + ["missing", "extra", "shuffled", "odd"]))
        row: dict[str, Any] = {}
        for column in schema.columns:
            nullish = draw(st.sampled_from([None, ""]))
            value = draw(
                typical[column.data_type] | VALUES | st.just(nullish)
                if draw(st.integers(0, 9)) == 0
                else typical[column.data_type]
            )
            row[column.name] = value
        if shape == "missing" and len(names) > 1:
            del row[draw(st.sampled_from(names))]
        elif shape == "extra":
            row["unknown"] = 1
        elif shape == "shuffled":
            row = dict(reversed(list(row.items())))
        elif shape == "odd":
            rows.append(draw(VALUES))
            continue
        rows.append(row)
    return schema, rows


# --- the two paths -----------------------------------------------------------------------------


class Rejections:
    def __init__(self) -> None:
        self.seen: list[tuple[int, str, str | None, str]] = []

    def __call__(self, problem: RowProblem, row: Any) -> None:
        self.seen.append((problem.index, problem.reason, problem.column, repr(row)))


def reference(
    validator: RowValidator, rows: list[Any], **limits_: Any
) -> tuple[list[Batch], list[tuple[int, str, str | None, str]]]:
    """Row by row: validate each, pack the valid ones (what Ingestor did before blocks)."""
    rejected = Rejections()
    valid = []
    for index, row in enumerate(rows):
        checked = validator(row, index)
        if isinstance(checked, RowProblem):
            rejected(checked, row)
        else:
            valid.append((index, checked))
    batches = list(pack(valid, on_reject=rejected, **limits_))
    return batches, sorted(rejected.seen)


def blocked(
    validator: RowValidator, rows: list[Any], size: int, **limits_: Any
) -> tuple[list[Batch], list[tuple[int, str, str | None, str]], int]:
    """In blocks of ``size``, as Ingestor._run does; also how many blocks took the fast path."""
    rejected = Rejections()
    fast_blocks = 0

    def blocks() -> Any:
        nonlocal fast_blocks
        for start in range(0, len(rows), size):
            items = list(enumerate(rows[start : start + size], start))
            fast = validator.check_block([row for _, row in items])
            if fast is not None:
                fast_blocks += 1
                yield Block([index for index, _ in items], *fast)
                continue
            indices, kept = [], []
            for index, row in items:
                checked = validator(row, index)
                if isinstance(checked, RowProblem):
                    rejected(checked, row)
                else:
                    indices.append(index)
                    kept.append(checked)
            if indices:
                yield Block(indices, kept)

    batches = list(pack_blocks(blocks(), on_reject=rejected, **limits_))
    return batches, sorted(rejected.seen), fast_blocks


def exactly(rows: tuple[dict[str, Any], ...]) -> list[list[tuple[str, str]]]:
    """Rows compared by key order and each value's repr (1 is not 1.0, -0.0 is not 0.0)."""
    return [[(key, repr(value)) for key, value in row.items()] for row in rows]


def same(left: list[Batch], right: list[Batch]) -> None:
    assert [b.body for b in left] == [b.body for b in right]
    assert [b.indices for b in left] == [b.indices for b in right]
    assert [exactly(b.rows) for b in left] == [exactly(b.rows) for b in right]


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), size=st.integers(1, 25))
def test_blocks_give_what_rows_give(table: tuple[TableSchema, list[Any]], size: int) -> None:
    """Same bodies, rows and problems, block by block as row by row."""
    schema, rows = table
    validator = RowValidator(schema)
    expected, expected_problems = reference(validator, rows)
    got, problems, _ = blocked(validator, rows, size)
    same(got, expected)
    assert problems == expected_problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=tables(),
    size=st.integers(1, 25),
    max_rows=st.integers(1, 12),
    room=st.integers(0, 400),
    groups=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 15)), max_size=4),
)
def test_blocks_split_batches_where_rows_do(
    table: tuple[TableSchema, list[Any]],
    size: int,
    max_rows: int,
    room: int,
    groups: list[tuple[int, int]],
) -> None:
    """With small row and byte limits and keep_together groups, the batches split at the same
    rows, and a row too big alone is refused the same way."""
    schema, rows = table
    validator = RowValidator(schema)
    options = {
        "max_rows": max_rows,
        "max_bytes": len(b'{"rows":[]}') + room,
        "keep_together": dict(groups),
    }
    expected, expected_problems = reference(validator, rows, **options)
    got, problems, _ = blocked(validator, rows, size, **options)
    same(got, expected)
    assert problems == expected_problems


@settings(max_examples=300, deadline=None)
@given(table=tables())
def test_a_block_is_each_row_as_the_validator_makes_it(
    table: tuple[TableSchema, list[Any]],
) -> None:
    """Whenever check_block vouches for a block, each row is what the per-row validator gives
    (types and key order included), and "plain" is true only if msgspec writes the rows as
    json.dumps does."""
    schema, rows = table
    validator = RowValidator(schema)
    fast = validator.check_block(rows)
    if fast is None:
        return
    made, plain = fast
    one_by_one = [validator(row, index) for index, row in enumerate(rows)]
    assert exactly(tuple(msgspec.to_builtins(row) for row in made)) == exactly(
        tuple(one_by_one)  # type: ignore[arg-type]
    )
    if plain:
        for row in one_by_one:
            assert isinstance(row, dict)
            expected = json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            assert msgspec.json.encode(row) == expected.encode()


# --- examples ---------------------------------------------------------------------------------


BENCH_LIKE = TableSchema(
    "Product",
    (
        Column("ProductID", "Int64"),
        Column("Name", "String"),
        Column("IsCompete", "Boolean"),
        Column("Price", "Double"),
        Column("Updated", "DateTime"),
    ),
)


def bench_rows(count: int, as_text: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        price = "" if i % 10 == 9 else f"{10 + i * 0.37:.2f}"
        rows.append(
            {
                "ProductID": str(i + 1) if as_text else i + 1,
                "Name": f"Maximus UC-{i}",
                "IsCompete": ("true" if i % 3 == 0 else "false") if as_text else i % 3 == 0,
                "Price": price if as_text else (float(price) if price else None),
                "Updated": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:{i % 60:02d}Z",
            }
        )
    return rows


def test_typical_rows_take_the_block_path_and_match() -> None:
    """CSV-like text and NDJSON-like typed values both go through check_block (a test that
    only ever compared the fallback with itself would show nothing), with the same output."""
    validator = RowValidator(BENCH_LIKE)
    for as_text in (True, False):
        rows = bench_rows(100, as_text)
        expected, expected_problems = reference(validator, rows)
        got, problems, fast_blocks = blocked(validator, rows, 10)
        assert fast_blocks == 10
        same(got, expected)
        assert problems == expected_problems == []
        assert b'"Updated":"2026-01-01T00:00:00.000Z"' in got[0].body


def test_one_bad_value_sends_its_block_row_by_row_with_the_same_problem() -> None:
    """A NaN price, an Int64 past the maximum and 29 February of a common year: each block
    that holds one is checked row by row, and the problem names the row and the column."""
    validator = RowValidator(BENCH_LIKE)
    rows = bench_rows(30, as_text=False)
    rows[3]["Price"] = math.nan
    rows[14]["ProductID"] = 2**63 - 1
    rows[25]["Updated"] = "2026-02-29T00:00:00Z"
    got, problems, fast_blocks = blocked(validator, rows, 10)
    assert fast_blocks == 0
    assert [(index, column) for index, _, column, _ in problems] == [
        (3, "Price"),
        (14, "ProductID"),
        (25, "Updated"),
    ]
    assert problems[0][1] == "NaN is not supported"
    expected, expected_problems = reference(validator, rows)
    same(got, expected)
    assert problems == expected_problems


def test_a_lone_surrogate_in_a_fast_block_is_refused_as_row_by_row() -> None:
    """Text UTF-8 cannot hold (a lone surrogate, from a JSON "\\ud800" escape) passes the
    validator but not msgspec's encoder: a block holding it is encoded row by row, the row is
    refused as pack() refuses it, the rest are sent (found by the property test above)."""
    validator = RowValidator(BENCH_LIKE)
    rows = bench_rows(30, as_text=False)
    rows[17]["Name"] = "\ud800"
    got, problems, _ = blocked(validator, rows, 10)
    assert [index for index, *_ in problems] == [17]
    assert "cannot be sent as JSON" in problems[0][1]
    expected, expected_problems = reference(validator, rows)
    same(got, expected)
    assert problems == expected_problems


def test_leap_day_and_milliseconds_keep_their_meaning() -> None:
    """29 February of a leap year is accepted (the slow way), milliseconds are kept, and a
    column mixing the two forms still comes out normalised."""
    schema = TableSchema("T", (Column("When", "DateTime"),))
    validator = RowValidator(schema)
    rows = [
        {"When": "2024-02-29T10:00:00Z"},
        {"When": "2026-03-01T10:00:00.250Z"},
        {"When": "2026-03-01T10:00:00Z"},
    ]
    fast = validator.check_block(rows)
    assert fast is not None
    assert [msgspec.to_builtins(row)["When"] for row in fast[0]] == [
        "2024-02-29T10:00:00.000Z",
        "2026-03-01T10:00:00.250Z",
        "2026-03-01T10:00:00.000Z",
    ]


def test_doubles_outside_the_plain_range_are_written_as_json_dumps_writes_them() -> None:
    """msgspec writes 1e16 as "1e16" and 1e-05 as "0.00001"; a block holding such a double is
    encoded row by row by the standard library, so the body says "1e+16" and "1e-05"."""
    schema = TableSchema("T", (Column("x", "Double"),))
    validator = RowValidator(schema)
    rows = [{"x": 1e16}, {"x": 1e-5}, {"x": 2.5}]
    fast = validator.check_block(rows)
    assert fast is not None and fast[1] is False
    (batch,) = pack_blocks([Block([0, 1, 2], fast[0], fast[1])])
    assert batch.body == b'{"rows":[{"x":1e+16},{"x":1e-05},{"x":2.5}]}'
    assert batch.body == b'{"rows":[' + b",".join(serialise(r) for r in batch.rows) + b"]}"


def test_a_full_body_is_16_mb_at_most_by_the_exact_byte_count() -> None:
    """Blocks of wide rows: every body stays within the byte limit, and bodies split exactly
    where the per-row packer splits them."""
    schema = TableSchema("T", (Column("text", "String"), Column("n", "Int64")))
    validator = RowValidator(schema)
    rows = [{"text": "é" * 1999, "n": i} for i in range(9_000)]
    expected, _ = reference(validator, rows)
    got, _, fast_blocks = blocked(validator, rows, 1_000)
    assert fast_blocks == 9
    assert len(got) >= 2
    assert all(len(batch.body) <= limits.MAX_BODY_BYTES for batch in got)
    same(got, expected)


@st.composite
def date_times(draw: st.DrawFn) -> str:
    """A valid date-time written "yyyy-MM-ddTHH:mm:ss", often with a field or two pushed to
    the edge of its range or past it."""
    moment = draw(st.datetimes())
    fields = [
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    ]
    edges = [
        [0, 1, 1900, 2000, 2023, 2024, 2100, 9999],
        [0, 1, 2, 4, 6, 9, 11, 12, 13],
        [0, 1, 28, 29, 30, 31, 32],
        [0, 23, 24],
        [0, 59, 60],
        [0, 59, 60, 61],
    ]
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.integers(0, 6))
        if field == 6:  # the last days of months, which differ
            fields[1:3] = draw(
                st.sampled_from([(m, d) for m in range(1, 13) for d in (29, 30, 31)])
            )
        else:
            fields[field] = draw(st.sampled_from(edges[field]))
    year, month, day, hour, minute, second = fields
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


@settings(max_examples=500, deadline=None)
@given(
    values=st.lists(date_times(), min_size=1, max_size=4),
    ending=st.sampled_from(["Z", ".000Z", ".123Z", ".5Z", ".123456Z", "+01:00"]),
    mixed=st.booleans(),
)
def test_date_time_columns_match_the_per_value_parser(
    values: list[str], ending: str, mixed: bool
) -> None:
    """Digits in every field, in range and out of it (month 13, 31 April, 29 February of
    common and leap years, hour 24, second 60, year 0): a block is accepted only when every
    value is, and then with the per-row result."""
    schema = TableSchema("T", (Column("When", "DateTime"),))
    validator = RowValidator(schema)
    # One ending for the column (the block path needs all alike), or the first one different.
    rows = [
        {"When": value + ("Z" if mixed and index == 0 and ending != "Z" else ending)}
        for index, value in enumerate(values)
    ]
    one_by_one = [validator(row, index) for index, row in enumerate(rows)]
    fast = validator.check_block(rows)
    if any(isinstance(result, RowProblem) for result in one_by_one):
        assert fast is None
    else:
        assert fast is not None
        assert [msgspec.to_builtins(row) for row in fast[0]] == one_by_one
