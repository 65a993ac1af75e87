"""The baseline: Add Rows bodies made the way peer projects make them.

Written plainly, as a typical push script or function does it (the Power BI push samples and
the webhook-to-Power-BI functions found in the wild): ``csv.DictReader`` (or ``json.loads`` per
NDJSON line) gives a dict per row; every value goes through an if/elif on its column's declared
type (CSV text converted with ``int``/``float``/``== "true"``; JSON values checked with
``isinstance``); rows are collected in lists of 10,000 and each body is
``json.dumps({"rows": batch}).encode()``.

It does less than the engine, which is the point of the comparison: no Int64.Max/Min, NaN or
infinity check, no 4,000-character limit, no check for unknown columns, no date-time parsing or
normalisation to UTC (a DateTime goes out as the text it came in), no byte limit per body, no
per-row problems (the first bad value stops the file), and ``json.dumps`` escapes non-ASCII.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROWS_PER_POST = 10_000


def csv_bodies(path: Path, types: Mapping[str, str]) -> Iterator[tuple[int, bytes]]:
    """(rows, Add Rows body) pairs from a CSV file whose columns are typed by ``types``."""
    kinds = {name: kind.lower() for name, kind in types.items()}
    batch: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8-sig") as source:
        for row in csv.DictReader(source):
            out: dict[str, Any] = {}
            for name, value in row.items():
                kind = kinds[name]
                if value == "" and kind != "string":
                    out[name] = None
                elif kind in ("int64", "int"):
                    out[name] = int(value)
                elif kind in ("double", "decimal"):
                    out[name] = float(value)
                elif kind in ("boolean", "bool"):
                    out[name] = value.strip().lower() == "true"
                else:  # string, datetime: as text
                    out[name] = value
            batch.append(out)
            if len(batch) == ROWS_PER_POST:
                yield len(batch), json.dumps({"rows": batch}).encode("utf-8")
                batch = []
    if batch:
        yield len(batch), json.dumps({"rows": batch}).encode("utf-8")


def ndjson_bodies(path: Path, types: Mapping[str, str]) -> Iterator[tuple[int, bytes]]:
    """(rows, Add Rows body) pairs from an NDJSON file, each value's JSON type checked against
    ``types``."""
    kinds = {name: kind.lower() for name, kind in types.items()}
    batch: list[dict[str, Any]] = []
    with path.open(encoding="utf-8-sig") as source:
        for line in source:
            if not line.strip():
                continue
            row = json.loads(line)
            for name, value in row.items():
                kind = kinds[name]
                if value is None:
                    continue
                if kind in ("int64", "int"):
                    ok = isinstance(value, int) and not isinstance(value, bool)
                elif kind in ("double", "decimal"):
                    ok = isinstance(value, int | float) and not isinstance(value, bool)
                elif kind in ("boolean", "bool"):
                    ok = isinstance(value, bool)
                else:  # string, datetime
                    ok = isinstance(value, str)
                if not ok:
                    raise ValueError(f"{name}: expected {kind}, got {value!r}")
            batch.append(row)
            if len(batch) == ROWS_PER_POST:
                yield len(batch), json.dumps({"rows": batch}).encode("utf-8")
                batch = []
    if batch:
        yield len(batch), json.dumps({"rows": batch}).encode("utf-8")
