"""Figure 1: engine throughput, CSV and NDJSON, against the naive baseline (:mod:`bench.naive`).

The engine is measured as the blob path runs it: ``read_rows`` over 1 MiB chunks of a file,
then :meth:`Ingestor.push` (validate and coerce every value against the compiled schema, pack
into the fewest bodies, account for every row), with a Power BI stand-in that accepts each Add
Rows body at once and drops it, and a governor with the quotas lifted. One process, one thread:
rows per CPU-second of the process is rows per second per core.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bench import data, naive
from bench.report import Figure, median, profile
from shared.contracts import Target
from shared.destinations.powerbi import PowerBIClient
from shared.engine.batching import BLOCK_ROWS, Block, pack_blocks
from shared.engine.governor import Governor, Quotas
from shared.engine.ingest import Ingestor
from shared.engine.schema import DatasetDefinition, RowValidator
from shared.sources.formats import read_rows

NAME = "SalesMarketing"
TARGET_RATIO = 2.0


class NullPowerBI:
    """Stands in for :class:`PowerBIClient`: the dataset is created at once and every Add Rows
    body is accepted and dropped (its size is counted)."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0

    def get_datasets(
        self, workspace: str | None = None, deadline: Any = None
    ) -> list[dict[str, Any]]:
        return []

    def create_dataset(
        self, definition: dict[str, Any], workspace: str | None = None, deadline: Any = None
    ) -> dict[str, Any]:
        return {"id": "00000000-0000-0000-0000-00000000bench", "name": definition["name"]}

    def post_rows(
        self,
        dataset_id: str,
        table: str,
        body: bytes,
        workspace: str | None = None,
        deadline: Any = None,
    ) -> None:
        self.posts += 1
        self.bytes += len(body)


def unlimited() -> Governor:
    big = 10**12
    return Governor(Quotas(posts_per_minute=big, posts_per_hour_large_table=big, rows_per_hour=big))


def engine_push(path: Path, kind: str) -> tuple[int, int]:
    """Push a file through the engine; returns (rows sent, bodies made)."""
    client = NullPowerBI()
    definition = DatasetDefinition.from_body(data.definition(NAME))
    ingestor = Ingestor(
        cast(PowerBIClient, client), definitions={NAME: definition}, governor=unlimited()
    )
    result = ingestor.push(Target(NAME, data.TABLE), read_rows(data.read_chunks(path), kind))
    if result.rejected or result.unsent:
        raise AssertionError(f"engine refused rows: {result.to_json()}")
    return result.sent, client.posts


def naive_push(path: Path, kind: str) -> tuple[int, int]:
    """The baseline over the same file; returns (rows, bodies)."""
    bodies = naive.csv_bodies if kind == "csv" else naive.ndjson_bodies
    rows = posts = 0
    for count, _body in bodies(path, data.columns()):
        posts += 1
        rows += count
    return rows, posts


@dataclass
class Sample:
    rows: int
    posts: int
    cpu: float
    wall: float

    @property
    def per_cpu_second(self) -> float:
        return self.rows / self.cpu


def measure(call: Callable[[], tuple[int, int]]) -> Sample:
    cpu, wall = time.process_time(), time.perf_counter()
    rows, posts = call()
    return Sample(rows, posts, time.process_time() - cpu, time.perf_counter() - wall)


def _validator() -> RowValidator:
    return DatasetDefinition.from_body(data.definition(NAME)).tables[data.TABLE].validator()


def _blocks(path: Path, kind: str, validator: RowValidator) -> Iterator[Block]:
    """The rows read and validated as Ingestor.push does it: blocks of BLOCK_ROWS checked
    together (every bench row is valid, so the row-by-row fallback never runs)."""
    rows = enumerate(read_rows(data.read_chunks(path), kind))
    while items := list(itertools.islice(rows, BLOCK_ROWS)):
        checked = validator.check_block([row for _, row in items])
        if checked is None:
            raise AssertionError("a bench block was not validated as a block")
        yield Block([index for index, _ in items], *checked)


def stages(path: Path, kind: str) -> dict[str, float]:
    """CPU microseconds per row of each cumulative stage: read, + validate, + pack, + the rest
    of Ingestor.push (accounting, pacing). Shows where the time goes."""
    validator = _validator()

    def read_only() -> tuple[int, int]:
        return sum(1 for _ in read_rows(data.read_chunks(path), kind)), 0

    def read_validate() -> tuple[int, int]:
        return sum(len(block.indices) for block in _blocks(path, kind, validator)), 0

    def read_validate_pack() -> tuple[int, int]:
        n = posts = 0
        for batch in pack_blocks(_blocks(path, kind, validator)):
            n += batch.count
            posts += 1
        return n, posts

    out: dict[str, float] = {}
    for label, call in (
        ("read", read_only),
        ("read+validate", read_validate),
        ("read+validate+pack", read_validate_pack),
        ("Ingestor.push", lambda: engine_push(path, kind)),
    ):
        sample = measure(call)
        out[label] = round(sample.cpu / sample.rows * 1e6, 2)
    return out


def run(
    files: dict[str, Path], rows: int, repetitions: int, stage_files: dict[str, Path]
) -> list[Figure]:
    """Engine and baseline, interleaved, ``repetitions`` times each; medians."""
    samples: dict[tuple[str, str], list[Sample]] = {}
    for _ in range(repetitions):
        for kind in ("csv", "ndjson"):
            for who, call in (("engine", engine_push), ("naive", naive_push)):
                sample = measure(functools.partial(call, files[kind], kind))
                if sample.rows != rows:
                    raise AssertionError(f"{who} {kind}: {sample.rows} rows, expected {rows}")
                samples.setdefault((who, kind), []).append(sample)
    figures = []
    for number, kind in (("1a", "csv"), ("1b", "ndjson")):
        engine = median([s.per_cpu_second for s in samples[("engine", kind)]])
        baseline = median([s.per_cpu_second for s in samples[("naive", kind)]])
        ratio = engine / baseline
        figures.append(
            Figure(
                number,
                f"Engine throughput, {kind.upper()} {rows:,} rows (rows/s per core)",
                f"{engine:,.0f} vs naive {baseline:,.0f} = {ratio:.2f}x",
                f">= {TARGET_RATIO:.0f}x naive",
                ratio >= TARGET_RATIO,
                {
                    "rows": rows,
                    "repetitions": repetitions,
                    "engine_rows_per_cpu_second": round(engine),
                    "naive_rows_per_cpu_second": round(baseline),
                    "ratio": round(ratio, 3),
                    "engine_posts": samples[("engine", kind)][0].posts,
                    "naive_posts": samples[("naive", kind)][0].posts,
                    "engine_cpu_seconds": [round(s.cpu, 3) for s in samples[("engine", kind)]],
                    "naive_cpu_seconds": [round(s.cpu, 3) for s in samples[("naive", kind)]],
                    "engine_wall_seconds": [round(s.wall, 3) for s in samples[("engine", kind)]],
                    "naive_wall_seconds": [round(s.wall, 3) for s in samples[("naive", kind)]],
                    "stage_cpu_us_per_row": stages(stage_files[kind], kind),
                },
            )
        )
    return figures


def profiles(stage_files: dict[str, Path], results: Path) -> dict[str, list[dict[str, Any]]]:
    """cProfile of the engine on the smaller files, one listing per format."""
    return {
        kind: profile(
            functools.partial(engine_push, stage_files[kind], kind),
            results / f"profile-engine-{kind}.txt",
        )
        for kind in ("csv", "ndjson")
    }
