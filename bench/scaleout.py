"""What the scale-out figures share: several real OS processes started together, each pacing on
the shared ledger (Table storage in Azurite) as the runtime builds it, with every ledger call
timed.

- :func:`run_processes` starts one ``spawn`` process per job (a fresh interpreter each, as a
  Functions instance is: no state inherited from the parent), lets each set itself up (imports,
  its own Ingestor, lookups), releases them all at one wall-clock instant, collects what each
  returns and stops them: every process is bounded by ``timeout`` and terminated if still alive.
- :func:`shared_governor` builds the process's governor with the runtime's own
  :func:`shared.runtime.build_governor` (the settings' table, claim TTL, fallback share and
  storage client options), then the same governor again over a :class:`TimedLedger`, a ledger
  that times each call, and as a :class:`MeteredGovernor`, which sums the ledger time and calls
  made on the path of each Add Rows (its claim before the POST and its release after it).
- :func:`ledger_cost` turns what the processes measured into the figures: storage transactions
  per Add Rows call (the governor's ``reads + writes + conflicts``: a conflict is a refused
  write, one transaction) and ledger time per Add Rows (median, p99), with what real storage
  would add at 5-20 ms a call.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from bench.report import median, percentile
from shared.engine.governor import Governor
from shared.engine.retry import Deadline
from shared.engine.shared_governor import Ledger, SharedGovernor
from shared.runtime import build_governor
from shared.settings import Settings

#: One call to Table storage from an instance in the same region (network round trip plus the
#: service's own time): 5-20 ms, the range issue 16 assumes; an assumption, not a measurement
#: (Azure Storage's scalability targets give no latency figure). Azurite on this loopback,
#: sharing 2 cores with the emulator, answers in about 4-7 ms p50 (figures 3i/3j, 7f/7g).
REAL_CALL_MS = (5.0, 20.0)
#: How long a process may take to start and set itself up (spawn, imports, lookups), 2 cores.
SETUP_SECONDS = 120.0

# -- processes ------------------------------------------------------------------------------


def _wait_go(ready: Any, go: Any, start: Any) -> float:
    ready.wait(SETUP_SECONDS)
    if not go.wait(SETUP_SECONDS):
        raise TimeoutError("the parent never said go")
    return float(start.value)


def _child(
    work: Callable[[Any, Callable[[], float]], Any],
    job: Any,
    index: int,
    ready: Any,
    go: Any,
    start: Any,
    results: Any,
) -> None:
    """One process: ``work(job, released)`` where ``released()`` waits for every process to be
    set up and returns the common start (wall clock); its return value goes to the parent."""
    try:
        value = work(job, lambda: _wait_go(ready, go, start))
    except BaseException:
        ready.abort()  # the others (and the parent) stop waiting for this one
        results.put((index, False, traceback.format_exc()))
        return
    results.put((index, True, value))


def run_processes(
    work: Callable[[Any, Callable[[], float]], Any],
    jobs: Sequence[Any],
    timeout: float,
    lead: float = 0.3,
) -> tuple[list[Any], float]:
    """Run ``work(job, released)`` in one fresh process per job; return their results (in job
    order) and the common start (``time.time()``: every process's clock; Linux keeps one
    system clock). ``work`` must be a module-level function (it is pickled by name).

    ``released()``, called by ``work`` once it is set up, returns when all are, ``lead``
    seconds before the start it returns. Raises if a process fails (with its traceback) or
    if they are not all done ``timeout`` seconds after the start; no process outlives this
    call (each is joined, then terminated if still alive)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(len(jobs) + 1)
    go = context.Event()
    start = context.Value("d", 0.0)
    results = context.Queue()
    processes = [
        context.Process(
            target=_child,
            args=(work, job, index, ready, go, start, results),
            name=f"bench-{index}",
            daemon=True,
        )
        for index, job in enumerate(jobs)
    ]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    try:
        # A broken barrier: a process failed while setting up; its traceback is in the queue.
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(SETUP_SECONDS)
        start.value = time.time() + lead
        go.set()
        end = time.monotonic() + lead + timeout
        while len(collected) < len(jobs):
            left = end - time.monotonic()
            # Processes that exited before this look: what they sent is in the queue by now
            # (a process flushes its queue before it exits).
            exited = [i for i, p in enumerate(processes) if p.exitcode is not None]
            try:
                index, ok, value = results.get(timeout=min(1.0, max(0.1, left)))
            except queue.Empty:
                dead = [processes[i].name for i in exited if i not in collected]
                if dead or left <= 0:
                    # A process that died without a word (killed, out of memory) or one stuck.
                    raise TimeoutError(
                        f"{len(jobs) - len(collected)} of {len(jobs)} processes not done "
                        f"{max(0.0, timeout - left):.0f} s after the start "
                        f"(exited: {dead or 'none'})"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"process {index} failed:\n{value}")
            collected[index] = value
        return [collected[i] for i in range(len(jobs))], float(start.value)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        results.close()


# -- the ledger, timed ----------------------------------------------------------------------


class TimedLedger:
    """A :class:`Ledger` that times every call (a refused write included), and keeps a running
    total per thread so that a governor can tell which calls were made for one Add Rows."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        #: Seconds per call, by kind ("read", "write"; a refused write is a "write" too).
        self.calls: dict[str, list[float]] = {"read": [], "write": []}
        self._local = threading.local()

    def _timed(self, kind: str, call: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return call()
        finally:
            took = time.perf_counter() - began
            self.calls[kind].append(took)  # list.append is atomic under the GIL
            self._local.seconds = getattr(self._local, "seconds", 0.0) + took
            self._local.count = getattr(self._local, "count", 0) + 1

    def read(self, dataset: str) -> tuple[dict[str, Any] | None, str | None]:
        """The inner ledger's read, timed."""
        result: tuple[dict[str, Any] | None, str | None] = self._timed(
            "read", lambda: self.inner.read(dataset)
        )
        return result

    def write(self, dataset: str, record: dict[str, Any], version: str | None) -> str:
        """The inner ledger's write, timed (a conflict is raised as before)."""
        return str(self._timed("write", lambda: self.inner.write(dataset, record, version)))

    def thread_totals(self) -> tuple[float, int]:
        """Seconds and calls spent in this ledger by the calling thread so far."""
        return getattr(self._local, "seconds", 0.0), getattr(self._local, "count", 0)


class MeteredGovernor(SharedGovernor):
    """A :class:`SharedGovernor` that records, per Add Rows, the ledger time and calls made on
    its path: the claim before the POST and the release after it (both on the caller's
    thread). Calls made elsewhere (the coalescer's ``wait_needed`` hint) are not in a slot."""

    def __init__(self, ledger: TimedLedger, **options: Any) -> None:
        super().__init__(ledger, **options)
        self.timed = ledger
        #: (seconds, calls) of ledger work per slot taken.
        self.slot_costs: list[tuple[float, int]] = []

    @contextmanager
    def slot(
        self,
        dataset: str,
        rows: int,
        deadline: Deadline | None = None,
        *,
        max_pause: float | None = None,
        table: str | None = None,
    ) -> Iterator[float]:
        """:meth:`SharedGovernor.slot`, metered."""
        seconds, count = self.timed.thread_totals()
        try:
            with super().slot(dataset, rows, deadline, max_pause=max_pause, table=table) as waited:
                yield waited
        finally:
            after, calls = self.timed.thread_totals()
            self.slot_costs.append((after - seconds, calls - count))

    def stats(self) -> dict[str, Any]:
        """What this process measured, as plain values for the parent."""
        return {
            "reads": self.reads,
            "writes": self.writes,
            "conflicts": self.conflicts,
            "slot_costs": self.slot_costs,
            "read_seconds": self.timed.calls["read"],
            "write_seconds": self.timed.calls["write"],
            # The ledger was unreachable at some point: this process paced on its share alone.
            "fallback_used": self._down_until != float("-inf"),
        }


def pacing_env(connection_string: str, table: str, time_scale: float) -> dict[str, str]:
    """The app settings the runtime reads for shared pacing, pointed at Azurite."""
    return {
        "AzureWebJobsStorage": connection_string,
        "PACING": "shared",
        "PACING_TABLE": table,
        "POWERBI_QUOTA_TIME_SCALE": f"{time_scale:g}",
    }


def shared_governor(env: Mapping[str, str]) -> MeteredGovernor:
    """The governor :func:`shared.runtime.build_governor` makes from ``env``, over a timed
    ledger (the same table client, quotas, claim TTL and fallback share)."""
    settings = Settings.from_env(env)
    built: Governor = build_governor(settings, env)
    if not isinstance(built, SharedGovernor):
        raise AssertionError(f"the runtime built {type(built).__name__}, not a SharedGovernor")
    return MeteredGovernor(
        TimedLedger(built.ledger),
        quotas=built.quotas,
        claim_ttl=built.claim_ttl,
        fallback_share=settings.pacing_fallback_processes,
        retry_after=built.retry_after,
        poll=built.poll,
    )


# -- the figures' numbers -------------------------------------------------------------------


def ledger_cost(per_process: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Storage transactions per Add Rows and ledger time per Add Rows, over every process."""
    reads = sum(int(p["reads"]) for p in per_process)
    writes = sum(int(p["writes"]) for p in per_process)
    conflicts = sum(int(p["conflicts"]) for p in per_process)
    costs = [tuple(c) for p in per_process for c in p["slot_costs"]]
    slots = len(costs)
    if not slots:
        return {"slots": 0}
    seconds = [float(c[0]) for c in costs]
    calls = [int(c[1]) for c in costs]
    on_path = sum(calls)
    call_ms = [s * 1000 for p in per_process for s in (*p["read_seconds"], *p["write_seconds"])]
    per_slot_calls = on_path / slots
    return {
        "slots": slots,
        "reads": reads,
        "writes": writes,
        "conflicts": conflicts,
        "transactions_per_add_rows": round((reads + writes + conflicts) / slots, 2),
        "on_path_calls_per_add_rows": round(per_slot_calls, 2),
        "on_path_calls_p99": round(percentile(calls, 99), 1),
        "hint_reads_per_add_rows": round((reads + writes + conflicts - on_path) / slots, 2),
        "ledger_ms_per_add_rows_p50": round(median(seconds) * 1000, 2),
        "ledger_ms_per_add_rows_p99": round(percentile(seconds, 99) * 1000, 2),
        "ledger_call_ms_p50": round(median(call_ms), 2) if call_ms else None,
        "ledger_call_ms_p99": round(percentile(call_ms, 99), 2) if call_ms else None,
        # Real storage: each call on the path costs a round trip instead of Azurite's.
        "real_storage_ms_per_add_rows": [round(per_slot_calls * ms, 1) for ms in REAL_CALL_MS],
        "fallback_used": any(p.get("fallback_used") for p in per_process),
    }


def describe_cost(cost: Mapping[str, Any]) -> str:
    """One line: transactions, ledger time per Add Rows, and real storage's estimate."""
    if not cost.get("slots"):
        return "n/a (no Add Rows)"
    low, high = cost["real_storage_ms_per_add_rows"]
    return (
        f"{cost['transactions_per_add_rows']:g} transactions/Add Rows "
        f"({cost['on_path_calls_per_add_rows']:g} on its path, {cost['conflicts']} conflicts "
        f"in {cost['slots']}); ledger {cost['ledger_ms_per_add_rows_p50']:g} ms p50, "
        f"{cost['ledger_ms_per_add_rows_p99']:g} ms p99; real storage ~{low:g}-{high:g} ms"
    )
