"""The reliability rig and its ledger.

A :class:`Rig` runs the emulator, Azurite and devhost as real processes on loopback, each its
own, so a scenario can kill and restart any of them. :func:`run_scenario` drives a mixed load
through the three ingestion paths at once (HTTP in queue mode, the rows queue, blobs in the
ingest container) into several datasets while a fault schedule changes the emulator's fault
plan and a crash schedule SIGKILLs devhost; then it waits until every row is accounted for (or
a deadline passes) and returns a :class:`Ledger`: per dataset, the rows sent, stored, dead-
lettered, duplicated (and whether each duplicate is explained by a batch whose answer the
emulator lost, or by a crash) and lost.

Used by ``test_fault_accounting.py`` (in ``make test``) and by ``python -m
tests.reliability.soak`` (``make soak``).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from tests.azurite import Azurite, dead_letter_lines, start_azurite
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess, start_emulator
from tests.integration.test_devhost import Devhost, app_environment, start_devhost
from tests.integration.test_replay import replay_poison

TABLE = "Events"
COLUMNS = [
    {"name": "n", "dataType": "Int64"},
    {"name": "path", "dataType": "string"},
    {"name": "amount", "dataType": "Double"},
    {"name": "at", "dataType": "DateTime"},
    {"name": "note", "dataType": "string"},
]
PATHS = ("http", "queue", "blob")
#: The emulator's fault kinds a fault run must have met (latency is counted separately).
KINDS = ("throttle", "error_500", "error_503", "drop", "accept_then_fail", "latency")
BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"


# -- faults and crashes ----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPhase:
    """One stretch of the fault schedule: a name for the table and the emulator's plan."""

    name: str
    plan: dict[str, Any]


#: The cycle the fault scenario runs through, phase after phase, for as long as rows flow.
FAULT_CYCLE = (
    FaultPhase("429 storm", {"throttle": 0.7, "retry_after": 1}),
    FaultPhase("calm", {}),
    FaultPhase("500/503 burst", {"error_500": 0.2, "error_503": 0.3, "retry_after": 1}),
    FaultPhase("latency spikes", {"latency_ms": 1500, "latency_rate": 0.4}),
    FaultPhase("dropped connections", {"drop": 0.3}),
    FaultPhase("accept then fail", {"accept_then_fail": 0.25}),
    FaultPhase(
        "everything at once",
        {
            "throttle": 0.1,
            "error_500": 0.05,
            "error_503": 0.05,
            "drop": 0.05,
            "accept_then_fail": 0.05,
            "latency_ms": 800,
            "latency_rate": 0.2,
            "retry_after": 1,
        },
    ),
)
#: Slow Power BI down a little, so a crash finds work in flight.
CRASH_BACKGROUND = (FaultPhase("latency", {"latency_ms": 300, "latency_rate": 0.5}),)


# -- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """How many rows go where. Ids ``0..rows_per_dataset-1`` in each dataset; contiguous ranges
    go to HTTP, the queue and blobs; every ``bad_every``-th row is invalid by design (an amount
    that is not a number) and must be dead-lettered, never stored."""

    datasets: int = 5
    rows: int = 100_000
    http_share: float = 0.2
    queue_share: float = 0.3
    http_rows_per_request: int = 100
    queue_rows_per_message: int = 50
    blob_files_per_dataset: int = 2
    bad_every: int = 250

    @property
    def rows_per_dataset(self) -> int:
        return self.rows // self.datasets

    def split(self) -> dict[str, range]:
        """The ids each path carries (the same in every dataset)."""
        total = self.rows_per_dataset
        http = int(total * self.http_share)
        queue = int(total * self.queue_share)
        return {
            "http": range(0, http),
            "queue": range(http, http + queue),
            "blob": range(http + queue, total),
        }

    def is_bad(self, n: int) -> bool:
        return n % self.bad_every == self.bad_every // 2


def row(n: int, path: str, bad: bool) -> dict[str, Any]:
    """Row ``n`` as a sender writes it."""
    return {
        "n": n,
        "path": path,
        "amount": "not a number" if bad else n / 4,
        "at": f"2026-11-25T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
        "note": f"row {n} by {path}",
    }


def csv_file(rows: Sequence[dict[str, Any]]) -> bytes:
    lines = ["n,path,amount,at,note"]
    lines += [f"{r['n']},{r['path']},{r['amount']},{r['at']},{r['note']}" for r in rows]
    return ("\n".join(lines) + "\n").encode()


def ndjson_gz_file(rows: Sequence[dict[str, Any]]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), 6)


# -- the rig -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Rig:
    """The emulator, Azurite and devhost for one scenario, each restartable."""

    workdir: Path
    azurite: Azurite
    emulator: EmulatorProcess
    api: Api
    env: dict[str, str]
    settings: Path
    emulator_port: int
    host_port: int
    host: Devhost | None = None
    crashes: int = 0
    #: For each crash, the invocations it cut short, by function.
    crash_hits: list[dict[str, int]] = field(default_factory=list)
    emulator_outages: int = 0
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, workdir: Path, azurite: Azurite | None = None, **settings: str) -> Rig:
        """Start an emulator (state in a SQLite file, so it survives a restart) and, unless one
        is given, Azurite; devhost starts with :meth:`start_host`."""
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        emulator = _emulator(workdir, port)
        try:
            return cls._around(workdir, emulator, port, azurite, settings)
        except BaseException:
            emulator.stop()  # nothing left running when the set-up fails
            raise

    @classmethod
    def _around(
        cls,
        workdir: Path,
        emulator: EmulatorProcess,
        port: int,
        azurite: Azurite | None,
        settings: dict[str, str],
    ) -> Rig:
        azurite = azurite or start_azurite()
        suffix = uuid.uuid4().hex[:8]
        env = app_environment(emulator, azurite, f"rows{suffix}")
        env.update(
            INGEST_CONTAINER=f"ingest{suffix}",
            CHECKPOINT_CONTAINER=f"checkpoints{suffix}",
            DEADLETTER_CONTAINER=f"dl{suffix}",
            CLAIMCHECK_CONTAINER=f"claims{suffix}",
            DEVHOST_BLOB_POLL_SECONDS="0.3",
            # A crashed host's messages come back after this lease, not after 10 minutes; it is
            # longer than an invocation can take (QUEUE_TIME_BUDGET_SECONDS + linger).
            DEVHOST_QUEUE_LEASE_SECONDS="20",
            QUEUE_TIME_BUDGET_SECONDS="10",
            BLOB_TIME_BUDGET_SECONDS="15",
            AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:01",
            PYTHONUNBUFFERED="1",
        )
        env.update(settings)
        settings_file = workdir / "local.settings.json"
        settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        service.get_container_client(env["INGEST_CONTAINER"]).create_container()
        QueueClient.from_connection_string(
            azurite.connection_string, env["ROWS_QUEUE"]
        ).create_queue()
        return cls(workdir, azurite, emulator, Api(emulator), env, settings_file, port, free_port())

    # -- processes

    def start_host(self) -> Devhost:
        """Start devhost on its fixed port (senders keep their URL across restarts)."""
        host = start_devhost(self.env, self.settings, "--port", str(self.host_port))
        with self._lock:
            if self.host is not None:
                self.log.extend(self.host.output)
            self.host = host
        return host

    def crash_host(self) -> dict[str, int]:
        """SIGKILL devhost: no clean-up, no answer to what it was doing. Returns the
        invocations that were running, by function."""
        assert self.host is not None
        seen = _activity(self)  # what the host had started and finished, just before
        os.kill(self.host.process.pid, signal.SIGKILL)
        self.host.process.wait()
        if seen is not None:  # the output reader has caught up with that much of the log
            until = time.monotonic() + 10
            while time.monotonic() < until and not self._log_reached(seen):
                time.sleep(0.01)
        hit = self.in_flight()
        self.crashes += 1
        self.crash_hits.append(dict(hit))
        return dict(hit)

    def _log_reached(self, seen: dict[str, Any]) -> bool:
        """Whether the host's output read so far holds at least the Executing and Executed
        lines of the invocations ``seen`` counted (each is logged before it is counted)."""
        assert self.host is not None
        lines = list(self.host.output)
        executing = sum(1 for line in lines if _EXECUTING.search(line))
        executed = sum(1 for line in lines if _EXECUTED.search(line))
        return executing >= sum(seen["started"].values()) and executed >= sum(
            seen["finished"].values()
        )

    def in_flight(self) -> Counter[str]:
        """Invocations devhost has started and not finished, by function (from its log)."""
        assert self.host is not None
        running: dict[str, str] = {}
        for line in list(self.host.output):
            if match := _EXECUTING.search(line):
                running[match.group(2)] = match.group(1)
            elif match := _EXECUTED.search(line):
                running.pop(match.group(1), None)
        return Counter(running.values())

    def stop_emulator(self) -> None:
        """Kill the emulator: Power BI is down, connections are refused."""
        os.kill(self.emulator.process.pid, signal.SIGKILL)
        self.emulator.process.wait()
        self.emulator_outages += 1

    def restart_emulator(self) -> None:
        """Bring the emulator back on the same port with the same database."""
        self.emulator = _emulator(self.workdir, self.emulator_port)
        self.api.emulator = self.emulator

    def output(self) -> list[str]:
        """Everything devhost printed, over every start."""
        return self.log + (list(self.host.output) if self.host is not None else [])

    def stop(self, own_azurite: bool) -> None:
        if self.host is not None:
            self.host.stop()
            self.log.extend(self.host.output)
        # Kept for a post-mortem: what devhost and the emulator said.
        (self.workdir / "devhost.log").write_text("\n".join(self.log) + "\n")
        (self.workdir / "emulator.log").write_text("\n".join(self.emulator.output) + "\n")
        self.emulator.stop()
        if own_azurite:
            self.azurite.stop()

    # -- reading back

    @property
    def host_base(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def queue(self, name: str | None = None) -> QueueClient:
        return QueueClient.from_connection_string(
            self.azurite.connection_string, name or self.env["ROWS_QUEUE"]
        )

    def waiting(self, name: str | None = None) -> int:
        """Messages in a queue (0 when it does not exist)."""
        try:
            return int(self.queue(name).get_queue_properties().approximate_message_count)
        except Exception:
            return 0

    def poisoned(self) -> int:
        return self.waiting(f"{self.env['ROWS_QUEUE']}-poison") + self.waiting(BLOB_POISON_QUEUE)

    def dead_letters(self) -> list[dict[str, Any]]:
        return dead_letter_lines(self.azurite.connection_string, self.env["DEADLETTER_CONTAINER"])

    def replay_poison(self) -> dict[str, Any]:
        """``python -m shared replay poison``, as an operator would run it."""
        return replay_poison(self.settings, self.env, timeout=300)


_EXECUTING = re.compile(r"Executing 'Functions\.(\w+)' .*Id=([0-9a-f-]+)\)")
_EXECUTED = re.compile(r"Executed 'Functions\.\w+' \(\w+, Id=([0-9a-f-]+)")


def _emulator(workdir: Path, port: int) -> EmulatorProcess:
    return start_emulator(
        "--port", str(port), "--db", str(workdir / "emulator.sqlite"), tmp=workdir
    )


@contextlib.contextmanager
def rig(workdir: Path, azurite: Azurite | None = None, **settings: str) -> Iterator[Rig]:
    """A started rig (devhost included), stopped afterwards whatever happens."""
    setup = Rig.start(workdir, azurite, **settings)
    try:
        setup.start_host()
        yield setup
    finally:
        setup.stop(own_azurite=azurite is None)


# -- the ledger --------------------------------------------------------------------------------


@dataclass
class DatasetLedger:
    """Where each row of one dataset went."""

    name: str
    dataset_id: str
    sent: dict[str, int] = field(default_factory=dict)
    bad: int = 0
    stored: int = 0
    distinct: int = 0
    dead_lettered: int = 0
    #: Dead-letter lines for this dataset: more than ``dead_lettered`` when a row was refused
    #: again on a redelivery (each time with its reason).
    dead_letter_lines: int = 0
    duplicates: int = 0
    explained_by_lost_answers: int = 0
    lost: int = 0
    phantom: int = 0
    good_dead_lettered: int = 0
    bad_stored: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    avoidable_429s: int = 0
    posts: int = 0
    max_copies: int = 0

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())

    @property
    def unexplained_duplicates(self) -> int:
        return self.duplicates - self.explained_by_lost_answers


@dataclass
class Ledger:
    """The accounting of one scenario run."""

    datasets: list[DatasetLedger]
    seconds: float
    phases: Counter[str]
    crashes: int
    crash_hits: list[dict[str, int]]
    emulator_outages: int
    poisoned: int
    replayed: int
    seed: int

    def total(self, name: str) -> int:
        return sum(int(getattr(d, name)) for d in self.datasets)

    @property
    def sent(self) -> int:
        return sum(d.sent_total for d in self.datasets)

    @property
    def injected(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for d in self.datasets:
            found.update(d.injected)
        return found

    def table(self) -> str:
        """The accounting table, as Markdown."""
        head = (
            "| dataset | sent (http/queue/blob) | stored | distinct | dead-lettered | duplicates "
            "| of which after accept-then-fail | lost |\n|---|---|---|---|---|---|---|---|"
        )
        lines = [head]
        for d in self.datasets:
            paths = "/".join(f"{d.sent.get(p, 0):,}" for p in PATHS)
            lines.append(
                f"| {d.name} | {d.sent_total:,} ({paths}) | {d.stored:,} | {d.distinct:,} | "
                f"{d.dead_lettered:,} | {d.duplicates:,} | {d.explained_by_lost_answers:,} | "
                f"{d.lost:,} |"
            )
        lines.append(
            f"| **all** | **{self.sent:,}** | {self.total('stored'):,} | "
            f"{self.total('distinct'):,} | {self.total('dead_lettered'):,} | "
            f"{self.total('duplicates'):,} | {self.total('explained_by_lost_answers'):,} | "
            f"**{self.total('lost'):,}** |"
        )
        faults = ", ".join(f"{k.removeprefix('injected_')} {v:,}" for k, v in self.injected.items())
        lines.append("")
        lines.append(
            f"Faults injected: {faults or 'none'}. Fault phases: "
            + (", ".join(f"{k} x{v}" for k, v in self.phases.items()) or "none")
            + f". Devhost crashes (SIGKILL): {self.crashes}{self._cut()}. Emulator outages: "
            f"{self.emulator_outages}. Messages poisoned: {self.poisoned}, replayed: "
            f"{self.replayed}. 429s the client could have avoided: "
            f"{self.total('avoidable_429s')}. POSTs accepted: {self.total('posts'):,}. "
            f"Seed {self.seed}; {self.seconds:.0f} s."
        )
        return "\n".join(lines)

    def cut_short(self) -> Counter[str]:
        """Invocations the crashes cut short, by function."""
        found: Counter[str] = Counter()
        for hit in self.crash_hits:
            found.update(hit)
        return found

    def _cut(self) -> str:
        cut = self.cut_short()
        if not cut:
            return ""
        return " (cutting short " + ", ".join(f"{v} {k}" for k, v in sorted(cut.items())) + ")"

    def to_json(self) -> dict[str, Any]:
        return {
            "datasets": [{**d.__dict__, "sent_total": d.sent_total} for d in self.datasets],
            "seconds": round(self.seconds, 1),
            "phases": dict(self.phases),
            "crashes": self.crashes,
            "crash_hits": self.crash_hits,
            "emulator_outages": self.emulator_outages,
            "poisoned": self.poisoned,
            "replayed": self.replayed,
            "seed": self.seed,
            "injected": dict(self.injected),
        }


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class Sender:
    """Sends one dataset's rows by the three paths and remembers what was accepted."""

    rig: Rig
    plan: LoadPlan
    name: str
    sent: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    bad: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def jobs(self) -> list[Callable[[], None]]:
        """Every send as a callable, to be shuffled together with the other datasets'."""
        split = self.plan.split()
        jobs: list[Callable[[], None]] = []
        for path, ids, size in (
            ("http", split["http"], self.plan.http_rows_per_request),
            ("queue", split["queue"], self.plan.queue_rows_per_message),
        ):
            for start in range(ids.start, ids.stop, size):
                chunk = range(start, min(start + size, ids.stop))
                send = self._http if path == "http" else self._queue
                jobs.append(lambda chunk=chunk, send=send: send(chunk))  # type: ignore[misc]
        blob_ids = split["blob"]
        if not blob_ids:
            return jobs
        per_file = -(-len(blob_ids) // self.plan.blob_files_per_dataset)
        for k, start in enumerate(range(blob_ids.start, blob_ids.stop, per_file)):
            chunk = range(start, min(start + per_file, blob_ids.stop))
            jobs.append(lambda chunk=chunk, k=k: self._blob(chunk, k))  # type: ignore[misc]
        return jobs

    def rows(self, ids: range, path: str) -> list[dict[str, Any]]:
        return [row(n, path, self.plan.is_bad(n)) for n in ids]

    def _accepted(self, path: str, ids: range) -> None:
        with self.lock:
            self.sent[path].update(ids)
            self.bad.update(n for n in ids if self.plan.is_bad(n))

    def _http(self, ids: range) -> None:
        """POST an envelope in queue mode; a real sender retries until it gets its 202."""
        body = {"dataset": self.name, "table": TABLE, "rows": self.rows(ids, "http")}
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = session.post(
                    f"{self.rig.host_base}/api/rows?mode=queue", json=body, timeout=30
                )
                if answer.status_code == 202:
                    self._accepted("http", ids)
                    return
                assert answer.status_code in (429, 500, 502, 503, 504), answer.text
            except requests.RequestException:
                pass  # the host is down (a crash): wait and send again
            if time.monotonic() > deadline:
                raise AssertionError(f"HTTP send of {self.name} {ids} never got its 202")
            time.sleep(0.5)

    def _queue(self, ids: range) -> None:
        body = {"dataset": self.name, "table": TABLE, "rows": self.rows(ids, "queue")}
        message = base64.b64encode(json.dumps(body).encode()).decode()
        self.rig.queue().send_message(message)
        self._accepted("queue", ids)

    def _blob(self, ids: range, k: int) -> None:
        rows = self.rows(ids, "blob")
        data, suffix = (
            (csv_file(rows), "csv") if k % 2 == 0 else (ndjson_gz_file(rows), "ndjson.gz")
        )
        service = BlobServiceClient.from_connection_string(self.rig.azurite.connection_string)
        container = service.get_container_client(self.rig.env["INGEST_CONTAINER"])
        container.upload_blob(f"{self.name}/{TABLE}/part-{k}.{suffix}", data, overwrite=True)
        self._accepted("blob", ids)


def run_scenario(
    setup: Rig,
    plan: LoadPlan,
    *,
    phases: Sequence[FaultPhase] = FAULT_CYCLE,
    phase_seconds: float = 3.0,
    duration: float = 30.0,
    crashes: int = 0,
    crash_window: float = 20.0,
    outage_at: float | None = None,
    outage_seconds: float = 10.0,
    outage_until: Callable[[Rig], bool] | None = None,
    timeout: float = 300.0,
    seed: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Ledger:
    """Send ``plan`` through all three paths, spread over ``duration`` seconds, while faults
    (and crashes, and an emulator outage of at least ``outage_seconds`` and until
    ``outage_until`` holds) happen; wait until every row is stored or
    dead-lettered (or ``timeout``), replay anything poisoned, and account."""
    seed = random.randrange(1 << 30) if seed is None else seed
    chance = random.Random(seed)
    started = time.monotonic()
    prefix = f"Rel-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(plan.datasets)]
    ids = {
        name: setup.api.create_dataset(
            [{"name": TABLE, "columns": COLUMNS}], WORKSPACE_ID, name=name
        )
        for name in names
    }
    senders = [Sender(setup, plan, name) for name in names]
    jobs = [job for sender in senders for job in sender.jobs()]
    chance.shuffle(jobs)
    stop = threading.Event()
    phase_counts: Counter[str] = Counter()

    def faults() -> None:
        k = 0
        while not stop.is_set():
            phase = phases[k % len(phases)]
            # The emulator may be down (an outage scenario): the next phase tries again.
            with contextlib.suppress(requests.RequestException, AssertionError):
                setup.api.set_faults(**{**phase.plan, "seed": chance.randrange(1 << 30)})
                phase_counts[phase.name] += 1
            k += 1
            stop.wait(phase_seconds)

    def crasher() -> None:
        times = sorted(chance.uniform(2.0, crash_window) for _ in range(crashes))
        begin = time.monotonic()
        for k, at in enumerate(times):
            if stop.wait(max(0.0, begin + at - time.monotonic())):
                return
            # The first crashes wait (a little) for a blob and queue messages to be in flight.
            wanted = ("ingest_blob", "ingest_queue") if k < 2 else ()
            until = time.monotonic() + 15
            while time.monotonic() < until and not all(setup.in_flight()[f] for f in wanted):
                if stop.wait(0.05):
                    return
            hit = setup.crash_host()
            progress(f"SIGKILL devhost at {time.monotonic() - started:.1f} s, cutting {hit}")
            stop.wait(chance.uniform(0.2, 1.5))
            setup.start_host()

    def outage() -> None:
        assert outage_at is not None
        if stop.wait(outage_at):
            return
        setup.stop_emulator()
        progress(f"emulator down at {time.monotonic() - started:.1f} s")
        stop.wait(outage_seconds)
        if outage_until is not None:  # a condition, not a timing, ends it (bounded)
            until = time.monotonic() + 120
            while time.monotonic() < until and not outage_until(setup) and not stop.wait(0.5):
                pass
        setup.restart_emulator()
        progress(f"emulator back at {time.monotonic() - started:.1f} s")

    background = [threading.Thread(target=faults, daemon=True)] if phases else []
    if outage_at is not None:
        background.append(threading.Thread(target=outage, daemon=True))
    crashing = threading.Thread(target=crasher, daemon=True)
    if crashes:
        background.append(crashing)
    for thread in background:
        thread.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = []
            for k, job in enumerate(jobs):  # spread evenly over the load's duration
                stop.wait(max(0.0, started + k * duration / len(jobs) - time.monotonic()))
                futures.append(pool.submit(job))
            for future in futures:
                future.result()
        progress(f"all {plan.rows:,} rows handed over in {time.monotonic() - started:.1f} s")
        if crashes:
            # Every planned crash happens before the rig settles: a load that drained early
            # must not end the scenario with crashes not made (bounded: each crash waits at
            # most 15 s for work in flight, then 1.5 s for the restart).
            crashing.join(timeout=crash_window + crashes * 20)
        _wait_until_settled(setup, senders, ids, started + timeout, progress)
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=30)
        with contextlib.suppress(requests.RequestException):
            setup.api.session.delete(f"{setup.emulator.base}/_emulator/faults", timeout=10)
    replayed = 0
    if setup.poisoned():
        progress(f"{setup.poisoned()} poisoned messages: replaying")
        replayed = int(setup.replay_poison().get("messagesReplayed", 0))
        _wait_until_settled(setup, senders, ids, time.monotonic() + 120, progress)
    poisoned = replayed + setup.poisoned()  # what replay found, and anything left behind
    return _account(
        setup, senders, ids, time.monotonic() - started, phase_counts, poisoned, replayed, seed
    )


def _wait_until_settled(
    setup: Rig,
    senders: list[Sender],
    ids: dict[str, str],
    deadline: float,
    progress: Callable[[str], None],
) -> None:
    """Until every sent row is stored or dead-lettered, the queues are empty and the host is
    quiet (:func:`_quiet`), so that a late re-send would still be counted."""
    expected_good = {s.name: sum(map(len, s.sent.values())) - len(s.bad) for s in senders}
    last = 0.0
    previous, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            counts = {name: int(setup.api.state(ids[name])["tables"][0]["rows"]) for name in ids}
        except requests.RequestException:
            time.sleep(1)
            continue
        stored = sum(counts.values())
        if stored != previous:
            previous, changed = stored, time.monotonic()
        waiting = setup.waiting()
        if time.monotonic() - last > 10:
            progress(f"{stored:,} rows stored; {waiting:,} messages waiting")
            last = time.monotonic()
        settled = all(counts[n] >= expected_good[n] for n in ids) and waiting == 0
        if settled and _complete(setup, senders, ids) and _quiet(setup, ids, counts, deadline):
            progress("every row accounted for; the host has scanned and polled again, idle")
            return
        if waiting == 0 and time.monotonic() - changed > 8 and setup.poisoned():
            return  # what is left is in a poison queue, for replay
        time.sleep(1)
    progress("deadline reached before every row was accounted for")


def _activity(setup: Rig) -> dict[str, Any] | None:
    """devhost's activity counters (``/admin/devhost/activity``); None while it is down."""
    session = requests.Session()
    session.trust_env = False
    try:
        answer: dict[str, Any] = session.get(
            f"{setup.host_base}/admin/devhost/activity", timeout=10
        ).json()
    except (requests.RequestException, ValueError):
        return None
    return answer


def _quiet(setup: Rig, ids: dict[str, str], counts: dict[str, int], deadline: float) -> bool:
    """Whether nothing can still add a row, shown by the host doing the work that would start
    one and starting none (instead of waiting a while and hoping).

    A row can only still come from an invocation that is running, a queue message (visible or
    leased: the queue's count includes both), a blob version without a receipt, or a POST the
    emulator has not finished. So: nothing running; then the host lists the ingest container
    twice more and polls the rows queue twice more (at least one full look that began after
    this point), and in that time starts no invocation, the queue stays empty, the emulator has
    no POST pending and no table's row count moved. False (and the caller looks again) when
    anything moved or the host restarted meanwhile."""
    container, queue = setup.env["INGEST_CONTAINER"], setup.env["ROWS_QUEUE"]
    before = _activity(setup)
    if before is None or before["running"]:
        return False

    def looked_again(now: dict[str, Any]) -> bool:
        scans = int(now["blobScans"].get(container, 0)) - int(before["blobScans"].get(container, 0))
        polls = int(now["queuePolls"].get(queue, 0)) - int(before["queuePolls"].get(queue, 0))
        return scans >= 2 and polls >= 2

    after = before
    while not looked_again(after):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
        found = _activity(setup)
        if found is None or found["pid"] != before["pid"]:
            return False
        after = found
    if after["started"] != before["started"] or after["running"] or setup.waiting():
        return False
    for name, dataset_id in ids.items():
        state = setup.api.state(dataset_id)
        if state["usage"]["pending"] or int(state["tables"][0]["rows"]) != counts[name]:
            return False
    return True


def _dataset_of(letter: dict[str, Any]) -> str | None:
    target = letter.get("target") or {}
    name = target.get("dataset") if isinstance(target, dict) else None
    return name if isinstance(name, str) else None


def _complete(setup: Rig, senders: list[Sender], ids: dict[str, str]) -> bool:
    letters = setup.dead_letters()
    for sender in senders:
        stored = {int(r["n"]) for r in setup.api.stored_rows(ids[sender.name], TABLE)}
        dead = _dead_ids(letters, sender.name)
        if not set().union(*sender.sent.values()) <= stored | dead:
            return False
    return True


def _dead_ids(letters: list[dict[str, Any]], name: str) -> set[int]:
    found = set()
    for letter in letters:
        body = letter.get("row")
        if _dataset_of(letter) == name and isinstance(body, dict) and "n" in body:
            found.add(int(body["n"]))
    return found


def _account(
    setup: Rig,
    senders: list[Sender],
    ids: dict[str, str],
    seconds: float,
    phases: Counter[str],
    poisoned: int,
    replayed: int,
    seed: int,
) -> Ledger:
    letters = setup.dead_letters()
    ledgers = []
    for sender in senders:
        dataset_id = ids[sender.name]
        rows = setup.api.stored_rows(dataset_id, TABLE)
        state = setup.api.state(dataset_id)
        counters = state["counters"]
        sent = set().union(*sender.sent.values())
        stored_ids = [int(r["n"]) for r in rows]
        copies = Counter(stored_ids)
        dead = _dead_ids(letters, sender.name)
        # A duplicate is explained by a lost answer when one of its copies lies in a batch the
        # emulator stored and then dropped the connection on: the client could not know.
        lost_positions = {
            p
            for batch in state.get("answersLost", [])
            for p in range(batch["offset"], batch["offset"] + batch["count"])
        }
        in_lost: Counter[int] = Counter(
            n for position, n in enumerate(stored_ids) if position in lost_positions
        )
        explained = sum(min(c - 1, in_lost[n]) for n, c in copies.items() if c > 1)
        ledgers.append(
            DatasetLedger(
                name=sender.name,
                dataset_id=dataset_id,
                sent={p: len(sender.sent[p]) for p in PATHS},
                bad=len(sender.bad),
                stored=len(stored_ids),
                distinct=len(copies),
                dead_lettered=len(dead),
                dead_letter_lines=sum(1 for x in letters if _dataset_of(x) == sender.name),
                duplicates=len(stored_ids) - len(copies),
                explained_by_lost_answers=explained,
                lost=len(sent - set(copies) - dead),
                phantom=len((set(copies) | dead) - sent),
                good_dead_lettered=len(dead - sender.bad),
                bad_stored=len(set(copies) & sender.bad),
                injected={k: v for k, v in counters.items() if k.startswith("injected_")},
                avoidable_429s=sum(v for k, v in counters.items() if k.startswith("throttled_")),
                posts=int(counters.get("posts_accepted", 0)),
                max_copies=max(copies.values(), default=0),
            )
        )
    return Ledger(
        ledgers,
        seconds,
        phases,
        setup.crashes,
        list(setup.crash_hits),
        setup.emulator_outages,
        poisoned,
        replayed,
        seed,
    )
