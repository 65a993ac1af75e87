"""Figure 3: how well the quotas are used, against the emulator enforcing Power BI's real
quotas on a fast clock (``--time-scale 60``: an emulated hour lasts a real minute), with the
governor on the same clock (``Quotas(time_scale=60)``). The governor is the one the runtime
builds by default (``PACING=shared``, :func:`shared.runtime.build_governor`): a
``SharedGovernor`` over a table in Azurite, so that each part runs from one process and then
from three real OS processes at once (``bench.scaleout``), on one dataset.

- Files: more rows than the hourly quota (1,500,000 in the full run) pushed by
  ``Ingestor.push`` from a CSV read in 1 MiB chunks, by one process, or split in three equal
  shares pushed by three processes at once. Reported: accepted POSTs per 1,000,000 rows (the
  minimum is 100: 10,000 rows each), the 429s the emulator sent (its ``throttled_*``
  counters), and the rate achieved once the quota binds: the last 1,000,000 rows divided by the
  time from the acknowledgement of the POST before them to that of the last one (with three
  processes, their acknowledgements merged in time order). A client that fills the rolling
  hour exactly scores 100%; any idle time (over-long waits, a 429's Retry-After, a CPU that
  cannot keep up) lowers it. (Pushing only 1,000,000 rows would never meet the quota: a
  rolling hour allows all of them at once.)
- Queue: a backlog of one-row messages handled by ``QueueIngest.handle`` through one
  ``Coalescer`` per process (the settings' default linger and maximum wait), at most
  ``batchSize + newBatchThreshold`` of host.json in flight per process, as a Functions
  instance runs them; with three processes each drains a third of the backlog (as three
  instances polling one queue share it). Reported: accepted POSTs per 1,000 messages; the
  minimum is ``1000 / in-flight`` per process because a message's invocation ends only once
  its rows are acknowledged. Target for three processes: within 2x of one.
- The ledger's cost (issue 16, item 1), from the file runs: storage transactions per Add Rows
  call (reads + writes + conflicts, as the governor counts them) and the time spent in ledger
  calls per Add Rows (median, p99), against Azurite on loopback; real Table storage adds a
  network round trip per call (5-20 ms in one region), computed per Add Rows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import data, servers
from bench.machine import REPO
from bench.report import Figure
from bench.scaleout import (
    describe_cost,
    ledger_cost,
    pacing_env,
    run_processes,
    shared_governor,
)
from shared.contracts import Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.coalesce import Coalescer
from shared.engine.governor import Governor, Quotas
from shared.engine.ingest import Ingestor
from shared.engine.schema import DatasetDefinition
from shared.settings import Settings
from shared.sources.claimcheck import ClaimCheckStore
from shared.sources.formats import read_rows
from shared.sources.messages import encode
from shared.sources.queue_ingest import QueueIngest
from shared.stores.deadletter import DeadLetter
from tests.emulator.conftest import Api, EmulatorProcess

TIME_SCALE = 60.0
HOUR_ROWS = 1_000_000
ROWS_PER_POST = 10_000
RATE_TARGET = 0.95
#: Queue: POSTs per 1,000 messages with three processes, as a multiple of one process's.
QUEUE_RATIO_TARGET = 2.0
#: The longest a part may run (real seconds): an emulated hour is a minute, 1,500,000 rows
#: take about 1.5 of them; far more means something is stuck.
PART_TIMEOUT = 600.0


class MemoryDeadLetters:
    """Dead letters kept in a list (none are expected)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, target: Target, letters: Sequence[DeadLetter], source: str | None) -> str:
        self.letters.extend(letters)
        return "memory"


def _ingestor(base: str, token: str, name: str, governor: Governor) -> Ingestor:
    return Ingestor(
        PowerBIClient(base, StaticTokenProvider(token)),
        definitions={name: DatasetDefinition.from_body(data.definition(name))},
        governor=governor,
        dead_letters=MemoryDeadLetters(),
    )


def _make_dataset(emulator: EmulatorProcess, api: Api, name: str) -> str:
    """Create the dataset before the processes start: they look it up (each Ingestor here has
    no creation lock, so three processes meeting a missing dataset would make three)."""
    local = _ingestor(emulator.base, api.token, name, Governor(Quotas(time_scale=TIME_SCALE)))
    return local.resolve(Target(name, data.TABLE)).dataset_id


def _rows(csv_file: Path, file_rows: int, total: int) -> Iterator[Any]:
    copies = math.ceil(total / file_rows)
    streams = (read_rows(data.read_chunks(csv_file), "csv") for _ in range(copies))
    return itertools.islice(itertools.chain.from_iterable(streams), total)


def _throttled(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.startswith("throttled_"))


def _shares(total: int, processes: int) -> list[int]:
    return [total // processes + (1 if i < total % processes else 0) for i in range(processes)]


def _until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _push_share(job: dict[str, Any], released: Callable[[], float]) -> dict[str, Any]:
    """One process's part of the files run (in a child process): its share of the rows, pushed
    by its own Ingestor on the runtime's shared governor; acknowledgements stamped by the
    wall clock, which every process shares."""
    governor = shared_governor(job["env"])
    ingestor = _ingestor(job["base"], job["token"], job["name"], governor)
    target = Target(job["name"], data.TABLE)
    ingestor.resolve(target)
    _until(released())
    acks: list[tuple[float, int]] = []
    last = 0

    def progress(position: int, _: object) -> None:
        nonlocal last
        acks.append((time.time(), position - last))
        last = position

    result = ingestor.push(
        target, _rows(Path(job["csv"]), job["file_rows"], job["rows"]), on_progress=progress
    )
    return {
        "acks": acks,
        "sent": result.sent,
        "retries": result.retries,
        "governor_wait_real_seconds": round(governor.waited, 2),
        "ledger": governor.stats(),
    }


def files(
    emulator: EmulatorProcess,
    api: Api,
    env: dict[str, str],
    csv_file: Path,
    file_rows: int,
    total: int,
    processes: int,
) -> tuple[list[Figure], dict[str, Any]]:
    """The files part from ``processes`` processes: figures 3a-3c (one) or 3e-3g (three), and
    the ledger's cost."""
    name = f"Quota{processes}p-{uuid.uuid4().hex[:8]}"
    dataset_id = _make_dataset(emulator, api, name)
    shares = _shares(total, processes)
    # The fewest POSTs: 10,000 rows each, per process (a share's last POST may be short).
    minimum = sum(math.ceil(share / ROWS_PER_POST) for share in shares) * HOUR_ROWS / total
    jobs = [
        {
            "env": env,
            "base": emulator.base,
            "token": api.token,
            "name": name,
            "csv": str(csv_file),
            "file_rows": file_rows,
            "rows": share,
        }
        for share in shares
    ]
    outcomes, started = run_processes(_push_share, jobs, PART_TIMEOUT)
    merged = sorted(ack for outcome in outcomes for ack in outcome["acks"])
    positions = itertools.accumulate(n for _, n in merged)
    acks = list(zip((t for t, _ in merged), positions, strict=True))
    elapsed = acks[-1][0] - started if acks else 0.0
    sent = sum(int(o["sent"]) for o in outcomes)
    retries = sum(int(o["retries"]) for o in outcomes)
    state = api.state(dataset_id)
    counters: dict[str, int] = state["counters"]
    accepted = counters.get("posts_accepted", 0)
    requests = counters.get("requests", 0)
    throttled = _throttled(counters)
    if sent != total or counters.get("rows_accepted") != total:
        raise AssertionError(f"quota run, {processes} processes: sent {sent}, {counters}")
    per_million = accepted * HOUR_ROWS / total
    window = HOUR_ROWS // ROWS_PER_POST  # POSTs in an hour's worth of rows
    rate = None
    if len(acks) > window:
        (t0, p0), (t1, p1) = acks[-window - 1], acks[-1]
        rate = (p1 - p0) / ((t1 - t0) * TIME_SCALE / 3600)
    overall = total / (elapsed * TIME_SCALE / 3600)
    first_hour = next((t for t, p in acks if p >= HOUR_ROWS), None)
    cost = ledger_cost([o["ledger"] for o in outcomes])
    details = {
        "processes": processes,
        "pacing": "shared (SharedGovernor over Azurite's Table storage)",
        "rows": total,
        "time_scale": TIME_SCALE,
        "posts_accepted": accepted,
        "post_requests": requests,
        "throttled": {k: v for k, v in counters.items() if k.startswith("throttled_")},
        "retries": retries,
        "governor_wait_real_seconds": [o["governor_wait_real_seconds"] for o in outcomes],
        "elapsed_real_seconds": round(elapsed, 2),
        "first_million_real_seconds": round(first_hour - started, 2) if first_hour else None,
        "steady_rows_per_emulated_hour": round(rate) if rate else None,
        "overall_rows_per_emulated_hour": round(overall),
        "ledger": cost,
        "acks": [(round(t - started, 3), p) for t, p in acks],
    }
    a, b, c = ("3a", "3b", "3c") if processes == 1 else ("3e", "3f", "3g")
    who = "1 process" if processes == 1 else f"{processes} processes"
    figures = [
        Figure(
            a,
            f"Files, {who}: POSTs per 1,000,000 rows ({total:,} rows pushed)",
            f"{per_million:.4g} ({requests * HOUR_ROWS / total:.4g} requests)",
            f"{minimum:.4g} (the minimum)",
            per_million <= minimum,
            details,
        ),
        Figure(
            b,
            f"Files, {who}: 429s received",
            f"{throttled}",
            "0 in steady state",
            throttled == 0,
            {"throttled": details["throttled"], "retries": retries},
        ),
        Figure(
            c,
            f"Files, {who}: rows per emulated hour once the quota binds",
            f"{rate:,.0f} = {rate / HOUR_ROWS:.1%} of 1,000,000" if rate else "n/a (too few rows)",
            f">= {RATE_TARGET:.0%}",
            None if rate is None else rate / HOUR_ROWS >= RATE_TARGET,
            {
                "steady_rows_per_emulated_hour": details["steady_rows_per_emulated_hour"],
                "overall_rows_per_emulated_hour": details["overall_rows_per_emulated_hour"],
                "first_million_real_seconds": details["first_million_real_seconds"],
                "elapsed_real_seconds": details["elapsed_real_seconds"],
            },
        ),
    ]
    return figures, cost


def in_flight() -> int:
    """Messages one instance runs at once: host.json's batchSize + newBatchThreshold."""
    queues = json.loads((REPO / "host.json").read_text())["extensions"]["queues"]
    return int(queues["batchSize"]) + int(queues["newBatchThreshold"])


def _no_claim_checks() -> ClaimCheckStore:
    raise AssertionError("no message of the benchmark uses a claim check")


def _drain_share(job: dict[str, Any], released: Callable[[], float]) -> dict[str, Any]:
    """One process's part of the queue run (in a child process): its messages, at most
    ``in_flight`` at once, through its own QueueIngest and Coalescer."""
    governor = shared_governor(job["env"])
    name = job["name"]
    ingestor = _ingestor(job["base"], job["token"], name, governor)
    ingestor.resolve(Target(name, data.TABLE))
    defaults = Settings.from_env({})
    coalescer = Coalescer(ingestor, linger=defaults.queue_linger, max_wait=defaults.queue_max_wait)
    store = MemoryDeadLetters()
    handler = QueueIngest(
        lambda: coalescer, _no_claim_checks, lambda: store, time_budget=defaults.queue_time_budget
    )
    limit = int(job["in_flight"])
    first, count = int(job["first"]), int(job["count"])
    bodies = [
        encode(json.dumps({"dataset": name, "table": data.TABLE, "rows": [data.json_row(i)]}))
        for i in range(first, first + count)
    ]

    async def drain() -> int:
        gate = asyncio.Semaphore(limit)

        async def one(number: int) -> int:
            async with gate:
                result = await handler.handle(bodies[number].encode(), f"m{first + number}", 1)
                return 0 if result is None else result.sent

        return sum(await asyncio.gather(*(one(n) for n in range(count))))

    _until(released())
    began = time.time()
    sent = asyncio.run(drain())
    return {
        "sent": sent,
        "letters": len(store.letters),
        "flushes": coalescer.flushes,
        "elapsed": time.time() - began,
        "ledger": governor.stats(),
    }


def queue(
    emulator: EmulatorProcess, api: Api, env: dict[str, str], messages: int, processes: int
) -> dict[str, Any]:
    """The queue part from ``processes`` processes; the raw numbers for figures 3d and 3h."""
    name = f"Queue{processes}p-{uuid.uuid4().hex[:8]}"
    dataset_id = _make_dataset(emulator, api, name)
    limit = in_flight()
    shares = _shares(messages, processes)
    firsts = [0, *itertools.accumulate(shares)][:-1]
    jobs = [
        {
            "env": env,
            "base": emulator.base,
            "token": api.token,
            "name": name,
            "in_flight": limit,
            "first": first,
            "count": share,
        }
        for first, share in zip(firsts, shares, strict=True)
    ]
    outcomes, _ = run_processes(_drain_share, jobs, PART_TIMEOUT)
    sent = sum(int(o["sent"]) for o in outcomes)
    letters = sum(int(o["letters"]) for o in outcomes)
    counters: dict[str, int] = api.state(dataset_id)["counters"]
    accepted = counters.get("posts_accepted", 0)
    if sent != messages or counters.get("rows_accepted") != messages or letters:
        raise AssertionError(f"queue run, {processes} processes: sent {sent}; {counters}")
    # Each process's invocations end only once their rows are acknowledged: at most
    # ``limit`` messages share a POST per process.
    minimum = sum(math.ceil(share / min(limit, ROWS_PER_POST)) for share in shares)
    defaults = Settings.from_env({})
    elapsed = max(float(o["elapsed"]) for o in outcomes)
    return {
        "processes": processes,
        "messages": messages,
        "in_flight_per_process": limit,
        "linger_seconds": defaults.queue_linger,
        "max_wait_seconds": defaults.queue_max_wait,
        "posts_accepted": accepted,
        "posts_per_thousand": accepted * 1000 / messages,
        "minimum_per_thousand": minimum * 1000 / messages,
        "flushes": [o["flushes"] for o in outcomes],
        "throttled": _throttled(counters),
        "elapsed_real_seconds": round(elapsed, 2),
        "messages_per_second": round(messages / elapsed),
        "ledger": ledger_cost([o["ledger"] for o in outcomes]),
    }


def queue_figures(one: dict[str, Any], three: dict[str, Any]) -> list[Figure]:
    """3d (one process against its minimum) and 3h (three processes against one)."""
    ratio = three["posts_per_thousand"] / one["posts_per_thousand"]
    return [
        Figure(
            "3d",
            f"Queue, 1 process: POSTs per 1,000 one-row messages ({one['messages']:,} queued, "
            f"{one['in_flight_per_process']} in flight)",
            f"{one['posts_per_thousand']:g} ({one['posts_accepted']} POSTs, "
            f"{one['throttled']} 429s)",
            f"<= {one['minimum_per_thousand']:g} (the minimum at "
            f"{one['in_flight_per_process']} in flight)",
            one["posts_per_thousand"] <= one["minimum_per_thousand"],
            one,
        ),
        Figure(
            "3h",
            f"Queue, {three['processes']} processes: POSTs per 1,000 one-row messages "
            f"({three['messages']:,} queued, {three['in_flight_per_process']} in flight each)",
            f"{three['posts_per_thousand']:g} ({three['posts_accepted']} POSTs, "
            f"{three['throttled']} 429s) = {ratio:.2g}x 1 process",
            f"<= {QUEUE_RATIO_TARGET:g}x 1 process, 0 429s",
            ratio <= QUEUE_RATIO_TARGET and three["throttled"] == 0,
            three,
        ),
    ]


def ledger_figures(one: dict[str, Any], three: dict[str, Any]) -> list[Figure]:
    """3i: what the shared ledger costs per Add Rows in the file runs (informative)."""
    return [
        Figure(
            "3i",
            "Ledger cost per Add Rows (files), 1 process",
            describe_cost(one),
            "measured (issue 16, item 1)",
            None,
            one,
        ),
        Figure(
            "3j",
            "Ledger cost per Add Rows (files), 3 processes",
            describe_cost(three),
            "measured (issue 16, item 1)",
            None,
            three,
        ),
    ]


def run(csv_file: Path, file_rows: int, total: int, messages: int) -> list[Figure]:
    with servers.emulator(TIME_SCALE) as (emulator, api), servers.azurite() as azurite:
        env = pacing_env(azurite.connection_string, f"pace{uuid.uuid4().hex[:10]}", TIME_SCALE)
        figures, cost_one = files(emulator, api, env, csv_file, file_rows, total, 1)
        queue_one = queue(emulator, api, env, messages, 1)
        three, cost_three = files(emulator, api, env, csv_file, file_rows, total, 3)
        queue_three = queue(emulator, api, env, messages, 3)
    figures += three
    figures += queue_figures(queue_one, queue_three)
    figures += ledger_figures(cost_one, cost_three)
    return sorted(figures, key=lambda f: f.id)
