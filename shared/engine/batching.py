"""Packing a stream of rows into the fewest legal Add Rows bodies.

Each row is serialised exactly once, to compact UTF-8 JSON; a body is those bytes joined inside
``{"rows":[...]}``, so its size is known exactly before it is sent. A body closes when adding
the next row would pass 10,000 rows or the byte limit, so wide rows split earlier
(https://learn.microsoft.com/en-us/power-bi/developer/embedded/push-datasets-limitations).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shared import limits
from shared.errors import RowProblem

#: Rows that Ingestor validates and packs together (RowValidator.check_block, pack_blocks):
#: a few of the readers' pieces (shared/sources/formats.py _PIECE_LINES), so that a block's
#: objects are still in the CPU's cache (1,000-row blocks of whole 1 MiB chunks ran about 10%
#: slower). A full body waits for at most this many more rows.
BLOCK_ROWS = 512

_OPEN = b'{"rows":['
_CLOSE = b"]}"
_ENVELOPE = len(_OPEN) + len(_CLOSE)

#: msgspec's encoder writes compact UTF-8 JSON in C; it is used for the values it writes byte
#: for byte as ``json.dumps`` does (checked by :func:`_plain`), the standard library for the
#: rest (NaN and infinities, which msgspec would write as null; odd types; cycles).
_msgspec_encode = msgspec.json.Encoder().encode
_json_dumps = functools.partial(
    json.dumps, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)
#: Python writes a float with an exponent below 1e-4 and from 1e16 up (``repr``: "1e-05",
#: "1e+16"); msgspec writes those "0.00001" and "1e16". Between them both write the same
#: shortest round-trip digits (checked over 180,000 random floats of 60 magnitudes).
PLAIN_FLOAT_MIN = 1e-4
PLAIN_FLOAT_MAX = 1e16
#: Past this depth a value goes to the standard library (which also finds cycles).
_PLAIN_DEPTH = 32
_INT_LIMIT = 2**64


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether msgspec writes ``value`` exactly as ``json.dumps`` (compact, UTF-8) does."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    if kind is float:
        # False for NaN and infinities: the standard library refuses them.
        return bool(value == 0.0 or PLAIN_FLOAT_MIN <= abs(value) < PLAIN_FLOAT_MAX)
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in value)
    return False


@dataclass(frozen=True)
class Batch:
    """One Add Rows body and the input positions of the rows it carries."""

    body: bytes
    indices: tuple[int, ...]
    #: The rows as sent, as dicts; None for a row of a plain block (:func:`pack_blocks`): its
    #: values are plain JSON scalars, so the body gives it back exactly (:attr:`rows`), and
    #: the row need not be kept alive (and freed later, out of the CPU's cache) until the
    #: batch is done with.
    held: tuple[Any, ...]

    @property
    def count(self) -> int:
        return len(self.indices)

    @functools.cached_property
    def rows(self) -> tuple[dict[str, Any], ...]:
        """The rows as dicts (read back from the body where they were not kept: only a refused
        batch needs them)."""
        if None not in self.held:
            return self.held
        sent = json.loads(self.body)["rows"]
        return tuple(sent[n] if row is None else row for n, row in enumerate(self.held))


def _as_dict(row: Any) -> Any:
    return row if type(row) is dict else msgspec.to_builtins(row)


def serialise(row: dict[str, Any]) -> bytes:
    """A row as compact UTF-8 JSON (NaN and infinities refused, as Power BI refuses them),
    byte for byte what ``json.dumps(row, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False)`` gives."""
    if _plain(row):
        return _msgspec_encode(row)
    return _json_dumps(row).encode("utf-8")


def pack(
    rows: Iterable[tuple[int, dict[str, Any]]],
    *,
    max_rows: int = limits.MAX_ROWS_PER_POST,
    max_bytes: int = limits.MAX_BODY_BYTES,
    on_reject: Callable[[RowProblem, dict[str, Any]], None] | None = None,
    keep_together: Mapping[int, int] | None = None,
) -> Iterator[Batch]:
    """Lazily yield :class:`Batch` es from ``(index, row)`` pairs, in order.

    A row that cannot be serialised, or that alone exceeds ``max_bytes``, is passed to
    ``on_reject`` with the reason (or raises ``ValueError`` when no callback is given).

    ``keep_together`` maps the first index of a group of rows (one queue message) to its
    length: a group that fits in one batch (by count) is not split across two, so that an
    ambiguous failure of one POST fails only groups it carries whole, and redelivering them
    re-sends no row that another POST already delivered.
    """
    parts: list[bytes] = []
    indices: list[int] = []
    kept: list[dict[str, Any]] = []
    size = _ENVELOPE
    starts = iter(sorted(keep_together or {}))
    next_start = next(starts, None)

    for index, row in rows:
        group_end = None
        while next_start is not None and next_start <= index:  # a group began at or before
            assert keep_together is not None
            group_end = next_start + keep_together[next_start]
            next_start = next(starts, None)
        if group_end is not None and parts:
            left = group_end - index  # the group's rows from here (some may yet be refused)
            if len(parts) + left > max_rows >= left:
                yield Batch(_OPEN + b",".join(parts) + _CLOSE, tuple(indices), tuple(kept))
                parts, indices, kept, size = [], [], [], _ENVELOPE
        try:
            part = serialise(row)
        except (TypeError, ValueError) as exc:
            _reject(on_reject, RowProblem(index, f"row cannot be sent as JSON: {exc}"), row)
            continue
        cost = len(part) + (1 if parts else 0)  # the comma before every row but the first
        if _ENVELOPE + len(part) > max_bytes:
            _reject(
                on_reject,
                RowProblem(
                    index, f"row of {len(part):,} bytes exceeds the {max_bytes:,}-byte limit"
                ),
                row,
            )
            continue
        if parts and size + cost > max_bytes:
            yield Batch(_OPEN + b",".join(parts) + _CLOSE, tuple(indices), tuple(kept))
            parts, indices, kept, size = [], [], [], _ENVELOPE
            cost = len(part)
        parts.append(part)
        indices.append(index)
        kept.append(row)
        size += cost
        if len(parts) >= max_rows:
            # Full by count: hand it on now rather than after reading one more row, so a
            # failing or slow source never holds back a complete batch.
            yield Batch(_OPEN + b",".join(parts) + _CLOSE, tuple(indices), tuple(kept))
            parts, indices, kept, size = [], [], [], _ENVELOPE
    if parts:
        yield Batch(_OPEN + b",".join(parts) + _CLOSE, tuple(indices), tuple(kept))


def _reject(
    callback: Callable[[RowProblem, dict[str, Any]], None] | None,
    problem: RowProblem,
    row: dict[str, Any],
) -> None:
    if callback is None:
        raise ValueError(problem.reason)
    callback(problem, row)


@dataclass(slots=True)
class Block:
    """Consecutive rows of a stream (in order, some positions may be missing: refused rows),
    ready to be packed. ``plain`` says every value is one msgspec writes as ``json.dumps``
    does (:func:`_plain`): the schema's block check establishes it (strings, bools, Int64s and
    finite doubles in the plain range), so the block is encoded in one call."""

    indices: list[int]
    rows: list[Any]  # dicts, or msgspec Structs that encode as the same objects
    plain: bool = False


def pack_blocks(
    blocks: Iterable[Block],
    *,
    max_rows: int = limits.MAX_ROWS_PER_POST,
    max_bytes: int = limits.MAX_BODY_BYTES,
    on_reject: Callable[[RowProblem, dict[str, Any]], None] | None = None,
    keep_together: Mapping[int, int] | None = None,
) -> Iterator[Batch]:
    """:func:`pack` over rows that come in :class:`Block` s: the same batches, byte for byte.

    A plain block's rows that go into one batch are encoded in one call (a list encodes as its
    items' JSON joined by commas, so the size of the part is still exact). Row by row, as
    :func:`pack` does, where that is not known to give the same result: a block that is not
    plain, rows that would pass the byte limit, and rows where a ``keep_together`` group
    starts.
    """
    parts: list[bytes | memoryview] = []  # one row's JSON, or several rows' joined by ","
    count = 0
    indices: list[int] = []
    kept: list[Any] = []
    size = _ENVELOPE
    starts = sorted(keep_together or {})
    position = 0  # the next group start not yet reached
    group_end: int | None = None

    def batch() -> Batch:
        pieces: list[Any] = [_OPEN]
        for part in parts:
            pieces += (part, b",")
        pieces[-1] = _CLOSE
        return Batch(b"".join(pieces), tuple(indices), tuple(kept))  # one copy of the bytes

    for block in blocks:
        block_indices, rows = block.indices, block.rows
        total = len(block_indices)
        i = 0
        while i < total:
            end = min(total, i + max_rows - count)
            grouped = position < len(starts) and starts[position] <= block_indices[end - 1]
            if block.plain and not grouped:
                try:
                    encoded: bytes | None = _msgspec_encode(rows[i:end])  # b"[" + ... + b"]"
                except (TypeError, ValueError):
                    # A value UTF-8 cannot hold (a lone surrogate: UnicodeEncodeError): these
                    # rows go row by row below, where the one that fails is refused as pack()
                    # refuses it and the rest are sent.
                    encoded = None
                cost = 0 if encoded is None else len(encoded) - 2 + (1 if count else 0)
                if encoded is not None and size + cost <= max_bytes:
                    parts.append(memoryview(encoded)[1:-1])  # no copy
                    indices.extend(block_indices[i:end])
                    kept += [None] * (end - i)  # read back from the body if needed
                    count += end - i
                    size += cost
                    i = end
                    if count >= max_rows:
                        yield batch()
                        parts, indices, kept, count, size = [], [], [], 0, _ENVELOPE
                    continue
            else:
                end = i + 1  # one row, exactly as pack() takes it
            for index, held in zip(block_indices[i:end], rows[i:end], strict=True):
                # pack()'s loop body, row by row.
                row = _as_dict(held)
                group_end = None
                while position < len(starts) and starts[position] <= index:
                    assert keep_together is not None
                    group_end = starts[position] + keep_together[starts[position]]
                    position += 1
                if group_end is not None and count:
                    left = group_end - index
                    if count + left > max_rows >= left:
                        yield batch()
                        parts, indices, kept, count, size = [], [], [], 0, _ENVELOPE
                try:
                    part = serialise(row)
                except (TypeError, ValueError) as exc:
                    _reject(on_reject, RowProblem(index, f"row cannot be sent as JSON: {exc}"), row)
                    continue
                cost = len(part) + (1 if count else 0)
                if _ENVELOPE + len(part) > max_bytes:
                    _reject(
                        on_reject,
                        RowProblem(
                            index,
                            f"row of {len(part):,} bytes exceeds the {max_bytes:,}-byte limit",
                        ),
                        row,
                    )
                    continue
                if count and size + cost > max_bytes:
                    yield batch()
                    parts, indices, kept, count, size = [], [], [], 0, _ENVELOPE
                    cost = len(part)
                parts.append(part)
                indices.append(index)
                kept.append(row)
                count += 1
                size += cost
                if count >= max_rows:
                    yield batch()
                    parts, indices, kept, count, size = [], [], [], 0, _ENVELOPE
            i = end
    if count:
        yield batch()
