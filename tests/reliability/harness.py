"""The reliability rig and its ledger.

A :class:`Rig` runs the emulator, Azurite and devhost as real processes on loopback, each its
own, so a scenario can kill and restart any of them. :func:`run_scenario` drives a mixed load
through the three ingestion paths at once (HTTP in queue mode, the rows queue, blobs in the
ingest container) into several datasets while a fault schedule changes the emulator's fault
plan and a crash schedule SIGKILLs devhost; then it waits until every row is accounted for (or
a deadline passes) and returns a :class:`Ledger`: per dataset, the rows sent, stored, dead-
lettered, duplicated (and whether each duplicate is explained by a batch whose answer the
emulator lost, or by a crash) and lost.

A rig may run several devhost processes (:func:`rig_with`), as the instances of a scaled-out
app: the same settings, one rows queue, one emulator (optionally with ``--time-scale``). Then
HTTP goes to the hosts in turn (synchronous requests too: :attr:`LoadPlan.http_mode`), a
backlog can wait on the queue before they start, datasets can be left for the bundle to create
(every host meets each one at once), and the ledger counts the datasets of each name.

A rig may also serve a KQL database (:meth:`Rig.launch` with ``kusto_database``: the
emulator's Kusto surface, queued ingestion through the rig's Azurite, devhost given
``EVENTHOUSE_URI``/``EVENTHOUSE_DATABASE``); a plan with ``destinations`` routes its datasets
there too (``datasets/<name>.destinations.json``), fault phases may target either destination
(:attr:`FaultPhase.target`), and the ledger accounts for each destination on its own
(:attr:`Ledger.eventhouse`, :meth:`Ledger.destination_table`), dead letters by the destination
they name (null: refused by validation before any destination).

Used by ``test_fault_accounting.py``, ``test_outage.py``, ``test_scale_out.py``,
``test_destination_faults.py`` (in ``make test``) and by ``python -m tests.reliability.soak``
(``make soak``).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
#: The destinations a table can be routed to (shared/engine/routing.py).
POWERBI = "powerbi"
EVENTHOUSE = "eventhouse"
#: The fault kinds the Kusto surface injects (emulator/kusto.py); its latency is not counted.
KUSTO_KINDS = ("throttle", "error_500", "error_503", "drop", "accept_then_fail")


# -- faults and crashes ----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPhase:
    """One stretch of the fault schedule: a name for the table and the emulator's plan, for
    Power BI's surface (``/_emulator/faults``) or the Kusto one (``/_emulator/kusto/faults``)."""

    name: str
    plan: dict[str, Any]
    target: str = POWERBI


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
    that is not a number) and must be dead-lettered, never stored.

    HTTP requests use queue mode (``?mode=queue``: a 202 once queued) or, with ``http_mode``
    ``"sync"``, the synchronous default (the rows are delivered before the answer). A
    ``backlog`` of messages for the first dataset (ids after its other rows) is put on the
    queue before the load, and before the hosts start when none is running. With
    ``bundle_creates`` the datasets do not exist beforehand: their definitions are in
    DATASETS_DIR and the bundle creates them on first use. ``senders`` requests and messages
    are sent at once at most; with ``one_dataset_first`` the first dataset's all come before
    the others' (all senders on one dataset, then on several)."""

    datasets: int = 5
    rows: int = 100_000
    http_share: float = 0.2
    queue_share: float = 0.3
    http_rows_per_request: int = 100
    queue_rows_per_message: int = 50
    blob_files_per_dataset: int = 2
    bad_every: int = 250
    http_mode: str = "queue"
    backlog_messages: int = 0
    backlog_rows_per_message: int = 5
    bundle_creates: bool = False
    senders: int = 8
    one_dataset_first: bool = False
    #: When set, every dataset is defined for the bundle to create (as ``bundle_creates``)
    #: and routed to these destinations (``datasets/<name>.destinations.json``, its table
    #: in the KQL database prefixed per dataset); the rig needs a ``kusto_database``.
    destinations: tuple[str, ...] = ()

    @property
    def rows_per_dataset(self) -> int:
        return self.rows // self.datasets

    @property
    def backlog_ids(self) -> range:
        """The backlog's ids (in the first dataset), after that dataset's other rows."""
        start = self.rows_per_dataset
        return range(start, start + self.backlog_messages * self.backlog_rows_per_message)

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
    """The emulator, Azurite and N devhost processes for one scenario, each restartable.

    Every host gets the same settings and environment (the same Azurite queue and containers,
    the same emulator), as the instances of one scaled-out function app do; each listens on
    its own fixed port, so senders keep their URLs across restarts. Most scenarios run one
    host (index 0); :attr:`host`, :attr:`host_port` and :attr:`host_base` are that one."""

    workdir: Path
    azurite: Azurite
    emulator: EmulatorProcess
    api: Api
    env: dict[str, str]
    settings: Path
    emulator_port: int
    host_ports: list[int]
    #: Extra arguments the emulator runs with (e.g. ``--time-scale 60``), kept for a restart.
    emulator_args: tuple[str, ...] = ()
    #: The running devhost of each index, None while it is stopped or killed.
    hosts: list[Devhost | None] = field(default_factory=list)
    crashes: int = 0
    #: For each crash, the invocations it cut short, by function.
    crash_hits: list[dict[str, int]] = field(default_factory=list)
    emulator_outages: int = 0
    #: What each host printed in its earlier runs (before a restart, a crash or a stop).
    logs: list[list[str]] = field(default_factory=list)
    #: The KQL database the emulator serves and devhost's EVENTHOUSE_DATABASE (None: no
    #: Kusto in this rig), and the environment the emulator runs with (kept for a restart).
    kusto_database: str | None = None
    emulator_env: dict[str, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _turn: int = 0
    _rows_queue: QueueClient | None = None

    def __post_init__(self) -> None:
        self.hosts = self.hosts or [None] * len(self.host_ports)
        self.logs = self.logs or [[] for _ in self.host_ports]

    @classmethod
    def start(cls, workdir: Path, azurite: Azurite | None = None, **settings: str) -> Rig:
        """Start an emulator (state in a SQLite file, so it survives a restart) and, unless one
        is given, Azurite, for one devhost; it starts with :meth:`start_host`."""
        return cls.launch(workdir, azurite, settings=settings)

    @classmethod
    def launch(
        cls,
        workdir: Path,
        azurite: Azurite | None = None,
        *,
        hosts: int = 1,
        time_scale: float | None = None,
        emulator_args: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
        kusto_database: str | None = None,
    ) -> Rig:
        """:meth:`start` for ``hosts`` devhost processes (they start with :meth:`start_hosts`),
        the emulator run with ``emulator_args`` and, when ``time_scale`` is given,
        ``--time-scale`` (its quota windows that much shorter), the app told the same with
        ``POWERBI_QUOTA_TIME_SCALE``. With ``kusto_database`` the emulator also serves that
        KQL database, its queued ingestion through the rig's Azurite (started first, then),
        and devhost gets ``EVENTHOUSE_URI`` and ``EVENTHOUSE_DATABASE`` for it."""
        workdir.mkdir(parents=True, exist_ok=True)
        arguments = tuple(emulator_args)
        values = dict(settings or {})
        if time_scale is not None:
            arguments += ("--time-scale", f"{time_scale:g}")
            values.setdefault("POWERBI_QUOTA_TIME_SCALE", f"{time_scale:g}")
        emulator_env: dict[str, str] | None = None
        own_azurite = None
        if kusto_database is not None:
            if azurite is None:
                own_azurite = azurite = start_azurite()
            arguments += ("--kusto-database", kusto_database)
            # As make run and tests/emulator/kusto_fixtures.py start it.
            emulator_env = {
                **os.environ,
                "EMULATOR_KUSTO_STORAGE_CONNECTION": azurite.connection_string,
            }
        port = free_port()
        try:
            emulator = _emulator(workdir, port, arguments, emulator_env)
        except BaseException:
            if own_azurite is not None:
                own_azurite.stop()
            raise
        try:
            setup = cls._around(workdir, emulator, port, azurite, values, hosts, arguments)
        except BaseException:
            emulator.stop()  # nothing left running when the set-up fails
            raise
        if kusto_database is not None:
            setup.kusto_database = kusto_database
            setup.emulator_env = emulator_env
            setup.env.setdefault("EVENTHOUSE_URI", emulator.base)
            setup.env.setdefault("EVENTHOUSE_DATABASE", kusto_database)
        return setup

    @classmethod
    def _around(
        cls,
        workdir: Path,
        emulator: EmulatorProcess,
        port: int,
        azurite: Azurite | None,
        settings: dict[str, str],
        hosts: int,
        emulator_args: tuple[str, ...],
    ) -> Rig:
        azurite = azurite or start_azurite()
        suffix = uuid.uuid4().hex[:8]
        env = app_environment(emulator, azurite, f"rows{suffix}")
        definitions = workdir / "datasets"
        definitions.mkdir(exist_ok=True)
        env.update(
            INGEST_CONTAINER=f"ingest{suffix}",
            CHECKPOINT_CONTAINER=f"checkpoints{suffix}",
            DEADLETTER_CONTAINER=f"dl{suffix}",
            CLAIMCHECK_CONTAINER=f"claims{suffix}",
            # Empty unless a scenario defines its datasets there (:meth:`define`): then the
            # bundle creates them on first use.
            DATASETS_DIR=str(definitions),
            DEVHOST_BLOB_POLL_SECONDS="0.3",
            # A crashed host's messages come back after this lease, not after 10 minutes; it is
            # longer than an invocation can take (QUEUE_TIME_BUDGET_SECONDS + linger).
            DEVHOST_QUEUE_LEASE_SECONDS="20",
            # A crashed host's blob receipt lease lapses after 15 s (the shortest allowed).
            DEVHOST_BLOB_LEASE_SECONDS="15",
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
        ports = [free_port() for _ in range(hosts)]
        return cls(
            workdir,
            azurite,
            emulator,
            Api(emulator),
            env,
            settings_file,
            port,
            ports,
            emulator_args,
        )

    def define(self, name: str, destinations: Sequence[str] = (), table_prefix: str = "") -> None:
        """Write dataset ``name``'s definition (the scenario's one table) into DATASETS_DIR, so
        that the bundle creates the dataset on first use, and with ``destinations`` its
        routing file (every table to those, the KQL table named ``table_prefix`` + table).
        Before the hosts start: each reads the definitions once."""
        body = {"name": name, "tables": [{"name": TABLE, "columns": COLUMNS}]}
        folder = Path(self.env["DATASETS_DIR"])
        (folder / f"{name}.json").write_text(json.dumps(body))
        if destinations:
            routing = {"default": list(destinations), "eventhouse": {"table_prefix": table_prefix}}
            (folder / f"{name}.destinations.json").write_text(json.dumps(routing))

    # -- processes

    @property
    def host(self) -> Devhost | None:
        """Host 0, the only one of a single-host rig."""
        return self.hosts[0]

    @property
    def host_port(self) -> int:
        return self.host_ports[0]

    def start_host(self, index: int = 0) -> Devhost:
        """Start devhost ``index`` on its fixed port (senders keep their URL across restarts)."""
        host = start_devhost(self.env, self.settings, "--port", str(self.host_ports[index]))
        with self._lock:
            self._archive(index)
            self.hosts[index] = host
        return host

    def start_hosts(self, count: int | None = None) -> None:
        """Start hosts ``0..count-1`` (all by default) that are not running, together, as a
        scaled-out app's instances come up."""
        wanted = [i for i in range(count or len(self.hosts)) if self.hosts[i] is None]
        with ThreadPoolExecutor(max(1, len(wanted))) as pool:
            list(pool.map(self.start_host, wanted))

    def stop_host(self, index: int = 0) -> None:
        """Stop devhost ``index`` cleanly (SIGTERM)."""
        host = self.hosts[index]
        if host is not None:
            host.stop()
            with self._lock:
                self._archive(index)

    def stop_hosts(self) -> None:
        for index in self.running():
            self.stop_host(index)

    def running(self) -> list[int]:
        """The indices of the hosts that are up (started and neither stopped nor killed)."""
        return [i for i, host in enumerate(self.hosts) if host is not None]

    def _archive(self, index: int) -> None:
        """Keep what host ``index`` printed and mark it down (caller holds the lock)."""
        host = self.hosts[index]
        if host is not None:
            self.logs[index].extend(host.output)
        self.hosts[index] = None

    def crash_host(self, index: int = 0) -> dict[str, int]:
        """SIGKILL devhost ``index``: no clean-up, no answer to what it was doing. Returns the
        invocations that were running, by function. The host stays down until
        :meth:`start_host`."""
        host = self.hosts[index]
        assert host is not None
        seen = _activity(self, index)  # what the host had started and finished, just before
        os.kill(host.process.pid, signal.SIGKILL)
        host.process.wait()
        if seen is not None:  # the output reader has caught up with that much of the log
            until = time.monotonic() + 10
            while time.monotonic() < until and not _log_reached(host, seen):
                time.sleep(0.01)
        hit = _in_flight(host)
        with self._lock:
            self._archive(index)
            self.crashes += 1
            self.crash_hits.append(dict(hit))
        return dict(hit)

    def in_flight(self, index: int = 0) -> Counter[str]:
        """Invocations devhost ``index`` has started and not finished, by function (from its
        log); none while it is down."""
        host = self.hosts[index]
        return _in_flight(host) if host is not None else Counter()

    def next_base(self) -> str:
        """A host's URL for the next request: the running hosts in turn (round robin), as a
        load balancer spreads requests over instances; host 0's when none is up (the sender
        retries)."""
        with self._lock:
            running = self.running() or [0]
            self._turn += 1
            return self.base_of(running[self._turn % len(running)])

    def base_of(self, index: int) -> str:
        return f"http://127.0.0.1:{self.host_ports[index]}"

    def stop_emulator(self) -> None:
        """Kill the emulator: Power BI is down, connections are refused."""
        os.kill(self.emulator.process.pid, signal.SIGKILL)
        self.emulator.process.wait()
        self.emulator_outages += 1

    def restart_emulator(self) -> None:
        """Bring the emulator back on the same port with the same database and arguments."""
        self.emulator = _emulator(
            self.workdir, self.emulator_port, self.emulator_args, self.emulator_env
        )
        self.api.emulator = self.emulator

    def set_faults(self, target: str, plan: Mapping[str, Any]) -> None:
        """Replace the fault plan of one destination's surface: Power BI's or Kusto's (which
        applies it to every operation, commands and queries too, not only to streaming
        ingestion, when the plan says ``all_operations``)."""
        if target == POWERBI:
            self.api.set_faults(**plan)
            return
        answer = self.api.session.put(
            f"{self.emulator.base}/_emulator/kusto/faults", json=dict(plan), timeout=10
        )
        assert answer.status_code == 200, answer.text

    def clear_faults(self) -> None:
        """No fault on either surface (the emulator may be down: then nothing to clear)."""
        paths = ["/_emulator/faults"]
        if self.kusto_database is not None:
            paths.append("/_emulator/kusto/faults")
        for path in paths:
            with contextlib.suppress(requests.RequestException):
                self.api.session.delete(f"{self.emulator.base}{path}", timeout=10)

    def output(self) -> list[str]:
        """Everything the hosts printed, over every start, host after host."""
        lines: list[str] = []
        for index, host in enumerate(self.hosts):
            lines += self.logs[index] + (list(host.output) if host is not None else [])
        return lines

    def stop(self, own_azurite: bool) -> None:
        self.stop_hosts()
        # Kept for a post-mortem: what each devhost and the emulator said.
        for index, lines in enumerate(self.logs):
            name = "devhost.log" if index == 0 else f"devhost-{index}.log"
            (self.workdir / name).write_text("\n".join(lines) + "\n")
        (self.workdir / "emulator.log").write_text("\n".join(self.emulator.output) + "\n")
        self.emulator.stop()
        if own_azurite:
            self.azurite.stop()

    # -- reading back

    @property
    def host_base(self) -> str:
        return self.base_of(0)

    def queue(self, name: str | None = None) -> QueueClient:
        """A client of a queue (the rows queue by default); the rows queue's is made once and
        shared by every sender thread (one connection pool, not one per message)."""
        if name is not None:
            return QueueClient.from_connection_string(self.azurite.connection_string, name)
        with self._lock:
            if self._rows_queue is None:
                self._rows_queue = QueueClient.from_connection_string(
                    self.azurite.connection_string, self.env["ROWS_QUEUE"]
                )
            return self._rows_queue

    def waiting(self, name: str | None = None) -> int:
        """Messages in a queue (0 when it does not exist)."""
        try:
            return int(self.queue(name).get_queue_properties().approximate_message_count or 0)
        except Exception:
            return 0

    def poisoned(self) -> int:
        return self.waiting(f"{self.env['ROWS_QUEUE']}-poison") + self.waiting(BLOB_POISON_QUEUE)

    def dead_letters(self) -> list[dict[str, Any]]:
        return dead_letter_lines(self.azurite.connection_string, self.env["DEADLETTER_CONTAINER"])

    def replay_poison(self) -> dict[str, Any]:
        """``python -m shared replay poison``, as an operator would run it."""
        return replay_poison(self.settings, self.env, timeout=300)

    def kusto_flush(self) -> None:
        """Have the emulator ingest every queued-ingestion message waiting now (the service
        would after its batching delay), so that what the app queued is counted."""
        self.api.session.post(f"{self.emulator.base}/_emulator/kusto/flush", timeout=60)

    def kusto_state(self) -> dict[str, Any]:
        """The Kusto surface's state (``GET /_emulator/kusto/state``)."""
        state: dict[str, Any] = self.api.session.get(
            f"{self.emulator.base}/_emulator/kusto/state", timeout=60
        ).json()
        return state

    def kusto_tables(self) -> dict[str, dict[str, Any]]:
        """The rig's KQL database's tables by name (rows, answersLost, ...)."""
        wanted = (self.kusto_database or "").lower()
        return {
            table["name"]: table
            for database in self.kusto_state()["databases"]
            if database["name"].lower() == wanted
            for table in database["tables"]
        }

    def kusto_ids(self, table: str) -> list[int]:
        """The ids (``n``) stored in a KQL table, in the table's order; none when it does not
        exist yet."""
        answer = self.api.session.get(
            f"{self.emulator.base}/_emulator/kusto/tables/{self.kusto_database}/{table}/rows",
            timeout=120,
        )
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        return [int(r["n"]) for r in answer.json()["rows"]]

    def datasets(self, names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The emulator's state of every dataset of each name (``GET /_emulator/state``),
        smallest id first: one per name, unless the bundle created a name twice."""
        state = self.api.session.get(f"{self.emulator.base}/_emulator/state", timeout=60).json()
        found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for dataset in state["datasets"]:
            if dataset["name"] in found:
                found[dataset["name"]].append(dataset)
        for copies in found.values():
            copies.sort(key=lambda d: str(d["id"]))
        return found


_EXECUTING = re.compile(r"Executing 'Functions\.(\w+)' .*Id=([0-9a-f-]+)\)")
_EXECUTED = re.compile(r"Executed 'Functions\.\w+' \(\w+, Id=([0-9a-f-]+)")
_SUCCEEDED = re.compile(r"Executed 'Functions\.\w+' \(Succeeded, ")


def _in_flight(host: Devhost) -> Counter[str]:
    running: dict[str, str] = {}
    for line in list(host.output):
        if match := _EXECUTING.search(line):
            running[match.group(2)] = match.group(1)
        elif match := _EXECUTED.search(line):
            running.pop(match.group(1), None)
    return Counter(running.values())


def _log_reached(host: Devhost, seen: dict[str, Any]) -> bool:
    """Whether the host's output read so far holds at least the Executing and Executed lines of
    the invocations ``seen`` counted (each is logged before it is counted)."""
    lines = list(host.output)
    executing = sum(1 for line in lines if _EXECUTING.search(line))
    executed = sum(1 for line in lines if _EXECUTED.search(line))
    started: dict[str, int] = seen["started"]
    finished: dict[str, int] = seen["finished"]
    return executing >= sum(started.values()) and executed >= sum(finished.values())


def _emulator(
    workdir: Path, port: int, arguments: Sequence[str] = (), env: dict[str, str] | None = None
) -> EmulatorProcess:
    return start_emulator(
        "--port",
        str(port),
        "--db",
        str(workdir / "emulator.sqlite"),
        *arguments,
        tmp=workdir,
        env=env,
    )


@contextlib.contextmanager
def rig(workdir: Path, azurite: Azurite | None = None, **settings: str) -> Iterator[Rig]:
    """A started rig (devhost included), stopped afterwards whatever happens."""
    with rig_with(workdir, azurite, settings=settings) as setup:
        yield setup


@contextlib.contextmanager
def rig_with(
    workdir: Path,
    azurite: Azurite | None = None,
    *,
    hosts: int = 1,
    start: bool = True,
    time_scale: float | None = None,
    emulator_args: Sequence[str] = (),
    settings: Mapping[str, str] | None = None,
    kusto_database: str | None = None,
) -> Iterator[Rig]:
    """:func:`rig` with ``hosts`` devhost processes (all started, unless ``start`` is False:
    then :func:`run_scenario` starts them once a backlog is queued, after the datasets'
    definitions are written) and the emulator's arguments and KQL database
    (:meth:`Rig.launch`), stopped afterwards whatever happens."""
    setup = Rig.launch(
        workdir,
        azurite,
        hosts=hosts,
        time_scale=time_scale,
        emulator_args=emulator_args,
        settings=settings,
        kusto_database=kusto_database,
    )
    try:
        if start:
            setup.start_hosts()
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
    #: The avoidable 429s by the limit the emulator counted them against (``throttled_*``).
    throttled: dict[str, int] = field(default_factory=dict)
    posts: int = 0
    max_copies: int = 0
    #: Datasets of this name in the emulator at the end (1 unless it was created twice); rows,
    #: counters and POSTs above are summed over all of them.
    datasets_named: int = 1
    #: Synchronous HTTP: requests answered 429/503 (and retried after Retry-After), the rows
    #: those answers said were already sent or maybe sent (so the retry sends them again),
    #: rows of requests whose connection broke (a host killed under them), and answers that
    #: are a failure of the bundle (a 5xx other than 503, or a 2xx/4xx that does not account
    #: for the request's rows).
    http_retried: int = 0
    resent_rows: int = 0
    http_cut_rows: int = 0
    http_failures: list[str] = field(default_factory=list)
    #: The destination this ledger counts (``powerbi`` or ``eventhouse``); its dead letters
    #: are those naming it and those naming none (refused by validation, before any
    #: destination); ``refused_letter_lines`` counts the latter's lines, ``named_letters``
    #: the distinct rows of the former (a destination that gave up on them).
    destination: str = POWERBI
    refused_letter_lines: int = 0
    named_letters: int = 0
    #: Invalid rows dead-lettered more than once (naming no destination): the extra letters
    #: by the path the row came by, and a few of their sources (for the report of a bug).
    refused_again: dict[str, int] = field(default_factory=dict)
    refused_again_sources: list[str] = field(default_factory=list)
    #: Queued ingestions the Kusto surface failed (rows the client was told were accepted).
    failed_ingestions: int = 0

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
    #: devhost processes the scenario ran (at most at once).
    hosts: int = 1
    #: For each host killed and not restarted: seconds until a surviving host next finished an
    #: invocation successfully (None: nothing was left for them to do).
    carried_on: list[float | None] = field(default_factory=list)
    #: Routed runs: each dataset's Eventhouse ledger (:attr:`datasets` stays Power BI's), and
    #: the Kusto surface's counters (``fault_*``: the faults it injected, over every table).
    eventhouse: list[DatasetLedger] = field(default_factory=list)
    kusto_counters: dict[str, int] = field(default_factory=dict)

    @property
    def kusto_injected(self) -> Counter[str]:
        """The faults the Kusto surface injected, as ``injected_<kind>`` like Power BI's."""
        return Counter(
            {
                f"injected_{k.removeprefix('fault_')}": v
                for k, v in self.kusto_counters.items()
                if k.startswith("fault_")
            }
        )

    def of(self, destination: str) -> list[DatasetLedger]:
        """The datasets' ledgers of one destination."""
        return self.eventhouse if destination == EVENTHOUSE else self.datasets

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
        extra = sorted({p for d in self.datasets for p in d.sent} - set(PATHS))
        if extra:  # e.g. a backlog queued before the hosts started
            head = head.replace("(http/queue/blob)", "(" + "/".join((*PATHS, *extra)) + ")", 1)
        lines = [head]
        for d in self.datasets:
            paths = "/".join(f"{d.sent.get(p, 0):,}" for p in (*PATHS, *extra))
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
        if self.hosts > 1 or any(d.datasets_named != 1 for d in self.datasets):
            named = ", ".join(f"{d.name} {d.datasets_named}" for d in self.datasets)
            throttled: Counter[str] = Counter()
            for d in self.datasets:
                throttled.update(d.throttled)
            limits = ", ".join(f"{k} {v:,}" for k, v in sorted(throttled.items())) or "none"
            carried = ", ".join("-" if s is None else f"{s:.1f} s" for s in self.carried_on)
            lines.append(
                f"Hosts: {self.hosts}. Datasets per name: {named}. Avoidable 429s by limit: "
                f"{limits}. Synchronous HTTP: "
                f"{self.total('http_retried'):,} answers 429/503 (retried; "
                f"{self.total('resent_rows'):,} rows re-sent after a partial delivery), "
                f"{self.total('http_cut_rows'):,} rows in requests cut by a crash, "
                f"{sum(len(d.http_failures) for d in self.datasets)} failures."
                + (f" Survivors carried on after a kill within: {carried}." if carried else "")
            )
        return "\n".join(lines)

    def destination_table(self) -> str:
        """Routed runs: the accounting per destination and dataset, as Markdown (dead letters
        split into those refused by validation, naming no destination, and those naming the
        destination), then the faults each surface injected."""
        lines = [
            "| destination | dataset | sent | stored | distinct | refused (null letters) "
            "| dead-lettered naming it | duplicates | of which after a lost answer | lost |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for destination in (POWERBI, EVENTHOUSE):
            for d in self.of(destination):
                lines.append(
                    f"| {destination} | {d.name} ({d.dataset_id}) | {d.sent_total:,} | "
                    f"{d.stored:,} | {d.distinct:,} | {d.bad:,} ({d.refused_letter_lines:,}) | "
                    f"{d.named_letters:,} | {d.duplicates:,} | "
                    f"{d.explained_by_lost_answers:,} | **{d.lost:,}** |"
                )
        powerbi = ", ".join(
            f"{k.removeprefix('injected_')} {v:,}" for k, v in self.injected.items()
        )
        kusto = ", ".join(
            f"{k.removeprefix('injected_')} {v:,}" for k, v in self.kusto_injected.items()
        )
        counters = self.kusto_counters
        lines += [
            "",
            f"Faults injected: Power BI {powerbi or 'none'}; Eventhouse {kusto or 'none'}. "
            "Fault phases: "
            + (", ".join(f"{k} x{v}" for k, v in self.phases.items()) or "none")
            + f". Kusto: {counters.get('streaming_requests', 0):,} streaming requests, "
            f"{counters.get('queued_blobs', 0):,} queued blobs ingested, "
            f"{counters.get('failed_ingestions', 0):,} failed. Messages poisoned: "
            f"{self.poisoned}, replayed: {self.replayed}. Seed {self.seed}; {self.seconds:.0f} s.",
        ]
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
            "hosts": self.hosts,
            "carried_on": self.carried_on,
            "eventhouse": [{**d.__dict__, "sent_total": d.sent_total} for d in self.eventhouse],
            "kusto_counters": self.kusto_counters,
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
    #: Synchronous HTTP, as in :class:`DatasetLedger`.
    http_retried: int = 0
    resent_rows: int = 0
    http_cut_rows: int = 0
    http_failures: list[str] = field(default_factory=list)
    #: Leading HTTP requests taken by :meth:`opening` (not among :meth:`jobs`).
    opened: int = 0
    #: The dataset's table in the rig's KQL database, when it is routed there.
    kusto_table: str | None = None

    def _chunks(self, ids: range, size: int) -> list[range]:
        return [range(n, min(n + size, ids.stop)) for n in range(ids.start, ids.stop, size)]

    def opening(self, bases: Sequence[str]) -> list[tuple[range, str]]:
        """Take the dataset's first HTTP requests out of :meth:`jobs`, one for each host of
        ``bases``, to be sent to it with :meth:`http`."""
        chunks = self._chunks(self.plan.split()["http"], self.plan.http_rows_per_request)
        chosen = list(zip(chunks, bases, strict=False))
        self.opened = len(chosen)
        return chosen

    def http(self, ids: range, base: str | None = None) -> None:
        """Send ``ids`` by HTTP in the plan's mode, first to ``base`` when given."""
        if self.plan.http_mode == "sync":
            self._http_sync(ids, base)
        else:
            self._http(ids, base)

    def jobs(self) -> list[Callable[[], None]]:
        """Every send as a callable, to be shuffled together with the other datasets'."""
        split = self.plan.split()
        jobs: list[Callable[[], None]] = []
        for path, ids, size in (
            ("http", split["http"], self.plan.http_rows_per_request),
            ("queue", split["queue"], self.plan.queue_rows_per_message),
        ):
            chunks = self._chunks(ids, size)
            if path == "http":
                chunks = chunks[self.opened :]
            for chunk in chunks:
                send = self.http if path == "http" else self._queue
                jobs.append(lambda chunk=chunk, send=send: send(chunk))  # type: ignore[misc]
        blob_ids = split["blob"]
        if not blob_ids:
            return jobs
        per_file = -(-len(blob_ids) // self.plan.blob_files_per_dataset)
        for k, start in enumerate(range(blob_ids.start, blob_ids.stop, per_file)):
            chunk = range(start, min(start + per_file, blob_ids.stop))
            jobs.append(lambda chunk=chunk, k=k: self._blob(chunk, k))  # type: ignore[misc]
        return jobs

    def backlog(self) -> None:
        """Put the plan's backlog on the rows queue (the first dataset's, ids after its other
        rows), as messages that piled up while no instance ran."""
        chunks = self._chunks(self.plan.backlog_ids, self.plan.backlog_rows_per_message)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda chunk: self._queue(chunk, "backlog"), chunks))

    def rows(self, ids: range, path: str) -> list[dict[str, Any]]:
        return [row(n, path, self.plan.is_bad(n)) for n in ids]

    def _accepted(self, path: str, ids: range) -> None:
        with self.lock:
            self.sent[path].update(ids)
            self.bad.update(n for n in ids if self.plan.is_bad(n))

    def _http(self, ids: range, base: str | None = None) -> None:
        """POST an envelope in queue mode; a real sender retries until it gets its 202. The
        first try goes to ``base`` when given, every other to the next host in turn."""
        body = {"dataset": self.name, "table": TABLE, "rows": self.rows(ids, "http")}
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = session.post(
                    f"{base or self.rig.next_base()}/api/rows?mode=queue", json=body, timeout=30
                )
                if answer.status_code == 202:
                    self._accepted("http", ids)
                    return
                assert answer.status_code in (429, 500, 502, 503, 504), answer.text
            except requests.RequestException:
                pass  # the host is down (a crash): wait and send again
            base = None
            if time.monotonic() > deadline:
                raise AssertionError(f"HTTP send of {self.name} {ids} never got its 202")
            time.sleep(0.5)

    def _http_sync(self, ids: range, base: str | None = None) -> None:
        """POST an envelope synchronously (the rows are delivered before the answer), as a
        real sender does: a 200 (or a 400 when every row was refused) accounts for every row,
        refused ones dead-lettered (shared/sources/webhook.py); a 429 or 503 says the rows
        could not all be delivered yet, and the sender sends the request again after its
        Retry-After; a broken connection (the host killed under it) is sent again to another
        host. Anything else is a failure of the bundle, recorded and not retried. The first
        try goes to ``base`` when given, every other to the next host in turn."""
        body = {"dataset": self.name, "table": TABLE, "rows": self.rows(ids, "http")}
        bad = sum(1 for n in ids if self.plan.is_bad(n))
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 300
        while True:
            pause = 0.5  # before sending again to another host, after a broken connection
            try:
                # The read timeout is past HTTP_TIME_BUDGET_SECONDS' default (200 s).
                url = f"{base or self.rig.next_base()}/api/rows"
                answer = session.post(url, json=body, timeout=300)
            except requests.RequestException:
                with self.lock:
                    self.http_cut_rows += len(ids)  # some may be stored: a re-send may copy them
            else:
                result = _json_of(answer)
                if answer.status_code in (429, 503):
                    pause = float(answer.headers.get("Retry-After", "1"))
                    with self.lock:
                        self.http_retried += 1
                        self.resent_rows += int(result.get("sent", 0)) + int(
                            result.get("unconfirmed", 0)
                        )
                elif _accounts_for(answer.status_code, result, len(ids), bad):
                    self._accepted("http", ids)
                    return
                else:
                    with self.lock:
                        self.http_failures.append(f"{answer.status_code}: {answer.text[:300]}")
                    return
            base = None
            if time.monotonic() > deadline:
                raise AssertionError(f"HTTP send of {self.name} {ids} was never answered 200")
            time.sleep(pause)  # the answer's Retry-After: the protocol's wait, not a guess

    def _queue(self, ids: range, path: str = "queue") -> None:
        body = {"dataset": self.name, "table": TABLE, "rows": self.rows(ids, path)}
        message = base64.b64encode(json.dumps(body).encode()).decode()
        self.rig.queue().send_message(message)
        self._accepted(path, ids)

    def _blob(self, ids: range, k: int) -> None:
        rows = self.rows(ids, "blob")
        data, suffix = (
            (csv_file(rows), "csv") if k % 2 == 0 else (ndjson_gz_file(rows), "ndjson.gz")
        )
        service = BlobServiceClient.from_connection_string(self.rig.azurite.connection_string)
        container = service.get_container_client(self.rig.env["INGEST_CONTAINER"])
        container.upload_blob(f"{self.name}/{TABLE}/part-{k}.{suffix}", data, overwrite=True)
        self._accepted("blob", ids)


def _json_of(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _accounts_for(status: int, result: dict[str, Any], rows: int, bad: int) -> bool:
    """Whether a synchronous answer says every row of the request is done: received, the
    invalid ones refused (and so dead-lettered), the rest sent, none left unsent. A 200, or a
    400 when every row was refused."""
    if status not in (200, 400):
        return False
    done = (
        result.get("received") == rows
        and result.get("rejected") == bad
        and result.get("sent") == rows - bad
        and result.get("unsent") == 0
    )
    return bool(done) and (status == 200) == (rows > bad)


def run_scenario(
    setup: Rig,
    plan: LoadPlan,
    *,
    phases: Sequence[FaultPhase] = FAULT_CYCLE,
    phase_seconds: float = 3.0,
    duration: float = 30.0,
    crashes: int = 0,
    crash_window: float = 20.0,
    crash_restart: bool = True,
    outage_at: float | None = None,
    outage_seconds: float = 10.0,
    outage_until: Callable[[Rig], bool] | None = None,
    hosts: int | None = None,
    timeout: float = 300.0,
    seed: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Ledger:
    """Send ``plan`` through all three paths, spread over ``duration`` seconds, while faults
    (and crashes, and an emulator outage of at least ``outage_seconds`` and until
    ``outage_until`` holds) happen; wait until every row is stored or
    dead-lettered (or ``timeout``), replay anything poisoned, and account.

    The datasets are created first, or (``plan.bundle_creates``) defined for the bundle to
    create. When no host of the rig is running, ``hosts`` of them (all by default) start
    after the plan's backlog is queued. Each crash SIGKILLs a running host (chosen at random
    when there are several) and restarts it, or with ``crash_restart=False`` leaves it down
    and measures how soon the others carry on (:attr:`Ledger.carried_on`)."""
    seed = random.randrange(1 << 30) if seed is None else seed
    chance = random.Random(seed)
    started = time.monotonic()
    prefix = f"Rel-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(plan.datasets)]
    senders = [Sender(setup, plan, name) for name in names]
    if plan.destinations:
        # The ledger counts Power BI's datasets always (the scenarios route to it as well).
        assert POWERBI in plan.destinations and setup.kusto_database, plan.destinations
    for i, sender in enumerate(senders):
        name = sender.name
        if plan.destinations:
            table_prefix = f"{prefix.replace('-', '_')}_{i}_"
            setup.define(name, plan.destinations, table_prefix)
            if EVENTHOUSE in plan.destinations:
                sender.kusto_table = table_prefix + TABLE
        elif plan.bundle_creates:
            setup.define(name)
        else:
            setup.api.create_dataset([{"name": TABLE, "columns": COLUMNS}], WORKSPACE_ID, name=name)
    if plan.backlog_messages:
        senders[0].backlog()
        progress(f"{plan.backlog_messages:,} messages queued for {names[0]} beforehand")
    if not setup.running():
        setup.start_hosts(hosts)
        progress(f"{len(setup.running())} hosts up at {time.monotonic() - started:.1f} s")
    most_hosts = len(setup.running())
    openings: list[list[Callable[[], None]]] = []
    if (plan.bundle_creates or plan.destinations) and most_hosts > 1:
        # Every host meets every dataset at once, before the rest of the load: for one dataset
        # after another, its first requests, one to each host, all sent together when all are
        # ready, as when a burst of a new dataset's first requests is spread over the
        # instances. They race to create it.
        bases = [setup.base_of(i) for i in setup.running()]
        for sender in senders:
            if firsts := sender.opening(bases):
                openings.append(_together(sender, firsts))
    # The sends in random order: all of them, or the first dataset's and then the others'.
    groups = [senders[:1], senders[1:]] if plan.one_dataset_first else [senders]
    jobs = []
    for group in groups:
        some = [job for sender in group for job in sender.jobs()]
        chance.shuffle(some)
        jobs += some
    stop = threading.Event()
    phase_counts: Counter[str] = Counter()
    carried_on: list[float | None] = []
    uses_blobs = bool(plan.split()["blob"])

    def faults() -> None:
        k = 0
        while not stop.is_set():
            phase = phases[k % len(phases)]
            # The emulator may be down (an outage scenario): the next phase tries again.
            with contextlib.suppress(requests.RequestException, AssertionError):
                setup.set_faults(phase.target, {**phase.plan, "seed": chance.randrange(1 << 30)})
                phase_counts[phase.name] += 1
            k += 1
            stop.wait(phase_seconds)

    def crasher() -> None:
        times = sorted(chance.uniform(2.0, crash_window) for _ in range(crashes))
        begin = time.monotonic()
        for k, at in enumerate(times):
            if stop.wait(max(0.0, begin + at - time.monotonic())):
                return
            up = setup.running()
            if not up:
                return
            index = chance.choice(up) if len(setup.hosts) > 1 else up[0]
            # The first crashes wait (a little) for a blob and queue messages to be in flight.
            wanted = (("ingest_blob",) if uses_blobs else ()) + ("ingest_queue",)
            wanted = wanted if k < 2 else ()
            until = time.monotonic() + 15
            while time.monotonic() < until and not all(setup.in_flight(index)[f] for f in wanted):
                if stop.wait(0.05):
                    return
            hit = setup.crash_host(index)
            progress(
                f"SIGKILL devhost {index} at {time.monotonic() - started:.1f} s, cutting {hit}"
            )
            if crash_restart:
                stop.wait(chance.uniform(0.2, 1.5))
                setup.start_host(index)
            else:
                carried_on.append(_carry_on(setup, stop))
                progress(f"the other hosts carried on after {carried_on[-1]} s")

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
        for opening in openings:
            with ThreadPoolExecutor(len(opening)) as pool:
                for future in [pool.submit(job) for job in opening]:
                    future.result()
        if openings:
            progress(f"each host met each dataset at once at {time.monotonic() - started:.1f} s")
        with ThreadPoolExecutor(plan.senders) as pool:
            futures = []
            for k, job in enumerate(jobs):  # spread evenly over the load's duration
                stop.wait(max(0.0, started + k * duration / len(jobs) - time.monotonic()))
                futures.append(pool.submit(job))
            for future in futures:
                future.result()
        total = plan.rows_per_dataset * plan.datasets + len(plan.backlog_ids)
        progress(f"all {total:,} rows handed over in {time.monotonic() - started:.1f} s")
        if crashes:
            # Every planned crash happens before the rig settles: a load that drained early
            # must not end the scenario with crashes not made (bounded: each crash waits at
            # most 15 s for work in flight, then 1.5 s for the restart, or at most
            # CARRY_ON_LIMIT for the others to carry on).
            crashing.join(timeout=crash_window + crashes * (20 + CARRY_ON_LIMIT))
        _wait_until_settled(setup, senders, started + timeout, progress)
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=30)
        setup.clear_faults()
    replayed = 0
    if setup.poisoned():
        progress(f"{setup.poisoned()} poisoned messages: replaying")
        replayed = int(setup.replay_poison().get("messagesReplayed", 0))
        _wait_until_settled(setup, senders, time.monotonic() + 120, progress)
    poisoned = replayed + setup.poisoned()  # what replay found, and anything left behind
    ledger = _account(
        setup, senders, time.monotonic() - started, phase_counts, poisoned, replayed, seed
    )
    ledger.hosts = most_hosts
    ledger.carried_on = carried_on
    return ledger


def _together(sender: Sender, firsts: list[tuple[range, str]]) -> list[Callable[[], None]]:
    """Sends of ``firsts`` (ids, host) that wait for each other and go at once."""
    ready = threading.Barrier(len(firsts))

    def send(ids: range, base: str) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # then it goes anyway
            ready.wait(timeout=60)
        sender.http(ids, base)

    return [lambda ids=ids, base=base: send(ids, base) for ids, base in firsts]  # type: ignore[misc]


#: How long :func:`_carry_on` watches the surviving hosts before it gives up (None).
CARRY_ON_LIMIT = 120.0


def _carry_on(setup: Rig, stop: threading.Event) -> float | None:
    """Seconds from now (a host just killed) until a surviving host finishes an invocation
    successfully, read from their logs; None if none did within :data:`CARRY_ON_LIMIT` or
    before the scenario ended (nothing was left to do)."""
    survivors = setup.running()
    killed_at = time.monotonic()

    def succeeded() -> int:
        found = 0
        for index in survivors:
            host = setup.hosts[index]
            lines = list(host.output) if host is not None else []
            found += sum(1 for line in lines if _SUCCEEDED.search(line))
        return found

    before = succeeded()
    while time.monotonic() - killed_at < CARRY_ON_LIMIT:
        if succeeded() > before:
            return round(time.monotonic() - killed_at, 2)
        if stop.wait(0.05):
            return None
    return None


def _rows_in(copies: list[dict[str, Any]]) -> int:
    """Rows in the scenario's table, over every dataset of one name."""
    return sum(int(t["rows"]) for d in copies for t in d["tables"] if t["name"] == TABLE)


def _wait_until_settled(
    setup: Rig,
    senders: list[Sender],
    deadline: float,
    progress: Callable[[str], None],
) -> None:
    """Until every sent row is stored or dead-lettered, the queues are empty and the hosts
    are quiet (:func:`_quiet`), so that a late re-send would still be counted."""
    names = [s.name for s in senders]
    expected_good = {s.name: sum(map(len, s.sent.values())) - len(s.bad) for s in senders}
    routed = any(s.kusto_table for s in senders)
    last = 0.0
    previous, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            found = setup.datasets(names)
            kusto = _kusto_counts(setup, senders) if routed else {}
        except requests.RequestException:
            time.sleep(1)
            continue
        counts = {name: _rows_in(copies) for name, copies in found.items()}
        stored = sum(counts.values()) + sum(kusto.values())
        if stored != previous:
            previous, changed = stored, time.monotonic()
        waiting = setup.waiting()
        if time.monotonic() - last > 10:
            also = f" (of which {sum(kusto.values()):,} in the Eventhouse)" if routed else ""
            progress(f"{stored:,} rows stored{also}; {waiting:,} messages waiting")
            last = time.monotonic()
        # The Eventhouse's rows may be dead-lettered naming it instead (:func:`_complete`).
        settled = all(counts[n] >= expected_good[n] for n in names) and waiting == 0
        if (
            settled
            and _complete(setup, senders, found)
            and _quiet(setup, names, counts, deadline, senders, kusto)
        ):
            progress("every row accounted for; the hosts have scanned and polled again, idle")
            return
        if waiting == 0 and time.monotonic() - changed > 8 and setup.poisoned():
            return  # what is left is in a poison queue, for replay
        time.sleep(1)
    progress("deadline reached before every row was accounted for")


def _activity(setup: Rig, index: int = 0) -> dict[str, Any] | None:
    """devhost ``index``'s activity counters (``/admin/devhost/activity``); None while it is
    down."""
    session = requests.Session()
    session.trust_env = False
    try:
        answer: dict[str, Any] = session.get(
            f"{setup.base_of(index)}/admin/devhost/activity", timeout=10
        ).json()
    except (requests.RequestException, ValueError):
        return None
    return answer


def _kusto_counts(setup: Rig, senders: list[Sender]) -> dict[str, int]:
    """Rows in each routed sender's KQL table, once the queued ingestions waiting now are
    ingested (:meth:`Rig.kusto_flush`)."""
    setup.kusto_flush()
    tables = setup.kusto_tables()
    return {
        s.name: int(tables.get(s.kusto_table, {}).get("rows", 0)) for s in senders if s.kusto_table
    }


def _quiet(
    setup: Rig,
    names: list[str],
    counts: dict[str, int],
    deadline: float,
    senders: Sequence[Sender] = (),
    kusto: Mapping[str, int] | None = None,
) -> bool:
    """Whether nothing can still add a row, shown by every running host doing the work that
    would start one and starting none (instead of waiting a while and hoping).

    A row can only still come from an invocation that is running, a queue message (visible or
    leased: the queue's count includes both, so a killed host's leased messages count), a blob
    version without a receipt, or a POST the emulator has not finished. So: nothing running
    on any host; then each host lists the ingest container twice more and polls the rows queue
    twice more (at least one full look that began after this point), and in that time none
    starts an invocation, the queue stays empty, the emulator has no POST pending and no
    table's row count moved (in the Eventhouse too, ``kusto``: after the queued ingestions
    are flushed, none is left pending). False (and the caller looks again) when anything
    moved, or a host restarted, went down or came up meanwhile."""
    container, queue = setup.env["INGEST_CONTAINER"], setup.env["ROWS_QUEUE"]
    up = setup.running()
    if not up:
        return False  # nothing polls: a message could still be waiting for its lease to end
    before: dict[int, dict[str, Any]] = {}
    for index in up:
        found = _activity(setup, index)
        if found is None or found["running"]:
            return False
        before[index] = found

    def looked_again(index: int, now: dict[str, Any]) -> bool:
        then = before[index]
        scans = int(now["blobScans"].get(container, 0)) - int(then["blobScans"].get(container, 0))
        polls = int(now["queuePolls"].get(queue, 0)) - int(then["queuePolls"].get(queue, 0))
        return scans >= 2 and polls >= 2

    after = dict(before)
    while not all(looked_again(index, after[index]) for index in up):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
        for index in up:
            found = _activity(setup, index)
            if found is None or found["pid"] != before[index]["pid"]:
                return False
            after[index] = found
    if setup.running() != up or setup.waiting():
        return False
    if any(after[i]["started"] != before[i]["started"] or after[i]["running"] for i in up):
        return False
    for name, copies in setup.datasets(names).items():
        if any(d["usage"]["pending"] for d in copies) or _rows_in(copies) != counts[name]:
            return False
    if kusto:
        if _kusto_counts(setup, list(senders)) != dict(kusto):
            return False
        if setup.kusto_state()["pending_messages"]:
            return False
    return True


def _dataset_of(letter: dict[str, Any]) -> str | None:
    target = letter.get("target") or {}
    name = target.get("dataset") if isinstance(target, dict) else None
    return name if isinstance(name, str) else None


def _stored_ids(setup: Rig, copies: list[dict[str, Any]]) -> list[int]:
    """The ids stored in every dataset of one name, dataset after dataset."""
    return [int(r["n"]) for d in copies for r in setup.api.stored_rows(d["id"], TABLE)]


def _complete(setup: Rig, senders: list[Sender], found: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether every row sent is stored or dead-lettered, in Power BI and, for a routed
    dataset, in the Eventhouse (each with the letters naming it or none)."""
    letters = setup.dead_letters()
    for sender in senders:
        sent = set().union(*sender.sent.values())
        stored = set(_stored_ids(setup, found[sender.name]))
        if not sent <= stored | _dead_ids(letters, sender.name):
            return False
        if sender.kusto_table:
            kept = set(setup.kusto_ids(sender.kusto_table))
            if not sent <= kept | _dead_ids(letters, sender.name, EVENTHOUSE):
                return False
    return True


def _for(letter: dict[str, Any], name: str, destination: str | None) -> bool:
    """Whether a dead letter is dataset ``name``'s and counts for ``destination``: it names
    that destination or none (refused before delivery: for every destination). ``None``:
    the letters naming no destination only."""
    if _dataset_of(letter) != name:
        return False
    named = letter.get("destination")
    return named is None or (destination is not None and named == destination)


def _dead_ids(
    letters: list[dict[str, Any]], name: str, destination: str | None = POWERBI
) -> set[int]:
    """The ids of dataset ``name``'s dead-lettered rows that count for ``destination``
    (:func:`_for`)."""
    found = set()
    for letter in letters:
        body = letter.get("row")
        if _for(letter, name, destination) and isinstance(body, dict) and "n" in body:
            found.add(int(body["n"]))
    return found


def _account(
    setup: Rig,
    senders: list[Sender],
    seconds: float,
    phases: Counter[str],
    poisoned: int,
    replayed: int,
    seed: int,
) -> Ledger:
    letters = setup.dead_letters()
    found = setup.datasets([s.name for s in senders])
    ledgers = []
    for sender in senders:
        copies = found[sender.name]
        counters: Counter[str] = Counter()
        stored_ids: list[int] = []
        in_lost: Counter[int] = Counter()
        for dataset in copies:
            counters.update(dataset["counters"])
            mine = [int(r["n"]) for r in setup.api.stored_rows(dataset["id"], TABLE)]
            # A duplicate is explained by a lost answer when one of its copies lies in a batch
            # the emulator stored and then dropped the connection on: the client could not
            # know. Offsets are per dataset.
            lost_positions = {
                p
                for batch in dataset.get("answersLost", [])
                for p in range(batch["offset"], batch["offset"] + batch["count"])
            }
            in_lost.update(n for position, n in enumerate(mine) if position in lost_positions)
            stored_ids += mine
        sent = set().union(*sender.sent.values())
        copies_of = Counter(stored_ids)
        dead = _dead_ids(letters, sender.name)
        explained = sum(min(c - 1, in_lost[n]) for n, c in copies_of.items() if c > 1)
        ledgers.append(
            DatasetLedger(
                name=sender.name,
                dataset_id=",".join(str(d["id"]) for d in copies),
                sent={
                    p: len(sender.sent[p]) for p in (*PATHS, *sorted(set(sender.sent) - set(PATHS)))
                },
                bad=len(sender.bad),
                stored=len(stored_ids),
                distinct=len(copies_of),
                dead_lettered=len(dead),
                dead_letter_lines=sum(1 for x in letters if _for(x, sender.name, POWERBI)),
                duplicates=len(stored_ids) - len(copies_of),
                explained_by_lost_answers=explained,
                lost=len(sent - set(copies_of) - dead),
                phantom=len((set(copies_of) | dead) - sent),
                good_dead_lettered=len(dead - sender.bad),
                bad_stored=len(set(copies_of) & sender.bad),
                injected={k: v for k, v in counters.items() if k.startswith("injected_")},
                avoidable_429s=sum(v for k, v in counters.items() if k.startswith("throttled_")),
                throttled={
                    k.removeprefix("throttled_"): v
                    for k, v in counters.items()
                    if k.startswith("throttled_")
                },
                posts=int(counters.get("posts_accepted", 0)),
                max_copies=max(copies_of.values(), default=0),
                datasets_named=len(copies),
                http_retried=sender.http_retried,
                resent_rows=sender.resent_rows,
                http_cut_rows=sender.http_cut_rows,
                http_failures=list(sender.http_failures),
                refused_letter_lines=sum(1 for x in letters if _for(x, sender.name, None)),
                named_letters=len(dead - _dead_ids(letters, sender.name, None)),
                **_refused_again(letters, sender.name),
            )
        )
    kusto_counters: dict[str, int] = {}
    eventhouse: list[DatasetLedger] = []
    if any(s.kusto_table for s in senders):
        setup.kusto_flush()
        kusto_counters = {k: int(v) for k, v in setup.kusto_state()["counters"].items()}
        tables = setup.kusto_tables()
        for sender in senders:
            if sender.kusto_table:
                eventhouse.append(
                    _eventhouse_ledger(setup, sender, letters, tables.get(sender.kusto_table, {}))
                )
        for d in eventhouse:
            d.failed_ingestions = kusto_counters.get("failed_ingestions", 0)
    ledger = Ledger(
        ledgers,
        seconds,
        phases,
        setup.crashes,
        list(setup.crash_hits),
        setup.emulator_outages,
        poisoned,
        replayed,
        seed,
        eventhouse=eventhouse,
        kusto_counters=kusto_counters,
    )
    return ledger


def _eventhouse_ledger(
    setup: Rig, sender: Sender, letters: list[dict[str, Any]], table: Mapping[str, Any]
) -> DatasetLedger:
    """Where each row of one dataset went in the Eventhouse: its KQL table's ids read back
    in order, duplicates traced to the streaming ingestions whose answer the emulator lost
    after storing (``answersLost``: positions in the table), dead letters naming the
    Eventhouse or none."""
    assert sender.kusto_table is not None
    kept = setup.kusto_ids(sender.kusto_table)
    lost_positions = {
        p
        for batch in table.get("answersLost", [])
        for p in range(int(batch["offset"]), int(batch["offset"]) + int(batch["count"]))
    }
    in_lost = Counter(n for position, n in enumerate(kept) if position in lost_positions)
    copies_of = Counter(kept)
    sent = set().union(*sender.sent.values())
    dead = _dead_ids(letters, sender.name, EVENTHOUSE)
    return DatasetLedger(
        name=sender.name,
        dataset_id=sender.kusto_table,
        sent={p: len(sender.sent[p]) for p in (*PATHS, *sorted(set(sender.sent) - set(PATHS)))},
        bad=len(sender.bad),
        stored=len(kept),
        distinct=len(copies_of),
        dead_lettered=len(dead),
        dead_letter_lines=sum(1 for x in letters if _for(x, sender.name, EVENTHOUSE)),
        duplicates=len(kept) - len(copies_of),
        explained_by_lost_answers=sum(
            min(c - 1, in_lost[n]) for n, c in copies_of.items() if c > 1
        ),
        lost=len(sent - set(copies_of) - dead),
        phantom=len((set(copies_of) | dead) - sent),
        good_dead_lettered=len(dead - sender.bad),
        bad_stored=len(set(copies_of) & sender.bad),
        max_copies=max(copies_of.values(), default=0),
        destination=EVENTHOUSE,
        refused_letter_lines=sum(1 for x in letters if _for(x, sender.name, None)),
        named_letters=len(dead - _dead_ids(letters, sender.name, None)),
        **_refused_again(letters, sender.name),
    )


def _refused_again(letters: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Dataset ``name``'s rows with more than one letter naming no destination: the extra
    letters by the row's path, and up to five ``id (path): source, source`` lines."""
    by_id: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
    for letter in letters:
        body = letter.get("row")
        if _for(letter, name, None) and isinstance(body, dict) and "n" in body:
            by_id[int(body["n"])].append(letter)
    again: Counter[str] = Counter()
    sources: list[str] = []
    for n, found in sorted(by_id.items()):
        if len(found) > 1:
            path = str(found[0]["row"].get("path"))
            again[path] += len(found) - 1
            if len(sources) < 5:
                sources.append(f"{n} ({path}): " + ", ".join(str(x.get("source")) for x in found))
    return {"refused_again": dict(again), "refused_again_sources": sources}
