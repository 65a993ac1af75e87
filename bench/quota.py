"""Figure 3: how well the quotas are used, against the emulator enforcing Power BI's real
quotas on a fast clock (``--time-scale 60``: an emulated hour lasts a real minute), with the
governor on the same clock (``Quotas(time_scale=60)``).

- Files: more rows than the hourly quota (2,000,000 by default) pushed by one
  ``Ingestor.push`` from a CSV read in 1 MiB chunks. Reported: accepted POSTs per 1,000,000
  rows (the minimum is 100: 10,000 rows each), the 429s the emulator sent (its ``throttled_*``
  counters), and the rate achieved once the quota binds: the last 1,000,000 rows divided by the
  time from the acknowledgement of the POST before them to that of the last one. A client that
  fills the rolling hour exactly scores 100%; any idle time (over-long waits, a 429's
  Retry-After, a CPU that cannot keep up) lowers it. (Pushing only 1,000,000 rows would never
  meet the quota: a rolling hour allows all of them at once.)
- Queue: a backlog of one-row messages handled by ``QueueIngest.handle`` through one
  ``Coalescer`` (the settings' default linger and maximum wait), at most ``batchSize +
  newBatchThreshold`` of host.json in flight, as one Functions instance runs them. Reported:
  accepted POSTs per 1,000 messages; the minimum is ``1000 / in-flight`` because a message's
  invocation ends only once its rows are acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import data, servers
from bench.machine import REPO
from bench.report import Figure
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


class MemoryDeadLetters:
    """Dead letters kept in a list (none are expected)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, target: Target, letters: Sequence[DeadLetter], source: str | None) -> str:
        self.letters.extend(letters)
        return "memory"


def _ingestor(emulator: EmulatorProcess, api: Api, name: str) -> Ingestor:
    return Ingestor(
        PowerBIClient(emulator.base, StaticTokenProvider(api.token)),
        definitions={name: DatasetDefinition.from_body(data.definition(name))},
        # As the runtime paces (shared/runtime.py): POSTs spread evenly.
        governor=Governor(Quotas(time_scale=TIME_SCALE, even=True)),
        dead_letters=MemoryDeadLetters(),
    )


def _rows(csv_file: Path, file_rows: int, total: int) -> Iterator[Any]:
    copies = math.ceil(total / file_rows)
    streams = (read_rows(data.read_chunks(csv_file), "csv") for _ in range(copies))
    return itertools.islice(itertools.chain.from_iterable(streams), total)


def _throttled(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.startswith("throttled_"))


def files(
    emulator: EmulatorProcess, api: Api, csv_file: Path, file_rows: int, total: int
) -> list[Figure]:
    name = f"Quota-{uuid.uuid4().hex[:8]}"
    ingestor = _ingestor(emulator, api, name)
    acks: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = ingestor.push(
        Target(name, data.TABLE),
        _rows(csv_file, file_rows, total),
        on_progress=lambda position, _: acks.append((time.perf_counter(), position)),
    )
    elapsed = time.perf_counter() - started
    assert result.dataset_id is not None
    state = api.state(result.dataset_id)
    counters: dict[str, int] = state["counters"]
    accepted = counters.get("posts_accepted", 0)
    requests = counters.get("requests", 0)
    throttled = _throttled(counters)
    if result.sent != total or counters.get("rows_accepted") != total:
        raise AssertionError(f"quota run: {result.to_json()}, {counters}")
    per_million = accepted * HOUR_ROWS / total
    window = HOUR_ROWS // ROWS_PER_POST  # POSTs in an hour's worth of rows
    rate = None
    if len(acks) > window:
        (t0, p0), (t1, p1) = acks[-window - 1], acks[-1]
        rate = (p1 - p0) / ((t1 - t0) * TIME_SCALE / 3600)
    overall = total / (elapsed * TIME_SCALE / 3600)
    first_hour = next((t for t, p in acks if p >= HOUR_ROWS), None)
    details = {
        "rows": total,
        "time_scale": TIME_SCALE,
        "posts_accepted": accepted,
        "post_requests": requests,
        "throttled": {k: v for k, v in counters.items() if k.startswith("throttled_")},
        "retries": result.retries,
        "governor_wait_real_seconds": round(ingestor.governor.waited, 2),
        "elapsed_real_seconds": round(elapsed, 2),
        "first_million_real_seconds": round(first_hour - started, 2) if first_hour else None,
        "steady_rows_per_emulated_hour": round(rate) if rate else None,
        "overall_rows_per_emulated_hour": round(overall),
        "acks": [(round(t - started, 3), p) for t, p in acks],
    }
    return [
        Figure(
            "3a",
            f"Files: POSTs per 1,000,000 rows ({total:,} rows pushed)",
            f"{per_million:g} ({requests * HOUR_ROWS / total:g} requests)",
            "100 (the minimum)",
            per_million <= 100,
            details,
        ),
        Figure(
            "3b",
            "Files: 429s received",
            f"{throttled}",
            "0 in steady state",
            throttled == 0,
            {"throttled": details["throttled"], "retries": result.retries},
        ),
        Figure(
            "3c",
            "Files: rows per emulated hour once the quota binds",
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


def in_flight() -> int:
    """Messages one instance runs at once: host.json's batchSize + newBatchThreshold."""
    queues = json.loads((REPO / "host.json").read_text())["extensions"]["queues"]
    return int(queues["batchSize"]) + int(queues["newBatchThreshold"])


def _no_claim_checks() -> ClaimCheckStore:
    raise AssertionError("no message of the benchmark uses a claim check")


def queue(emulator: EmulatorProcess, api: Api, messages: int) -> Figure:
    name = f"Queue-{uuid.uuid4().hex[:8]}"
    ingestor = _ingestor(emulator, api, name)
    defaults = Settings.from_env({})
    coalescer = Coalescer(ingestor, linger=defaults.queue_linger, max_wait=defaults.queue_max_wait)
    store = MemoryDeadLetters()
    handler = QueueIngest(
        lambda: coalescer, _no_claim_checks, lambda: store, time_budget=defaults.queue_time_budget
    )
    limit = in_flight()
    bodies = [
        encode(json.dumps({"dataset": name, "table": data.TABLE, "rows": [data.json_row(i)]}))
        for i in range(messages)
    ]

    async def drain() -> int:
        gate = asyncio.Semaphore(limit)

        async def one(number: int) -> int:
            async with gate:
                result = await handler.handle(bodies[number].encode(), f"m{number}", 1)
                return 0 if result is None else result.sent

        return sum(await asyncio.gather(*(one(n) for n in range(messages))))

    started = time.perf_counter()
    sent = asyncio.run(drain())
    elapsed = time.perf_counter() - started
    dataset_id = ingestor.resolve(Target(name, data.TABLE)).dataset_id
    counters: dict[str, int] = api.state(dataset_id)["counters"]
    accepted = counters.get("posts_accepted", 0)
    if sent != messages or counters.get("rows_accepted") != messages or store.letters:
        raise AssertionError(f"queue run: sent {sent} of {messages}; {counters}")
    per_thousand = accepted * 1000 / messages
    minimum = math.ceil(messages / min(limit, ROWS_PER_POST)) * 1000 / messages
    return Figure(
        "3d",
        f"Queue: POSTs per 1,000 one-row messages ({messages:,} queued, {limit} in flight)",
        f"{per_thousand:g} ({accepted} POSTs, {_throttled(counters)} 429s)",
        f"<= {minimum:g} (the minimum at {limit} in flight)",
        per_thousand <= minimum,
        {
            "messages": messages,
            "in_flight": limit,
            "linger_seconds": defaults.queue_linger,
            "max_wait_seconds": defaults.queue_max_wait,
            "posts_accepted": accepted,
            "flushes": coalescer.flushes,
            "throttled": _throttled(counters),
            "elapsed_real_seconds": round(elapsed, 2),
            "messages_per_second": round(messages / elapsed),
        },
    )


def run(csv_file: Path, file_rows: int, total: int, messages: int) -> list[Figure]:
    with servers.emulator(TIME_SCALE) as (emulator, api):
        figures = files(emulator, api, csv_file, file_rows, total)
        figures.append(queue(emulator, api, messages))
    return figures
