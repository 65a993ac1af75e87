"""Figure 7: fifty busy tables at real quota time, through the queue path, paced on the shared
ledger (issue 16), and what the ledger costs per Add Rows there.

Load: 50 tables, each fed 3 one-row messages a second (table ``k``'s message ``j`` due at
``(j + k / 50) / 3`` s), for 60 s (10 s with ``--quick``), against the emulator at real quota
time (time scale 1: 120 POSTs a rolling minute per dataset, spread 0.5 s apart by the governor,
5 pending). The tables are 25 datasets of 2: Power BI counts POSTs per dataset, so a dataset
allows 2 POSTs a second and its two busy tables get 1 a second each on average (one may take two
slots in a row while the other's buffer waits). Each message is handed at its due time to
``QueueIngest.handle`` and the process's one ``Coalescer`` with the runtime's settings
(``QUEUE_LINGER_SECONDS`` 0.2, ``QUEUE_MAX_WAIT_SECONDS`` 5, the time budget), at most
host.json's ``batchSize + newBatchThreshold`` in flight per process. Each buffer's delivery
(``push_parts``, which sleeps in the governor until its slot) runs on the coalescer's own
threads (64); other blocking work (each message's profile lookup) on the event loop's default
executor, as in the Functions Python worker (``min(32, cores + 4)`` threads, 6 here). Before
the coalescer had its own threads, deliveries queued for those six: p99 74 s, most messages
unacknowledged 30 s after the load.

Why 60 s is enough: the only quota this load can meet is the POSTs per minute (the rows are 6 a
second per dataset, 21,600 an hour, 2% of the hourly 1,000,000; no table nears the 250,000 rows
of the large-table rule), and with POSTs spread 0.5 s apart the rolling count of 120 a minute
binds exactly when the spacing does: a steady state reached within seconds. 60 s is 120 POST
intervals per dataset, 9,000 messages (the p99 rests on the 90 slowest), and a backlog that
grows shows in the p99 of the first third against the last.

Runs, in the same emulator, each on its own 25 datasets:

- 7a, the baseline: one process, the local governor (``PACING=local``);
- 7b: one process on the shared ledger (``PACING=shared``, the default);
- 7c: three processes on the ledger, the messages dealt out in turn (table ``k``'s message
  ``j`` to process ``(j + k) mod 3``), as instances polling one queue share it: each table's
  messages reach all three processes. Shown, not held to the latency target: each process
  keeps its own buffer per table, so a dataset's 2 POSTs a second are shared by 6 buffers
  (2 tables x 3 processes) and a message waits for its buffer's turn, up to 3 s; the POSTs per
  table stay within 1 a second. (Fewer processes per queue, or one table per dataset, keep
  such tables under 2 s.)

Measured per run: POSTs per second of each table (its acknowledged Add Rows calls counted by the
client, those acknowledged while the load ran, over its duration; the maximum over the 50
tables); each message's delay from its due time to its acknowledgement (the handler returns once
Power BI has its rows): p50, p99, max; the 429s (the emulator's ``throttled_*`` counters).
Bounded: a message not acknowledged half the load's duration (at least 15 s) after the load ends
is cut off and counted with the time it had waited, a lower bound of its delay. Checked: every
message acknowledged, cut off or failed; the rows stored between those acknowledged and those
sent; the client's POSTs equal to the emulator's. 7f, 7g: the ledger's cost per Add Rows in 7b
and 7c (as in figure 3).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bench import quota, servers
from bench.report import Figure, median, percentile
from bench.scaleout import describe_cost, ledger_cost, pacing_env, run_processes, shared_governor
from shared.contracts import Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.coalesce import Coalescer
from shared.engine.governor import Governor
from shared.engine.ingest import Ingestor
from shared.engine.retry import Deadline, RetryPolicy
from shared.engine.schema import DatasetDefinition
from shared.runtime import build_governor
from shared.settings import Settings
from shared.sources.messages import encode
from shared.sources.queue_ingest import QueueIngest
from tests.emulator.conftest import Api, EmulatorProcess

DATASETS = 25
TABLES = ("A", "B")  # per dataset
PER_SECOND = 3  # messages a second per table
#: Targets (issue 16): at most 1 POST a second per table, p99 delay within 2 s, no 429.
POSTS_TARGET = 1.0
P99_TARGET = 2.0
#: After the load, how long the last messages may take: what is still not acknowledged then
#: is cut off and counted with the time it had waited (a lower bound of its delay). Any value
#: over the 2 s target gives the same verdict; it bounds a run whose backlog grows.
DRAIN_MIN = 15.0


def drain_for(seconds: float) -> float:
    """The drain allowed after a load of ``seconds``: half of it, at least 15 s."""
    return max(DRAIN_MIN, seconds / 2)


def definition(name: str) -> dict[str, Any]:
    """A push dataset of two small tables."""
    columns = [
        {"name": "Seq", "dataType": "Int64"},
        {"name": "Due", "dataType": "Double"},
        {"name": "Source", "dataType": "String"},
    ]
    return {"name": name, "tables": [{"name": t, "columns": columns} for t in TABLES]}


class CountingClient(PowerBIClient):
    """The Power BI client, noting each acknowledged Add Rows (time, dataset id, table)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.posts: list[tuple[float, str, str]] = []

    def post_rows(
        self,
        dataset_id: str,
        table: str,
        body: bytes,
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> None:
        """Add Rows as the client sends it; noted once answered 200."""
        super().post_rows(dataset_id, table, body, workspace, deadline=deadline)
        self.posts.append((time.time(), dataset_id, table))


def _ingestor(base: str, token: str, names: Sequence[str], governor: Governor) -> Ingestor:
    settings = Settings.from_env({})
    return Ingestor(
        CountingClient(base, StaticTokenProvider(token)),
        definitions={n: DatasetDefinition.from_body(definition(n)) for n in names},
        governor=governor,
        dead_letters=quota.MemoryDeadLetters(),
        retry=RetryPolicy(max_retry_after=settings.max_retry_after),  # as the runtime
    )


def _schedule(
    names: Sequence[str], seconds: float, processes: int, index: int
) -> list[tuple[float, int, str, str, int]]:
    """This process's messages: (due offset, table number, dataset, table, seq), by due time.
    Table ``k``'s message ``j`` is due at ``(j + k / 50) / 3`` s (the tables' streams offset
    evenly) and goes to process ``(j + k) mod processes``."""
    tables = [(name, table) for name in names for table in TABLES]
    count = int(seconds * PER_SECOND)
    plan = [
        ((j + k / len(tables)) / PER_SECOND, k, name, table, j)
        for k, (name, table) in enumerate(tables)
        for j in range(count)
        if (j + k) % processes == index
    ]
    return sorted(plan)


def _feed(job: dict[str, Any], released: Callable[[], float]) -> dict[str, Any]:
    """One process (a child): its share of the messages, each handed to the handler at its due
    time, as many in flight as the host would run; the delay of each to its acknowledgement."""
    env: dict[str, str] = job["env"]
    settings = Settings.from_env(env)
    metered = shared_governor(env) if settings.pacing == "shared" else None
    governor = metered or build_governor(settings, env)
    names: list[str] = job["names"]
    ingestor = _ingestor(job["base"], job["token"], names, governor)
    for name in names:  # the lookups are made before the load, as a warm instance has them
        for table in TABLES:
            ingestor.resolve(Target(name, table))
    coalescer = Coalescer(ingestor, linger=settings.queue_linger, max_wait=settings.queue_max_wait)
    letters = quota.MemoryDeadLetters()
    handler = QueueIngest(
        lambda: coalescer,
        quota._no_claim_checks,
        lambda: letters,
        time_budget=settings.queue_time_budget,
    )
    plan = _schedule(names, float(job["seconds"]), int(job["processes"]), int(job["index"]))
    limit = quota.in_flight()
    delays: list[tuple[float, float]] = []  # (due, from the start; delay)
    cut: list[tuple[float, float]] = []  # not acknowledged in time: (due; waited so far)
    late: list[float] = []
    failures: Counter[str] = Counter()

    async def one(
        gate: asyncio.Semaphore, start: float, due: float, body: bytes, number: str
    ) -> None:
        async with gate:
            late.append(time.time() - due)
            try:
                await handler.handle(body, number, 1)
            except Exception as error:  # counted, and the run goes on: a figure, not a test
                failures[type(error).__name__] += 1
                return
        delays.append((due - start, time.time() - due))

    threads = job.get("threads")

    async def run(start: float) -> None:
        if threads:
            asyncio.get_running_loop().set_default_executor(
                concurrent.futures.ThreadPoolExecutor(int(threads))
            )
        gate = asyncio.Semaphore(limit)
        tasks: dict[asyncio.Task[None], float] = {}
        for offset, k, name, table, seq in plan:
            due = start + offset
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            row = {"Seq": seq, "Due": round(due, 3), "Source": f"p{job['index']}"}
            body = encode(json.dumps({"dataset": name, "table": table, "rows": [row]})).encode()
            tasks[asyncio.create_task(one(gate, start, due, body, f"t{k}-{seq}"))] = due
        # Bounded: what is not acknowledged ``drain`` seconds after the load is cut off (its
        # wait so far is a lower bound of its delay); a push already running ends first
        # (asyncio.run waits for the executor), one not started yet is dropped.
        cutoff = start + float(job["seconds"]) + float(job["drain"])
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, cutoff - time.time()))
        now = time.time()
        if pending:
            # Their buffers' shared results end as "delivery cancelled", which nobody reads.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        for task in pending:
            cut.append((tasks[task] - start, now - tasks[task]))
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    start = released()
    asyncio.run(run(start))
    client = ingestor.client
    assert isinstance(client, CountingClient)
    # ThreadPoolExecutor's default size, the loop's default executor: min(32, cores + 4).
    loop_executor_threads = threads or min(32, (os.cpu_count() or 1) + 4)
    return {
        "messages": len(plan),
        "delays": delays,
        "cut": cut,
        "late_p99": percentile(late, 99) if late else None,
        "failures": dict(failures),
        "letters": len(letters.letters),
        "posts": client.posts,
        "flushes": coalescer.flushes,
        "executor_threads": loop_executor_threads,
        "ledger": metered.stats() if metered is not None else None,
    }


def _make_datasets(emulator: EmulatorProcess, api: Api, names: Sequence[str]) -> dict[str, str]:
    """Dataset name -> id, made before the processes start (they only look them up)."""
    maker = _ingestor(emulator.base, api.token, names, Governor())
    return {n: str(maker.resolve(Target(n, TABLES[0])).dataset_id) for n in names}


def load(
    emulator: EmulatorProcess,
    api: Api,
    env: dict[str, str],
    seconds: float,
    processes: int,
    label: str,
    threads: int | None = None,
) -> dict[str, Any]:
    """One run of the load; its numbers."""
    run_id = uuid.uuid4().hex[:6]
    names = [f"Fifty-{run_id}-{i:02d}" for i in range(DATASETS)]
    ids = _make_datasets(emulator, api, names)
    jobs = [
        {
            "env": env,
            "base": emulator.base,
            "token": api.token,
            "names": names,
            "seconds": seconds,
            "processes": processes,
            "index": index,
            "threads": threads,
            "drain": drain_for(seconds),
        }
        for index in range(processes)
    ]
    outcomes, start = run_processes(_feed, jobs, seconds + drain_for(seconds) + 60)
    acknowledged = [tuple(d) for o in outcomes for d in o["delays"]]
    cut = [tuple(d) for o in outcomes for d in o["cut"]]
    # Percentiles over every message; one cut off counts with its wait so far (a lower bound).
    timed = sorted(acknowledged + cut)
    delays = sorted(d for _, d in timed)
    # A backlog that grows shows as later messages waiting longer: the p99 of the first and
    # of the last third of the load (by due time).
    thirds = [
        [d for due, d in timed if i * seconds / 3 <= due < (i + 1) * seconds / 3] for i in (0, 2)
    ]
    posts = sorted(tuple(p) for o in outcomes for p in o["posts"])
    messages = sum(int(o["messages"]) for o in outcomes)
    failures: Counter[str] = Counter()
    for o in outcomes:
        failures.update(o["failures"])
    # POSTs per table while the load ran (acknowledged within it), per second of it.
    per_table: dict[tuple[str, str], list[float]] = {
        (i, t): [] for i in ids.values() for t in TABLES
    }
    for moment, dataset_id, table in posts:
        per_table[(dataset_id, table)].append(moment - start)
    rates = {k: sum(1 for m in v if 0 <= m <= seconds) / seconds for k, v in per_table.items()}
    busiest_second = max(
        max((bisect.bisect_right(v, m + 1.0) - i for i, m in enumerate(v)), default=0)
        for v in per_table.values()
    )
    # What the emulator saw: every message's row stored, its POSTs, its 429s.
    stored = 0
    emulator_posts = 0
    throttled = 0
    by_limit: Counter[str] = Counter()
    for dataset_id in ids.values():
        state = api.state(dataset_id)
        stored += sum(int(t["rows"]) for t in state["tables"])
        counters: dict[str, int] = state["counters"]
        emulator_posts += counters.get("posts_accepted", 0)
        throttled += quota._throttled(counters)
        by_limit.update(
            {
                k.removeprefix("throttled_"): v
                for k, v in counters.items()
                if k.startswith("throttled_")
            }
        )
    shared = [o["ledger"] for o in outcomes if o["ledger"] is not None]
    return {
        "label": label,
        "processes": processes,
        "pacing": Settings.from_env(env).pacing,
        "seconds": seconds,
        "tables": len(per_table),
        "messages": messages,
        "delivered": len(acknowledged),
        "cut_off": len(cut),
        "drain_seconds": drain_for(seconds),
        "failures": dict(failures),
        "dead_letters": sum(int(o["letters"]) for o in outcomes),
        "rows_stored": stored,
        "posts_counted": len(posts),
        "posts_emulator": emulator_posts,
        "throttled_429": throttled,
        "throttled_by_limit": dict(by_limit),
        "posts_per_second_per_table_max": round(max(rates.values()), 3),
        "posts_per_second_per_table_median": round(median(list(rates.values())), 3),
        "posts_in_busiest_second_of_a_table": busiest_second,
        "rows_per_post": round(stored / len(posts), 2) if posts else None,
        "delay_p50_s": round(median(delays), 3) if delays else None,
        "delay_p99_s": round(percentile(delays, 99), 3) if delays else None,
        "delay_max_s": round(delays[-1], 3) if delays else None,
        "delay_p99_first_third_s": round(percentile(thirds[0], 99), 3) if thirds[0] else None,
        "delay_p99_last_third_s": round(percentile(thirds[1], 99), 3) if thirds[1] else None,
        "handed_late_p99_s": round(max(o["late_p99"] or 0.0 for o in outcomes), 3),
        "flushes": [o["flushes"] for o in outcomes],
        "executor_threads_per_process": outcomes[0]["executor_threads"],
        "linger_seconds": Settings.from_env(env).queue_linger,
        "max_wait_seconds": Settings.from_env(env).queue_max_wait,
        "ledger": ledger_cost(shared) if shared else None,
    }


def _figure(number: str, name: str, run: dict[str, Any], latency: bool = True) -> Figure:
    """A run as a figure; ``latency``: whether the p99 target applies (see the module)."""
    failed = sum(run["failures"].values())
    # Every message accounted for; every acknowledged row stored (and no more rows than
    # messages); the client's POSTs are the emulator's.
    complete = (
        run["delivered"] + run["cut_off"] + failed == run["messages"]
        and run["delivered"] <= run["rows_stored"] <= run["messages"]
        and run["posts_counted"] == run["posts_emulator"]
    )
    met = (
        complete
        and run["delivered"] == run["messages"]
        and run["posts_per_second_per_table_max"] <= POSTS_TARGET
        and run["delay_p99_s"] is not None
        and (run["delay_p99_s"] <= P99_TARGET or not latency)
        and run["throttled_429"] == 0
    )
    # With messages cut off, the later ones' delays are cut shorter: no trend to read then.
    trend = (
        ""
        if run["cut_off"]
        else f" (p99 {run['delay_p99_first_third_s']:g} s in the first third of the load, "
        f"{run['delay_p99_last_third_s']:g} s in the last)"
    )
    lost = ""
    if run["cut_off"]:
        lost += (
            f"; {run['cut_off']:,} of {run['messages']:,} not acknowledged {run['drain_seconds']:g}"
            " s after the load (counted with their wait so far, a lower bound)"
        )
    if failed:
        lost += f"; {failed} failed ({', '.join(sorted(run['failures']))})"
    if not complete:
        lost += (
            f"; UNACCOUNTED: {run['delivered']} acknowledged, {run['rows_stored']} rows stored, "
            f"{run['posts_counted']} POSTs counted against the emulator's {run['posts_emulator']}"
        )
    return Figure(
        number,
        name,
        f"max {run['posts_per_second_per_table_max']:g} POSTs/s per table; delay p50 "
        f"{run['delay_p50_s']:g} / p99 {run['delay_p99_s']:g} / max {run['delay_max_s']:g} s"
        f"{trend}; {run['throttled_429']} 429s"
        + (
            f" ({', '.join(f'{k} {v}' for k, v in run['throttled_by_limit'].items())})"
            if run["throttled_429"]
            else ""
        )
        + lost,
        f"<= {POSTS_TARGET:g} POST/s per table, p99 <= {P99_TARGET:g} s, 0 429s"
        if latency
        else f"<= {POSTS_TARGET:g} POST/s per table, 0 429s (p99 shown)",
        met,
        run,
    )


def run(seconds: float) -> list[Figure]:
    """Figure 7: the runs, then the ledger's cost from the two shared ones."""
    with servers.emulator(1.0) as (emulator, api), servers.azurite() as azurite:
        table = f"pace{uuid.uuid4().hex[:10]}"
        shared = pacing_env(azurite.connection_string, table, 1.0)
        local = {**shared, "PACING": "local"}
        baseline = load(emulator, api, local, seconds, 1, "local, 1 process")
        one = load(emulator, api, shared, seconds, 1, "shared, 1 process")
        three = load(emulator, api, shared, seconds, 3, "shared, 3 processes")
    what = f"50 tables x {PER_SECOND} msg/s, {seconds:.0f} s"
    figures = [
        _figure("7a", f"{what}: local governor, 1 process (baseline)", baseline),
        _figure("7b", f"{what}: shared ledger, 1 process", one),
        _figure("7c", f"{what}: shared ledger, 3 processes (shown; see above)", three, False),
    ]
    for number, label, measured in (("7f", "1 process", one), ("7g", "3 processes", three)):
        cost = measured["ledger"] or {}
        figures.append(
            Figure(
                number,
                f"Ledger cost per Add Rows (50 tables), {label}",
                describe_cost(cost),
                "measured (issue 16, item 1)",
                None,
                cost,
            )
        )
    return figures
