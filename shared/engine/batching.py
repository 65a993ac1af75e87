"""Packing a stream of rows into the fewest legal Add Rows bodies.

Each row is serialised exactly once, to compact UTF-8 JSON; a body is those bytes joined inside
``{"rows":[...]}``, so its size is known exactly before it is sent. A body closes when adding
the next row would pass 10,000 rows or the byte limit, so wide rows split earlier
(https://learn.microsoft.com/en-us/power-bi/developer/embedded/push-datasets-limitations).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared import limits
from shared.errors import RowProblem

_OPEN = b'{"rows":['
_CLOSE = b"]}"
_ENVELOPE = len(_OPEN) + len(_CLOSE)

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encode() -> Callable[[Any], str]:
    """``_encoder.encode``, with CPython's C encoder built once instead of on every call
    (``JSONEncoder.encode`` builds it each time: 2.4 -> 1.8 us for a bench row); the same
    output and the same errors (NaN, unknown types, circular references)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # not CPython's accelerated json: the plain encoder
        return _encoder.encode
    markers: dict[int, Any] = {}  # the encoder's circular-reference check
    encoder = make(
        markers, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(value: Any) -> str:
        if isinstance(value, str):  # JSONEncoder.encode's own shortcut for a bare string
            return _encoder.encode(value)
        try:
            return "".join(encoder(value, 0))
        except BaseException:
            # A failed encoding leaves its containers in ``markers``: a later row whose dict
            # reused one's id would be refused as circular.
            markers.clear()
            raise

    return encode


_encode = _make_encode()


@dataclass(frozen=True)
class Batch:
    """One Add Rows body and the input positions of the rows it carries."""

    body: bytes
    indices: tuple[int, ...]
    rows: tuple[dict[str, Any], ...]

    @property
    def count(self) -> int:
        return len(self.indices)


def serialise(row: dict[str, Any]) -> bytes:
    """A row as compact UTF-8 JSON (NaN and infinities refused, as Power BI refuses them)."""
    return _encode(row).encode("utf-8")


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
