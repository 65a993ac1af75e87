"""Figure 1: engine throughput, CSV and NDJSON, against the naive baseline (:mod:`bench.naive`).

The engine is measured as the blob path runs it: ``read_rows`` over 1 MiB chunks of a file,
then :meth:`Ingestor.push` (validate and coerce every value against the compiled schema, pack
into the fewest bodies, account for every row), with a Power BI stand-in that accepts each Add
Rows body at once and drops it, and a governor with the quotas lifted. One process, one thread:
rows per CPU-second of the process is rows per second per core.

The same CSV rows are also pushed as a real export would write them (``NA`` for the missing
price, ``yyyy/MM/dd HH:mm:ss`` dates) under an ingest profile that reads them
(:data:`bench.data.INGEST_PROFILE`), against the plain CSV of the same run: a profile must not
cost more than 10% of the engine's rate, and it must store the very same rows (checked body by
body before the timed runs).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
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
from shared.engine.profile import TableProfile, compile_profile
from shared.engine.schema import DatasetDefinition, RowValidator
from shared.sources.formats import read_rows

NAME = "SalesMarketing"
TARGET_RATIO = 2.0
#: The profiled CSV's rate as a fraction of the plain CSV's: "within 10%" (issue 14).
PROFILE_TARGET_RATIO = 0.9
#: The key of the profiled CSV in the files given to :func:`run` (read as ``csv``).
PROFILED = "csv-profiled"
PROFILED_LABEL = "CSV with a profile (NA nulls, yyyy/MM/dd dates)"


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


class DigestPowerBI(NullPowerBI):
    """:class:`NullPowerBI` that also keeps a digest of every body, in order: two files whose
    pushes give the same digest stored the same rows, value for value. Not used in the timed
    runs (hashing would be counted as the engine's time)."""

    def __init__(self) -> None:
        super().__init__()
        self.digest = hashlib.sha256()

    def post_rows(
        self,
        dataset_id: str,
        table: str,
        body: bytes,
        workspace: str | None = None,
        deadline: Any = None,
    ) -> None:
        super().post_rows(dataset_id, table, body, workspace, deadline)
        self.digest.update(len(body).to_bytes(8, "big"))  # where one body ends
        self.digest.update(body)


def unlimited() -> Governor:
    big = 10**12
    return Governor(Quotas(posts_per_minute=big, posts_per_hour_large_table=big, rows_per_hour=big))


def ingest_profile(
    definition: DatasetDefinition, entry: Mapping[str, Any] = data.INGEST_PROFILE
) -> TableProfile:
    """``entry`` compiled against the bench table, as the Ingestor compiles a blob's profile
    (:meth:`Ingestor.profile`: checked against the table's columns)."""
    return compile_profile(definition.tables[data.TABLE], entry, "the bench's profile")


def _push(client: NullPowerBI, path: Path, kind: str, entry: Mapping[str, Any] | None) -> int:
    """A file through the engine as the blob path pushes it: under ``entry``'s compiled profile
    (reader and validator alike) when given; returns the rows sent."""
    definition = DatasetDefinition.from_body(data.definition(NAME))
    # Compiled on every push, as a blob's own profile (its metadata) is: part of the cost.
    profile = ingest_profile(definition, entry) if entry is not None else None
    ingestor = Ingestor(
        cast(PowerBIClient, client), definitions={NAME: definition}, governor=unlimited()
    )
    result = ingestor.push(
        Target(NAME, data.TABLE),
        read_rows(data.read_chunks(path), kind, profile=profile),
        profile=profile,
    )
    if result.rejected or result.unsent:
        raise AssertionError(f"engine refused rows: {result.to_json()}")
    return result.sent


def engine_push(path: Path, kind: str, entry: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """Push a file through the engine (under the ingest profile ``entry``, if given); returns
    (rows sent, bodies made)."""
    client = NullPowerBI()
    return _push(client, path, kind, entry), client.posts


def engine_digest(
    path: Path, kind: str, entry: Mapping[str, Any] | None = None
) -> tuple[int, int, int, str]:
    """:func:`engine_push` that also returns the bytes sent and the digest of the bodies."""
    client = DigestPowerBI()
    sent = _push(client, path, kind, entry)
    return sent, client.posts, client.bytes, client.digest.hexdigest()


def check_same_rows(plain: Path, profiled: Path) -> dict[str, Any]:
    """The profiled CSV must be stored exactly as the plain one: same rows, same bodies, byte
    for byte (so ``NA`` became null and every date the same ISO moment). Raises
    AssertionError when not."""
    want = engine_digest(plain, "csv")
    got = engine_digest(profiled, "csv", data.INGEST_PROFILE)
    if got != want:
        raise AssertionError(
            f"the profiled CSV was not stored as the plain CSV: (rows, posts, bytes, digest) "
            f"{got} != {want}"
        )
    return {"rows": want[0], "posts": want[1], "bytes": want[2], "sha256": want[3]}


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


def _validator(entry: Mapping[str, Any] | None = None) -> RowValidator:
    """The bench table's validator, under ``entry``'s compiled profile when given."""
    definition = DatasetDefinition.from_body(data.definition(NAME))
    profile = ingest_profile(definition, entry) if entry is not None else None
    return definition.tables[data.TABLE].validator(profile)


def _blocks(
    path: Path, kind: str, validator: RowValidator, profile: TableProfile | None = None
) -> Iterator[Block]:
    """The rows read and validated as Ingestor.push does it: blocks of BLOCK_ROWS checked
    together (every bench row is valid, so the row-by-row fallback never runs)."""
    rows = enumerate(read_rows(data.read_chunks(path), kind, profile=profile))
    while items := list(itertools.islice(rows, BLOCK_ROWS)):
        checked = validator.check_block([row for _, row in items])
        if checked is None:
            raise AssertionError("a bench block was not validated as a block")
        yield Block([index for index, _ in items], *checked)


def stages(path: Path, kind: str, entry: Mapping[str, Any] | None = None) -> dict[str, float]:
    """CPU microseconds per row of each cumulative stage: read, + validate, + pack, + the rest
    of Ingestor.push (accounting, pacing), under the ingest profile ``entry`` when given.
    Shows where the time goes."""
    validator = _validator(entry)
    profile = validator.profile

    def read_only() -> tuple[int, int]:
        return sum(1 for _ in read_rows(data.read_chunks(path), kind, profile=profile)), 0

    def read_validate() -> tuple[int, int]:
        return sum(len(block.indices) for block in _blocks(path, kind, validator, profile)), 0

    def read_validate_pack() -> tuple[int, int]:
        n = posts = 0
        for batch in pack_blocks(_blocks(path, kind, validator, profile)):
            n += batch.count
            posts += 1
        return n, posts

    out: dict[str, float] = {}
    for label, call in (
        ("read", read_only),
        ("read+validate", read_validate),
        ("read+validate+pack", read_validate_pack),
        ("Ingestor.push", lambda: engine_push(path, kind, entry)),
    ):
        sample = measure(call)
        out[label] = round(sample.cpu / sample.rows * 1e6, 2)
    return out


#: Each repetition's runs, in order: (who, file). The profiled CSV runs just before the plain
#: CSV, so that the two runs it is compared with are its neighbours (the machine's load drifts).
_RUNS = (
    ("engine", PROFILED),
    ("engine", "csv"),
    ("naive", "csv"),
    ("engine", "ndjson"),
    ("naive", "ndjson"),
)


def _file_kind(key: str) -> str:
    """The reader's kind for a key of ``files``: the profiled file is a CSV."""
    return "csv" if key == PROFILED else key


def _engine_call(path: Path, key: str) -> Callable[[], tuple[int, int]]:
    entry = data.INGEST_PROFILE if key == PROFILED else None
    return functools.partial(engine_push, path, _file_kind(key), entry)


def run(
    files: dict[str, Path], rows: int, repetitions: int, stage_files: dict[str, Path]
) -> list[Figure]:
    """Engine and baseline, interleaved, ``repetitions`` times each; medians. ``files`` and
    ``stage_files`` hold ``csv``, ``ndjson`` and the profiled CSV (:data:`PROFILED`)."""
    # Before any timing: the profiled CSV must store what the plain CSV stores, body for body.
    # The smaller files hold every value the large ones have in each column but ProductID (every
    # field of the generator repeats within 5,000 rows); the timed runs check their row counts.
    same = check_same_rows(stage_files["csv"], stage_files[PROFILED])
    samples: dict[tuple[str, str], list[Sample]] = {}
    for _ in range(repetitions):
        for who, key in _RUNS:
            call = (
                _engine_call(files[key], key)
                if who == "engine"
                else functools.partial(naive_push, files[key], key)
            )
            sample = measure(call)
            if sample.rows != rows:
                raise AssertionError(f"{who} {key}: {sample.rows} rows, expected {rows}")
            samples.setdefault((who, key), []).append(sample)
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
    figures.append(_profiled_figure(samples, rows, repetitions, stage_files, same))
    return figures


def _profiled_figure(
    samples: dict[tuple[str, str], list[Sample]],
    rows: int,
    repetitions: int,
    stage_files: dict[str, Path],
    same: dict[str, Any],
) -> Figure:
    """1c: the profiled CSV against the plain CSV of the same run (medians, as 1a and 1b
    compare with the baseline)."""
    plain = median([s.per_cpu_second for s in samples[("engine", "csv")]])
    profiled = median([s.per_cpu_second for s in samples[("engine", PROFILED)]])
    ratio = profiled / plain
    return Figure(
        "1c",
        f"Engine throughput, {PROFILED_LABEL}, {rows:,} rows (rows/s per core)",
        f"{profiled:,.0f} vs CSV without a profile {plain:,.0f} = {ratio:.2f}x",
        f">= {PROFILE_TARGET_RATIO:.2f}x CSV without a profile (within 10%)",
        ratio >= PROFILE_TARGET_RATIO,
        {
            "rows": rows,
            "repetitions": repetitions,
            "profile": data.INGEST_PROFILE,
            "profiled_rows_per_cpu_second": round(profiled),
            "plain_rows_per_cpu_second": round(plain),
            "ratio": round(ratio, 3),
            # Each repetition's own ratio: how far the noise moves it.
            "paired_ratios": [
                round(p.per_cpu_second / c.per_cpu_second, 3)
                for p, c in zip(
                    samples[("engine", PROFILED)], samples[("engine", "csv")], strict=True
                )
            ],
            "profiled_posts": samples[("engine", PROFILED)][0].posts,
            "plain_posts": samples[("engine", "csv")][0].posts,
            "profiled_cpu_seconds": [round(s.cpu, 3) for s in samples[("engine", PROFILED)]],
            "plain_cpu_seconds": [round(s.cpu, 3) for s in samples[("engine", "csv")]],
            "profiled_wall_seconds": [round(s.wall, 3) for s in samples[("engine", PROFILED)]],
            "same_bodies_as_plain_csv": same,
            "stage_cpu_us_per_row": stages(stage_files[PROFILED], "csv", data.INGEST_PROFILE),
        },
    )


def profiles(stage_files: dict[str, Path], results: Path) -> dict[str, list[dict[str, Any]]]:
    """cProfile of the engine on the smaller files, one listing per file (the profiled CSV
    under its ingest profile)."""
    return {
        key: profile(_engine_call(stage_files[key], key), results / f"profile-engine-{key}.txt")
        for key in ("csv", "ndjson", PROFILED)
    }
