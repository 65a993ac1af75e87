"""Figure 8: the engine with both destinations on (issue 18, "What must be shown": "make bench:
throughput and POSTs per 1M rows with both destinations on").

A CSV file of the bench's ``Product`` rows (the seed's table plus ``Price`` and ``Updated``, as
figure 1 uses) is read in 1 MiB chunks by ``read_rows`` and pushed by ``Ingestor.push``, the
ingestor built as the app builds it (``shared.runtime.get_ingestor``: settings from the
environment, ``datasets/<Dataset>.destinations.json`` routing files, managed identity tokens
from the emulator's App Service endpoint, dead letters and creation lock in Azurite). The
emulator serves both destinations:

- Power BI at ``--time-scale 3600`` (an emulated hour lasts a real second) with the governor on
  the same clock (``POWERBI_QUOTA_TIME_SCALE``): 1,000,000 rows an hour and 120 POSTs an hour
  on a large table become 1,000,000 rows and 120 POSTs a real second, above what one process
  pushes (figure 1: well under 1,000,000 rows per CPU-second), so Power BI's quotas do not bind
  and the figure measures the engine and the destinations, not the pacing. ``PACING=local``:
  one process (figure 3 measures the shared ledger). The 429s are counted to show it.
- Kusto with streaming ingestion on (``--kusto-streaming on``) and queued ingestion through
  Azurite (``EMULATOR_KUSTO_STORAGE_CONNECTION``), as ``tests/integration/test_fanout.py``
  stands it up; the managed streaming client sends a chunk queued when its gzipped body is over
  4 MiB or the cluster throttles.

Runs, each on its own dataset (and Kusto table): 8a Power BI only (no routing file: today's
path, the baseline), 8b Eventhouse only, 8c both; the round is repeated three times and the
rates are medians (other work on the machine moves a single run). Per run: rows per second of
wall time of the ``push`` call and rows per CPU-second of this process (the emulator's work is
in its own process, on the same two cores), Power BI POSTs per 1,000,000 rows (the emulator's
``posts_accepted`` for the dataset), Eventhouse ingest calls per 1,000,000 rows (the
emulator's ``streaming_requests`` and ``queued_messages`` counters, before and after the run,
after a flush of the queued batches), and every row counted in each destination (Power BI's
``rows_accepted``; Kusto: ``T | count`` through ``KustoClient``). Targets: 8c's rows per
CPU-second at least half of 8a's (the fan-out reads and validates once; only delivery is
doubled) and 8c's POSTs per 1,000,000 rows equal to 8a's (the Eventhouse must not change how
Power BI packs).

Then the Eventhouse's chunk size (8e): ``EVENTHOUSE_CHUNK_ROWS`` (10,000, a guess from Power
BI's batch size; 8b) against 2,500 and 40,000 rows, Eventhouse only, in each round, by setting
the engine module's constant in this process for the run (the engine reads it at each chunk);
the constant in the engine is not changed here.

What the rates mean: the emulator parses every body in Python, in one process, on the same two
cores, so rows/s of wall time is mostly the emulator's speed: with both destinations it parses
every row twice, where two real services would work side by side (the engine overlaps them:
an Eventhouse chunk is in flight while Power BI's POSTs go on). Rows per CPU-second is this
process's own cost, the engine's part of the bill: the target is held to it, and the wall
ratio is shown beside it. Measured before the overlap and the engine's own gzip (level 1
instead of the client's 9): 0.43x wall, 0.30x CPU; after: 0.50x wall, 0.68x CPU (quick run).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

import shared.engine.ingest as ingest_module
from bench import data
from bench.latency import app_settings
from bench.report import Figure, median
from shared import runtime
from shared.contracts import PushResult, Target
from shared.destinations.eventhouse import EventhouseClient
from shared.destinations.kusto_schema import quote_name
from shared.engine.ingest import Ingestor
from shared.engine.routing import EVENTHOUSE, POWERBI, ROUTING_SUFFIX
from shared.sources.formats import read_rows
from tests.azurite import Azurite, start_azurite
from tests.emulator.conftest import IDENTITY_HEADER, WORKSPACE_NAME, Api, EmulatorProcess
from tests.emulator.kusto_fixtures import client as kusto_client
from tests.emulator.kusto_fixtures import start_kusto_emulator

#: Power BI's quota windows 3,600 times faster (see the module docstring), as figure 4 does.
TIME_SCALE = 3600.0
DATABASE = "Sales"
MILLION = 1_000_000
#: 8c's rows per CPU-second as a fraction of 8a's: a fan-out that reads once should not halve
#: the engine's throughput.
THROUGHPUT_RATIO_TARGET = 0.5
#: The chunk sizes compared in the Eventhouse-only runs; the engine's own is one of them.
CHUNK_SIZES = (2_500, ingest_module.EVENTHOUSE_CHUNK_ROWS, 40_000)
#: The Kusto counters an Eventhouse run is read from (emulator/kusto.py): ingest calls by kind,
#: rows stored, refusals.
KUSTO_COUNTERS = (
    "streaming_requests",
    "streaming_rows",
    "queued_messages",
    "queued_blobs",
    "rows_ingested",
    "throttled",
    "failed_ingestions",
)


@dataclass(frozen=True)
class Plan:
    """One run: its figure id, the table's destinations, the Eventhouse chunk size."""

    id: str
    destinations: tuple[str, ...]
    chunk_rows: int = ingest_module.EVENTHOUSE_CHUNK_ROWS

    @property
    def label(self) -> str:
        names = {POWERBI: "Power BI", EVENTHOUSE: "Eventhouse"}
        who = " + ".join(names[d] for d in self.destinations)
        return who + ("" if len(self.destinations) > 1 else " only")


@dataclass
class Outcome:
    """What one run measured."""

    plan: Plan
    rows: int
    wall: float
    cpu: float
    powerbi: dict[str, int] = field(default_factory=dict)
    kusto: dict[str, int] = field(default_factory=dict)
    arrived: dict[str, int] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall

    @property
    def rows_per_cpu_second(self) -> float:
        return self.rows / self.cpu

    @property
    def posts_per_million(self) -> float:
        return per_million(self.powerbi.get("posts_accepted", 0), self.rows)

    @property
    def ingest_calls(self) -> int:
        return self.kusto.get("streaming_requests", 0) + self.kusto.get("queued_messages", 0)

    @property
    def complete(self) -> bool:
        """Every row arrived in each of the run's destinations."""
        return all(self.arrived.get(d) == self.rows for d in self.plan.destinations)

    def to_json(self) -> dict[str, Any]:
        return {
            "destinations": list(self.plan.destinations),
            "eventhouse_chunk_rows": self.plan.chunk_rows
            if EVENTHOUSE in self.plan.destinations
            else None,
            "rows": self.rows,
            "wall_seconds": round(self.wall, 3),
            "cpu_seconds": round(self.cpu, 3),
            "rows_per_second_wall": round(self.rows_per_second),
            "rows_per_cpu_second": round(self.rows_per_cpu_second),
            "powerbi_counters": self.powerbi,
            "powerbi_posts_per_million": round(self.posts_per_million, 2),
            "kusto_counters": self.kusto,
            "eventhouse_streaming_per_million": round(
                per_million(self.kusto.get("streaming_requests", 0), self.rows), 2
            ),
            "eventhouse_queued_per_million": round(
                per_million(self.kusto.get("queued_messages", 0), self.rows), 2
            ),
            "arrived": self.arrived,
            "push_results": self.results,
        }


# --- pure helpers (tests/unit/test_bench_destinations.py) -------------------------------------


def per_million(count: int, rows: int) -> float:
    """``count`` scaled to 1,000,000 rows."""
    if rows <= 0:
        raise ValueError("no rows")
    return count * MILLION / rows


def routing_body(destinations: Sequence[str], table_prefix: str) -> dict[str, Any]:
    """The ``datasets/<Dataset>.destinations.json`` of a run: the bench table to
    ``destinations``, the Eventhouse's tables under ``table_prefix`` in :data:`DATABASE`."""
    return {
        "tables": {data.TABLE: list(destinations)},
        "eventhouse": {"database": DATABASE, "table_prefix": table_prefix},
    }


def counter_delta(
    before: Mapping[str, int], after: Mapping[str, int], keys: Sequence[str] = KUSTO_COUNTERS
) -> dict[str, int]:
    """What each of ``keys`` grew by between two snapshots of the emulator's counters (a key
    not yet counted is 0)."""
    return {key: int(after.get(key, 0)) - int(before.get(key, 0)) for key in keys}


def best_chunk(rates: Mapping[int, float]) -> int:
    """The chunk size with the highest rows/s (the smaller one on a tie: less held in memory
    and less to re-send after an ambiguous failure)."""
    if not rates:
        raise ValueError("no chunk sizes measured")
    return min(rates, key=lambda size: (-rates[size], size))


# --- the runs ----------------------------------------------------------------------------------


@contextmanager
def _servers(work: Path) -> Iterator[tuple[EmulatorProcess, Api, Azurite]]:
    """Azurite, and an emulator serving Power BI (on a fast clock) and Kusto (streaming on,
    queued ingestion through that Azurite)."""
    azurite = start_azurite()
    try:
        emulator = start_kusto_emulator(
            azurite,
            work,
            "--time-scale",
            f"{TIME_SCALE:g}",
            "--kusto-database",
            DATABASE,
            "--kusto-streaming",
            "on",
        )
        try:
            yield emulator, Api(emulator), azurite
        finally:
            emulator.stop()
    finally:
        azurite.stop()


def _app_settings(emulator: EmulatorProcess, azurite: Azurite, datasets: Path) -> dict[str, str]:
    """The app settings of a Functions app that delivers to both (see the module docstring)."""
    return {
        "POWERBI_API_URL": emulator.base,
        "POWERBI_AUTH": "managed_identity",
        # azure-identity's ManagedIdentityCredential reads these (App Service's variables).
        "IDENTITY_ENDPOINT": f"{emulator.base}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "POWERBI_QUOTA_TIME_SCALE": f"{TIME_SCALE:g}",
        # A managed identity cannot use My workspace: the emulator's workspace, as the
        # functional tests use it.
        "POWERBI_WORKSPACE_ID": "",
        "POWERBI_WORKSPACE_NAME": WORKSPACE_NAME,
        "DATASETS_DIR": str(datasets),
        "AzureWebJobsStorage": azurite.connection_string,
        "PACING": "local",
        "EVENTHOUSE_URI": emulator.base,
        "EVENTHOUSE_INGEST_URI": emulator.base,
        "EVENTHOUSE_DATABASE": DATABASE,
        "EVENTHOUSE_AUTH": "managed_identity",
    }


def _kusto_state(emulator: EmulatorProcess) -> dict[str, Any]:
    response = requests.get(f"{emulator.base}/_emulator/kusto/state", timeout=60)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def _flush(emulator: EmulatorProcess) -> None:
    """Ingest the queued batches now (the emulator's batching delay would hold them)."""
    requests.post(f"{emulator.base}/_emulator/kusto/flush", timeout=600).raise_for_status()


@contextmanager
def _chunk_rows(rows: int) -> Iterator[None]:
    """The engine's Eventhouse chunk size set to ``rows`` in this process for the block."""
    saved = ingest_module.EVENTHOUSE_CHUNK_ROWS
    ingest_module.EVENTHOUSE_CHUNK_ROWS = rows
    try:
        yield
    finally:
        ingest_module.EVENTHOUSE_CHUNK_ROWS = saved


@dataclass(frozen=True)
class _Dataset:
    """A run's dataset name and Kusto table."""

    plan: Plan
    name: str
    prefix: str

    @property
    def kusto_table(self) -> str:
        return f"{self.prefix}{data.TABLE}"


def _prepare(plans: Sequence[Plan], datasets: Path) -> list[_Dataset]:
    """A definition per run, and a routing file for each run that is not Power BI alone (no
    file: Power BI only, the path every deployment without one takes)."""
    prepared = []
    for plan in plans:
        tag = uuid.uuid4().hex[:6]
        name = f"Fig{plan.id}x{plan.chunk_rows}x{tag}"
        prefix = f"F{plan.id}_{tag}_"
        (datasets / f"{name}.json").write_text(json.dumps(data.definition(name)))
        if plan.destinations != (POWERBI,):
            routing = routing_body(plan.destinations, prefix)
            (datasets / f"{name}{ROUTING_SUFFIX}").write_text(json.dumps(routing))
        prepared.append(_Dataset(plan, name, prefix))
    return prepared


def _summary(result: PushResult) -> dict[str, Any]:
    return {
        k: v
        for k, v in result.to_json().items()
        if k
        in (
            "received",
            "sent",
            "rejected",
            "unsent",
            "batches",
            "retries",
            "throttle_wait",
            "stopped",
        )
    }


def push_once(
    ingestor: Ingestor,
    dataset: _Dataset,
    csv_file: Path,
    rows: int,
    emulator: EmulatorProcess,
    api: Api,
) -> Outcome:
    """One run: the file through ``ingestor.push``, timed; then each destination counted."""
    plan = dataset.plan
    target = Target(dataset.name, data.TABLE)
    before = _kusto_state(emulator)["counters"]
    with _chunk_rows(plan.chunk_rows):
        cpu, wall = time.process_time(), time.perf_counter()
        result = ingestor.push(target, read_rows(data.read_chunks(csv_file), "csv"))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    outcome = Outcome(plan, rows, wall, cpu)
    by_destination = result.destinations or {POWERBI: result}
    for name, one in by_destination.items():
        if one.sent != rows:
            failure = one.failure or one.stopped
            raise AssertionError(
                f"{plan.id}, {name}: {one.sent:,} of {rows:,} rows sent: {failure}"
            )
    outcome.results = {name: _summary(one) for name, one in by_destination.items()}
    if POWERBI in plan.destinations:
        powerbi = by_destination[POWERBI]
        assert powerbi.dataset_id is not None
        counters: dict[str, int] = api.state(powerbi.dataset_id)["counters"]
        outcome.powerbi = counters
        outcome.arrived[POWERBI] = int(counters.get("rows_accepted", 0))
        # The rows are counted: drop the dataset, so the emulator's memory stays flat.
        url = f"{api.prefix(powerbi.workspace_id)}/datasets/{powerbi.dataset_id}"
        api.request("DELETE", url).raise_for_status()
    if EVENTHOUSE in plan.destinations:
        _flush(emulator)  # a chunk sent queued is stored only once its batch is ingested
        outcome.kusto = counter_delta(before, _kusto_state(emulator)["counters"])
        with kusto_client(emulator) as kusto:
            table = kusto.execute_query(DATABASE, f"{quote_name(dataset.kusto_table)} | count")
            outcome.arrived[EVENTHOUSE] = int(table.primary_results[0][0][0])
            # The rows are counted: drop them, so the emulator's memory stays flat.
            kusto.execute_mgmt(DATABASE, f".drop table {quote_name(dataset.kusto_table)} ifexists")
    return outcome


def measure(csv_file: Path, rows: int, plans: Sequence[Plan]) -> list[Outcome]:
    """Every run of ``plans`` in order, against fresh servers; their outcomes."""
    with tempfile.TemporaryDirectory(prefix="bench-destinations-") as tmp:
        work = Path(tmp)
        datasets = work / "datasets"
        datasets.mkdir()
        prepared = _prepare(plans, datasets)
        with (
            _servers(work) as (emulator, api, azurite),
            app_settings(_app_settings(emulator, azurite, datasets)),
        ):
            ingestor = runtime.get_ingestor()
            outcomes = []
            try:
                for number, dataset in enumerate(prepared, 1):
                    outcome = push_once(ingestor, dataset, csv_file, rows, emulator, api)
                    outcomes.append(outcome)
                    # Progress on stderr, as bench.run reports its steps: the figure is long.
                    print(
                        f"         run {number}/{len(prepared)}: {dataset.plan.label}, chunk "
                        f"{dataset.plan.chunk_rows:,}: {outcome.wall:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                return outcomes
            finally:
                if isinstance(ingestor.eventhouse, EventhouseClient):
                    ingestor.eventhouse.close()


@dataclass
class Series:
    """The runs of one plan over the repetitions: medians of the rates (the machine's load
    drifts), the largest call counts (a round that needed more calls shows)."""

    plan: Plan
    outcomes: list[Outcome]

    @property
    def rows(self) -> int:
        return self.outcomes[0].rows

    @property
    def rows_per_second(self) -> float:
        return median([o.rows_per_second for o in self.outcomes])

    @property
    def rows_per_cpu_second(self) -> float:
        return median([o.rows_per_cpu_second for o in self.outcomes])

    @property
    def posts_per_million(self) -> float:
        return max(o.posts_per_million for o in self.outcomes)

    def kusto_per_million(self, counter: str) -> float:
        """The largest of the runs' ``counter`` (a Kusto counter) per 1,000,000 rows."""
        return max(per_million(o.kusto.get(counter, 0), o.rows) for o in self.outcomes)

    @property
    def ingest_calls_per_million(self) -> float:
        return max(per_million(o.ingest_calls, o.rows) for o in self.outcomes)

    @property
    def throttled(self) -> int:
        """Power BI's 429s over every run (the emulator's ``throttled_*`` counters)."""
        return sum(
            v for o in self.outcomes for k, v in o.powerbi.items() if k.startswith("throttled_")
        )

    @property
    def complete(self) -> bool:
        return all(o.complete for o in self.outcomes)

    def rates(self) -> str:
        return (
            f"{self.rows_per_second:,.0f} rows/s wall, {self.rows_per_cpu_second:,.0f} rows/CPU-s"
        )

    def ingest_calls(self) -> str:
        streaming = self.kusto_per_million("streaming_requests")
        queued = self.kusto_per_million("queued_messages")
        return f"{streaming:.4g} streaming + {queued:.4g} queued"

    def arrived(self) -> str:
        """Rows found in each destination, or the shortfall of the worst run."""
        names = {POWERBI: "Power BI", EVENTHOUSE: "Eventhouse"}
        parts = []
        for d in self.plan.destinations:
            least = min(o.arrived.get(d, 0) for o in self.outcomes)
            parts.append(f"all in {names[d]}" if least == self.rows else f"{least:,} in {names[d]}")
        return ", ".join(parts) + f" (x{len(self.outcomes)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "repetitions": len(self.outcomes),
            "median_rows_per_second_wall": round(self.rows_per_second),
            "median_rows_per_cpu_second": round(self.rows_per_cpu_second),
            "powerbi_posts_per_million": round(self.posts_per_million, 2),
            "eventhouse_streaming_per_million": round(
                self.kusto_per_million("streaming_requests"), 2
            ),
            "eventhouse_queued_per_million": round(self.kusto_per_million("queued_messages"), 2),
            "powerbi_throttled": self.throttled,
            "runs": [o.to_json() for o in self.outcomes],
        }


def series(outcomes: Sequence[Outcome]) -> dict[Plan, Series]:
    """The outcomes grouped by plan, in the order the plans first ran."""
    grouped: dict[Plan, Series] = {}
    for outcome in outcomes:
        grouped.setdefault(outcome.plan, Series(outcome.plan, [])).outcomes.append(outcome)
    return grouped


def figures(outcomes: Sequence[Outcome], rows: int) -> list[Figure]:
    """The table's lines from the runs: 8a-8c each plan, 8d 8c's Power BI POSTs against 8a's,
    8e the chunk sizes (Eventhouse only)."""
    grouped = series(outcomes)
    by_id = {plan.id: one for plan, one in grouped.items() if plan.id in ("8a", "8b", "8c")}
    alone, eventhouse, both = by_id["8a"], by_id["8b"], by_id["8c"]
    ratio = both.rows_per_second / alone.rows_per_second
    paired = [
        round(c.rows_per_second / a.rows_per_second, 3)
        for a, c in zip(alone.outcomes, both.outcomes, strict=False)
    ]
    cpu_ratio = both.rows_per_cpu_second / alone.rows_per_cpu_second
    out = [
        Figure(
            "8a",
            f"{alone.plan.label}: {rows:,} rows from CSV (baseline)",
            f"{alone.rates()}; {alone.posts_per_million:.4g} POSTs per 1M rows; "
            f"{alone.arrived()}; 429s {alone.throttled}",
            "every row in Power BI (measured)",
            alone.complete,
            alone.to_json(),
        ),
        Figure(
            "8b",
            f"{eventhouse.plan.label}: {rows:,} rows from CSV",
            f"{eventhouse.rates()}; ingest calls per 1M rows: {eventhouse.ingest_calls()}; "
            f"{eventhouse.arrived()}",
            "every row in the Eventhouse (measured)",
            eventhouse.complete,
            eventhouse.to_json(),
        ),
        Figure(
            "8c",
            f"{both.plan.label}: {rows:,} rows from CSV, rows/s against 8a",
            f"{both.rates()} = {cpu_ratio:.2f}x 8a's rows/CPU-s ({ratio:.2f}x its rows/s)",
            f">= {THROUGHPUT_RATIO_TARGET:g}x 8a's rows/CPU-s",
            cpu_ratio >= THROUGHPUT_RATIO_TARGET,
            {
                **both.to_json(),
                "ratio_to_8a": round(ratio, 3),
                "paired_ratios_to_8a": paired,
                "cpu_ratio_to_8a": round(cpu_ratio, 3),
            },
        ),
        Figure(
            "8d",
            "Power BI + Eventhouse: POSTs per 1M rows against 8a, Eventhouse calls",
            f"{both.posts_per_million:.4g} POSTs (8a: {alone.posts_per_million:.4g}); "
            f"{both.ingest_calls()}; {both.arrived()}; 429s {both.throttled}",
            "= 8a's POSTs, every row in both",
            math.isclose(both.posts_per_million, alone.posts_per_million) and both.complete,
            {
                "posts_per_million": round(both.posts_per_million, 2),
                "posts_per_million_8a": round(alone.posts_per_million, 2),
                "throttled": {"8a": alone.throttled, "8c": both.throttled},
            },
        ),
    ]
    sweep = sorted(
        (one for plan, one in grouped.items() if plan.destinations == (EVENTHOUSE,)),
        key=lambda one: one.plan.chunk_rows,
    )
    if len(sweep) > 1:
        rates = {one.plan.chunk_rows: one.rows_per_second for one in sweep}
        best = best_chunk(rates)
        out.append(
            Figure(
                "8e",
                f"Eventhouse chunk rows (EVENTHOUSE_CHUNK_ROWS = "
                f"{ingest_module.EVENTHOUSE_CHUNK_ROWS:,}), Eventhouse only, rows/s wall",
                "; ".join(
                    f"{one.plan.chunk_rows:,}: {one.rows_per_second:,.0f} "
                    f"({one.rows_per_cpu_second:,.0f}/CPU-s, "
                    f"{one.ingest_calls_per_million:.4g} calls/1M)"
                    for one in sweep
                )
                + f"; best {best:,}",
                "measured (informative)",
                None if all(one.complete for one in sweep) else False,
                {
                    "best": best,
                    "runs": {str(one.plan.chunk_rows): one.to_json() for one in sweep},
                },
            )
        )
    return out


#: The runs of one round, in order: the three of the figure, then the other chunk sizes
#: (Eventhouse only). Each round runs every plan once, each run on a dataset of its own.
PLANS = (
    Plan("8a", (POWERBI,)),
    Plan("8b", (EVENTHOUSE,)),
    Plan("8c", (POWERBI, EVENTHOUSE)),
    *(
        Plan("8e", (EVENTHOUSE,), size)
        for size in CHUNK_SIZES
        if size != ingest_module.EVENTHOUSE_CHUNK_ROWS
    ),
)
#: Rounds: medians of three, as figure 1 (the machine's other work moves a single run).
REPETITIONS = 3


def run(csv_file: Path, rows: int, repetitions: int = REPETITIONS) -> list[Figure]:
    """Figure 8 over ``csv_file`` (``rows`` rows): every plan once per round."""
    return figures(measure(csv_file, rows, PLANS * repetitions), rows)
