"""Unit tests for shared.engine.batching: packing rows into the fewest legal Add Rows bodies."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.engine.batching import Batch, pack, serialise
from shared.errors import RowProblem

ENVELOPE = len(b'{"rows":[]}')  # 11 bytes around the joined rows


def numbered(count: int, start: int = 0) -> list[tuple[int, dict[str, Any]]]:
    return [(start + n, {"n": n}) for n in range(count)]


def body_rows(batch: Batch) -> list[dict[str, Any]]:
    decoded = json.loads(batch.body)
    assert set(decoded) == {"rows"}
    rows: list[dict[str, Any]] = decoded["rows"]
    return rows


class Rejects:
    """An on_reject callback that records what it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[RowProblem, dict[str, Any]]] = []

    def __call__(self, problem: RowProblem, row: dict[str, Any]) -> None:
        self.seen.append((problem, row))

    @property
    def indices(self) -> list[int]:
        return [problem.index for problem, _ in self.seen]


# --- serialise --------------------------------------------------------------------------------


def test_serialise_is_compact_json() -> None:
    """A row is serialised with no blanks between tokens."""
    assert serialise({"a": 1, "b": [1, 2], "c": None, "d": "x y"}) == (
        b'{"a":1,"b":[1,2],"c":null,"d":"x y"}'
    )


def test_serialise_writes_utf8_not_escapes() -> None:
    """Non-ASCII text is written as UTF-8 bytes, not \\u escapes."""
    assert serialise({"s": "é€😀"}) == '{"s":"é€😀"}'.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_serialise_refuses_nan_and_infinities(value: float) -> None:
    """NaN and infinities are not JSON and are refused (allow_nan=False)."""
    with pytest.raises(ValueError):
        serialise({"x": value})


# --- row limit --------------------------------------------------------------------------------


def test_25000_rows_become_three_batches_in_order() -> None:
    """25,000 small rows become batches of 10,000, 10,000 and 5,000, in input order."""
    rows = numbered(25_000, start=100)

    batches = list(pack(rows))

    assert [batch.count for batch in batches] == [10_000, 10_000, 5_000]
    start = 0
    for batch in batches:
        expected = rows[start : start + batch.count]
        assert batch.indices == tuple(index for index, _ in expected)
        assert batch.rows == tuple(row for _, row in expected)
        assert body_rows(batch) == [row for _, row in expected]
        start += batch.count
    assert start == 25_000


@pytest.mark.parametrize(
    ("count", "sizes"), [(0, []), (1, [1]), (10_000, [10_000]), (10_001, [10_000, 1])]
)
def test_row_limit_edges(count: int, sizes: list[int]) -> None:
    """10,000 rows fit one body; the 10,001st opens a second."""
    assert [batch.count for batch in pack(numbered(count))] == sizes


def test_indices_are_the_callers_not_positions() -> None:
    """Batch.indices carries the indices the caller gave, gaps included."""
    rows = [(7, {"a": 1}), (3, {"a": 2}), (42, {"a": 3})]

    (batch,) = pack(rows, max_rows=10)

    assert batch.indices == (7, 3, 42)


def test_max_rows_is_configurable() -> None:
    """max_rows caps every body's row count."""
    batches = list(pack(numbered(7), max_rows=3))

    assert [batch.count for batch in batches] == [3, 3, 1]


# --- byte limit -------------------------------------------------------------------------------


def wide_rows(count: int) -> list[tuple[int, dict[str, Any]]]:
    """Rows of varying widths, 20 to ~300 bytes each."""
    return [(n, {"id": n, "text": "x" * ((n * 37) % 280)}) for n in range(count)]


def test_wide_rows_split_by_bytes_into_the_fewest_bodies() -> None:
    """Every body is within max_bytes and no two consecutive bodies could have been one."""
    max_bytes = 1_000
    rows = wide_rows(200)

    batches = list(pack(rows, max_bytes=max_bytes))

    assert len(batches) > 1
    for batch in batches:
        assert len(batch.body) <= max_bytes
        assert body_rows(batch) == list(batch.rows)
    for first, second in itertools.pairwise(batches):
        merged = len(first.body) + 1 + len(serialise(second.rows[0]))
        assert merged > max_bytes, "the next row would have fitted in the previous body"
    assert [i for batch in batches for i in batch.indices] == list(range(200))


def test_body_exactly_at_max_bytes_is_one_batch() -> None:
    """Three 7-byte rows make a 34-byte body: max_bytes=34 is one body, 33 is two."""
    rows = [(n, {"a": n}) for n in range(3)]
    assert [len(serialise(row)) for _, row in rows] == [7, 7, 7]
    exact = ENVELOPE + 3 * 7 + 2

    (batch,) = pack(rows, max_bytes=exact)
    assert len(batch.body) == exact

    batches = list(pack(rows, max_bytes=exact - 1))
    assert [b.count for b in batches] == [2, 1]
    assert all(len(b.body) <= exact - 1 for b in batches)


def test_single_row_exactly_filling_max_bytes_is_sent() -> None:
    """A row whose body is exactly max_bytes is sent alone; one byte less and it is refused."""
    row = {"s": "x" * 100}
    exact = ENVELOPE + len(serialise(row))
    rejects = Rejects()

    (batch,) = pack([(0, row)], max_bytes=exact, on_reject=rejects)
    assert len(batch.body) == exact
    assert rejects.seen == []

    assert list(pack([(0, row)], max_bytes=exact - 1, on_reject=rejects)) == []
    assert rejects.indices == [0]


def test_row_bigger_than_max_bytes_is_rejected_and_the_others_pack() -> None:
    """A row too big for any body goes to on_reject with its index; the rest are still sent."""
    huge: dict[str, Any] = {"s": "x" * 500}
    rows: list[tuple[int, dict[str, Any]]] = [
        (0, {"a": 1}),
        (1, huge),
        (2, {"a": 2}),
        (3, {"a": 3}),
    ]
    rejects = Rejects()

    batches = list(pack(rows, max_bytes=100, on_reject=rejects))

    assert rejects.indices == [1]
    problem, row = rejects.seen[0]
    assert row is huge
    assert problem.reason
    assert [i for batch in batches for i in batch.indices] == [0, 2, 3]


def test_row_bigger_than_max_bytes_without_on_reject_raises() -> None:
    """Without on_reject an oversized row raises ValueError."""
    with pytest.raises(ValueError):
        list(pack([(0, {"a": 1}), (1, {"s": "x" * 500})], max_bytes=100))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, object()])
def test_row_that_is_not_json_is_rejected(bad: object) -> None:
    """A row holding NaN, an infinity or a non-JSON value is rejected with its index."""
    rows: list[tuple[int, dict[str, Any]]] = [(0, {"a": 1}), (1, {"a": bad}), (2, {"a": 2})]
    rejects = Rejects()

    batches = list(pack(rows, on_reject=rejects))

    assert rejects.indices == [1]
    assert [i for batch in batches for i in batch.indices] == [0, 2]
    assert all(b"NaN" not in batch.body and b"Infinity" not in batch.body for batch in batches)


def test_row_that_is_not_json_without_on_reject_raises() -> None:
    """Without on_reject a NaN row raises ValueError."""
    with pytest.raises(ValueError):
        list(pack([(0, {"a": float("nan")})]))


def test_row_with_a_lone_surrogate_is_rejected() -> None:
    """Text that cannot be UTF-8 (a lone surrogate) is rejected, not sent."""
    rejects = Rejects()

    batches = list(pack([(0, {"s": "\ud800"}), (1, {"s": "ok"})], on_reject=rejects))

    assert rejects.indices == [0]
    assert [batch.indices for batch in batches] == [(1,)]


def test_non_ascii_text_is_utf8_and_counted_in_bytes() -> None:
    """Non-ASCII text is sent as UTF-8 and the byte limit counts bytes, not characters."""
    row = {"s": "é" * 10}  # 18 characters, 28 bytes
    part = serialise(row)
    assert len(part) == 28
    two_rows = ENVELOPE + 2 * len(part) + 1  # 68 bytes (48 characters)

    (together,) = pack([(0, row), (1, row)], max_bytes=two_rows)
    apart = list(pack([(0, row), (1, row)], max_bytes=two_rows - 1))

    assert "é".encode() in together.body
    assert b"\\u" not in together.body
    assert len(together.body) == two_rows
    assert body_rows(together) == [row, row]
    assert [batch.count for batch in apart] == [1, 1]


def test_default_byte_limit_is_16_million() -> None:
    """By default a body holds at most 16,000,000 bytes, even with fewer than 10,000 rows."""
    row = {"s": "x" * 3_990}  # ~4 KB: 10,000 of them would be ~40 MB
    rows = ((n, row) for n in range(10_000))

    batches = list(pack(rows))

    assert len(batches) == 3
    assert all(len(batch.body) <= 16_000_000 for batch in batches)
    assert sum(batch.count for batch in batches) == 10_000


# --- laziness ---------------------------------------------------------------------------------


def rows_then_failure(good: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``good`` rows, then fail as a broken source would."""
    for n in range(good):
        yield n, {"n": n}
    raise RuntimeError("the source failed after the good rows")


def test_pack_does_not_read_past_the_next_row() -> None:
    """pack is lazy: the first batch comes before the source is drained."""
    batches = pack(rows_then_failure(10_001))

    first = next(batches)

    assert first.count == 10_000
    assert first.indices[-1] == 9_999


def test_pack_yields_a_full_batch_without_reading_another_row() -> None:
    """A batch that holds max_rows rows is yielded before the next row is read."""
    batches = pack(rows_then_failure(10_000))

    first = next(batches)

    assert first.count == 10_000
    with pytest.raises(RuntimeError):
        next(batches)


def test_a_group_that_fits_is_not_split_across_two_batches() -> None:
    """Groups (queue messages) of 30 rows, batches of at most 100 rows: the fourth group would
    straddle the first batch, so the first batch closes at 90 rows; a group larger than a
    batch is split as before."""
    rows = [(i, {"n": i}) for i in range(250)]
    groups = {start: 30 for start in range(0, 180, 30)} | {180: 70}
    batches = list(pack(rows, max_rows=100, keep_together=groups))
    assert [b.count for b in batches] == [90, 90, 70]
    batch_of = {i: k for k, batch in enumerate(batches) for i in batch.indices}
    for start, length in groups.items():
        assert len({batch_of[i] for i in range(start, start + length)}) == 1, start
    big = list(pack(rows, max_rows=100, keep_together={0: 20, 20: 230}))
    assert [b.count for b in big] == [100, 100, 50]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(row=st.dictionaries(st.text(), JSON_VALUES, max_size=6))
def test_serialise_writes_what_json_dumps_writes(row: dict[str, object]) -> None:
    """The encoder built once gives byte for byte what the standard library gives."""
    expected = json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert serialise(row) == expected.encode("utf-8")


def test_a_refused_row_leaves_nothing_behind_for_the_next() -> None:
    """A row refused mid-way (NaN deep inside) must not make a later row with the same
    containers look circular (the C encoder keeps what it was inside when it failed); a real
    cycle is still refused."""
    row: dict[str, Any] = {"a": {"b": [{"c": float("nan")}]}}
    with pytest.raises(ValueError, match="Out of range"):
        serialise(row)
    row["a"]["b"][0]["c"] = 1.5  # the same dicts and list, fixed
    assert serialise(row) == b'{"a":{"b":[{"c":1.5}]}}'
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular"):
        serialise(loop)
