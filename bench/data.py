"""The benchmark's table and rows: the seed's SalesMarketing ``Product`` table extended with a
Double (``Price``) and a DateTime (``Updated``) column, and deterministic rows for it as CSV
(values as text, typed by the schema) and NDJSON (values as JSON types).

Every 100th row has no price (an empty CSV field, a JSON null), so the empty-to-null rule is
exercised too.

The same rows are also written as a real export would have them (:func:`write_profiled_csv`):
the missing price as ``NA`` and ``Updated`` as ``yyyy/MM/dd HH:mm:ss``, to be read under
:data:`INGEST_PROFILE`; they must be stored exactly as the plain CSV's rows are.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.machine import REPO

TABLE = "Product"
SEED = REPO / "datasets" / "SalesMarketing.json"
EXTRA_COLUMNS = [
    {"name": "Price", "dataType": "Double"},
    {"name": "Updated", "dataType": "DateTime"},
]
CSV_HEADER = "ProductID,Manufacturer,Category,Segment,Product,IsCompete,Price,Updated\n"
_CATEGORIES = ("Urban", "Rural", "Mix", "Youth")
_SEGMENTS = ("Moderation", "Convenience", "Extreme", "Select", "Productivity", "Regular")


def definition(name: str = "SalesMarketing") -> dict[str, Any]:
    """The seed's Create Dataset body, renamed, with ``Product`` widened by two columns."""
    body: dict[str, Any] = copy.deepcopy(json.loads(SEED.read_text(encoding="utf-8")))
    body["name"] = name
    product = next(t for t in body["tables"] if t["name"] == TABLE)
    product["columns"] = [*product["columns"], *copy.deepcopy(EXTRA_COLUMNS)]
    return body


def columns() -> dict[str, str]:
    """Column name -> declared type, as the definition spells it."""
    product = next(t for t in definition()["tables"] if t["name"] == TABLE)
    return {c["name"]: c["dataType"] for c in product["columns"]}


#: The ingest profile (one table's entry, as ``datasets/<Dataset>.profile.json`` or a blob's
#: ``profile`` metadata would give it) that reads :func:`write_profiled_csv`'s file: one
#: fixed-width numeric date pattern (the engine rewrites a whole column of it to ISO in one
#: ``re.sub``) and a null token (which replaces the default ones for non-text columns).
INGEST_PROFILE: dict[str, Any] = {"dateFormats": ["yyyy/MM/dd HH:mm:ss"], "nullTokens": ["NA"]}
PROFILED_NULL = "NA"


def _moment(i: int) -> tuple[int, int, int, int, int]:
    """Row ``i``'s ``Updated`` in 2026: (month, day, hour, minute, second)."""
    return 1 + i % 12, 1 + i % 28, i % 24, i % 60, (i * 7) % 60


def _fields(i: int) -> tuple[int, str, str, str, str, bool, str, str]:
    price = "" if i % 100 == 99 else f"{10 + (i % 5000) * 0.37:.2f}"
    month, day, hour, minute, second = _moment(i)
    updated = f"2026-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"
    return (
        i + 1,
        f"VanArsdel {i % 17}",
        _CATEGORIES[i % 4],
        _SEGMENTS[i % 6],
        f"Maximus UC-{i % 997}",
        i % 3 == 0,
        price,
        updated,
    )


def csv_line(i: int) -> str:
    pid, maker, category, segment, product, compete, price, updated = _fields(i)
    flag = "true" if compete else "false"
    return f"{pid},{maker},{category},{segment},{product},{flag},{price},{updated}\n"


def profiled_csv_line(i: int) -> str:
    """Row ``i`` as :func:`csv_line` has it, but with the missing price as ``NA`` and
    ``Updated`` as ``yyyy/MM/dd HH:mm:ss`` (the same moment, in UTC)."""
    pid, maker, category, segment, product, compete, price, _ = _fields(i)
    flag = "true" if compete else "false"
    month, day, hour, minute, second = _moment(i)
    updated = f"2026/{month:02d}/{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
    price = price or PROFILED_NULL
    return f"{pid},{maker},{category},{segment},{product},{flag},{price},{updated}\n"


def json_row(i: int) -> dict[str, Any]:
    pid, maker, category, segment, product, compete, price, updated = _fields(i)
    return {
        "ProductID": pid,
        "Manufacturer": maker,
        "Category": category,
        "Segment": segment,
        "Product": product,
        "IsCompete": compete,
        "Price": float(price) if price else None,
        "Updated": updated,
    }


def ndjson_line(i: int) -> str:
    return json.dumps(json_row(i), separators=(",", ":")) + "\n"


def _write(path: Path, header: str, line: Any, rows: int) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(header)
        block: list[str] = []
        for i in range(rows):
            block.append(line(i))
            if len(block) == 50_000:
                out.write("".join(block))
                block = []
        out.write("".join(block))
    return path


def write_csv(path: Path, rows: int) -> Path:
    """A CSV file of ``rows`` rows (plus the header)."""
    return _write(path, CSV_HEADER, csv_line, rows)


def write_profiled_csv(path: Path, rows: int) -> Path:
    """:func:`write_csv`'s rows as a real export writes them, read under
    :data:`INGEST_PROFILE` (the same header)."""
    return _write(path, CSV_HEADER, profiled_csv_line, rows)


def write_ndjson(path: Path, rows: int) -> Path:
    """An NDJSON file of ``rows`` rows."""
    return _write(path, "", ndjson_line, rows)


def read_chunks(path: Path, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A file in ``size`` chunks, as the blob path reads a blob (1 MiB ranges)."""
    with path.open("rb") as source:
        while chunk := source.read(size):
            yield chunk


def csv_blob_chunks(body: Path, copies: int) -> Iterator[bytes]:
    """A CSV made of the header and ``copies`` copies of ``body``'s rows (its header dropped):
    how the 1 GB blob is produced without holding it anywhere."""
    header = CSV_HEADER.encode()
    yield header
    for _ in range(copies):
        first = True
        for chunk in read_chunks(body, 4 * 1024 * 1024):
            if first:
                chunk = chunk.removeprefix(header)
                first = False
            yield chunk


def head_csv(source: Path, target: Path, rows: int) -> Path:
    """The first ``rows`` rows of a CSV file, with its header."""
    with source.open("rb") as src, target.open("wb") as out:
        out.write(src.readline())
        for _, line in zip(range(rows), src, strict=False):
            out.write(line)
    return target


def count(chunks: Iterable[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)
