"""``make run``: the whole app on one machine, with nothing from Azure.

``python -m devhost.run [--ports fixed|auto]`` starts three child processes and wires them up:

1. **Azurite** (``node_modules/.bin/azurite``, in memory) on 10000/10001/10002, the default ports,
   so ``UseDevelopmentStorage=true`` also reaches it;
2. the **Power BI emulator** (``python -m emulator``) on 5300 with a workspace named ``Local``,
   its live dashboard at ``/`` showing the app's dead letters in Azurite;
3. **devhost** (``python -m devhost``) on 7071, with the app settings pointing at both: Power BI
   is the emulator, reached with a managed identity (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``),
   storage is Azurite (an explicit connection string), the rows queue is ``rows``.

Settings from ``local.settings.json`` (or the example) still apply to everything else; the Power
BI, identity and storage settings above always point at the local servers.

It waits until each one is ready, prints the URLs (the dashboard's first) and a curl command to
try, then echoes the children's output. Ctrl-C (SIGINT) or SIGTERM stops all three and exits 0;
if one dies, it says which and exits 1. Each child runs in its own process group, is stopped with
its whole group, and on Linux is also told to exit if this process dies (``PR_SET_PDEATHSIG``),
so none is left behind.
``--ports auto`` lets every server pick a free port (tests use it, so they never collide).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from devhost.host import DevhostError, find_settings_file, load_settings

REPO = Path(__file__).resolve().parents[1]
#: Azurite's well-known development account (public and documented: not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
WORKSPACE_NAME = "Local"
WORKSPACE_ID = "7c0ca1e5-0000-4000-8000-000000007071"
#: The emulator's default managed-identity header (a local stand-in, not a secret).
IDENTITY_HEADER = "emulator-identity-header"
ROWS_QUEUE = "rows"
FIXED_PORTS = {"blob": 10000, "queue": 10001, "table": 10002, "emulator": 5300, "devhost": 7071}
STARTUP_SECONDS = 60.0
STOP_SECONDS = 10.0

#: Two rows of the seed's SalesMarketing/Product table (datasets/SalesMarketing.json).
SAMPLE_ROWS: list[dict[str, Any]] = [
    {
        "ProductID": 1,
        "Manufacturer": "Contoso",
        "Category": "Electronics",
        "Segment": "Consumer",
        "Product": "Laptop 15",
        "IsCompete": True,
    },
    {
        "ProductID": 2,
        "Manufacturer": "Fabrikam",
        "Category": "Electronics",
        "Segment": "Enterprise",
        "Product": "Dock 4K",
        "IsCompete": False,
    },
]

_AZURITE_READY = re.compile(r"Azurite (\w+) service is successfully listening at (\S+)")
_EMULATOR_READY = re.compile(r"API:\s+(http://\S+)/v1\.0/myorg")
_DEVHOST_READY = re.compile(r"Host ready: (http://\S+)")


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that makes the child get SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


class ChildFailed(Exception):
    """A child exited, or did not become ready in time."""

    def __init__(self, child: Child, problem: str) -> None:
        super().__init__(f"{child.name} {problem}")
        self.child = child


class Child:
    """One server process: its own process group, its output kept and (once ready) echoed."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._echo = False
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        threading.Thread(target=self._read, name=f"{name}-output", daemon=True).start()

    @property
    def echoing(self) -> bool:
        return self._echo

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            with self._lock:
                self.lines.append(line)
                if self._echo:
                    print(f"[{self.name}] {line}", flush=True)
                else:
                    self._pending.put(line)
        self._pending.put(None)

    def wait_for(
        self,
        pattern: re.Pattern[str],
        deadline: float,
        stop: threading.Event,
        seen: list[str] | None = None,
    ) -> re.Match[str]:
        """The first line matching ``pattern`` (lines before it go to ``seen``)."""
        while True:
            if stop.is_set():
                raise Interrupted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildFailed(self, f"was not ready after {STARTUP_SECONDS:.0f} s")
            try:
                line = self._pending.get(timeout=min(0.2, remaining))
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait()
                raise ChildFailed(self, f"exited during startup (exit code {code})")
            if seen is not None:
                seen.append(line)
            match = pattern.search(line)
            if match:
                return match

    def echo(self) -> None:
        """From now on, print its output prefixed with its name."""
        with self._lock:
            while True:
                try:
                    line = self._pending.get_nowait()
                except queue.Empty:
                    break
                if line is not None:
                    print(f"[{self.name}] {line}", flush=True)
            self._echo = True

    def terminate(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def reap(self, timeout: float) -> None:
        """Wait for it to exit (SIGKILL its group after ``timeout``), then clear any stragglers."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything it left in its group


def stop_all(children: list[Child]) -> None:
    """SIGTERM every child's group at once (newest first), then wait for each."""
    for child in reversed(children):
        child.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for child in reversed(children):
        child.reap(max(0.1, deadline - time.monotonic()))


def connection_string(blob: str, queue_url: str, table: str | None) -> str:
    parts = [
        "DefaultEndpointsProtocol=http",
        f"AccountName={ACCOUNT}",
        f"AccountKey={KEY}",
        f"BlobEndpoint={blob}/{ACCOUNT}",
        f"QueueEndpoint={queue_url}/{ACCOUNT}",
    ]
    if table:
        parts.append(f"TableEndpoint={table}/{ACCOUNT}")
    return ";".join(parts) + ";"


def devhost_environment(emulator: str, storage: str) -> dict[str, str]:
    """The app settings that point the function app at the local servers."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POWERBI_", "IDENTITY_", "MSI_"))
    }
    loopback = "127.0.0.1,localhost"
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = f"{env[name]},{loopback}" if env.get(name) else loopback
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "POWERBI_CLOUD": "Public",
            "POWERBI_API_URL": emulator,
            "POWERBI_RESOURCE": "",
            "POWERBI_AUTH": "managed_identity",
            # Empty values hide anything local.settings.json says about a real tenant.
            "POWERBI_CLIENT_ID": "",
            "POWERBI_TENANT_ID": "",
            "POWERBI_CLIENT_SECRET": "",
            "POWERBI_CLIENT_CERTIFICATE_PATH": "",
            "POWERBI_AUTHORITY_URL": "",
            "POWERBI_STATIC_TOKEN": "",
            "POWERBI_CA_BUNDLE": "",
            "POWERBI_WORKSPACE_ID": "",
            "POWERBI_WORKSPACE_NAME": WORKSPACE_NAME,
            "IDENTITY_ENDPOINT": f"{emulator}/msi/token",
            "IDENTITY_HEADER": IDENTITY_HEADER,
            "AzureWebJobsStorage": storage,
            "ROWS_QUEUE": ROWS_QUEUE,
        }
    )
    return env


def dead_letter_container() -> str | None:
    """The container the app dead-letters to, when it is Azurite (``AzureWebJobsStorage``).

    Read as the app reads it: the environment, then ``local.settings.json`` (or the example).
    ``None`` when ``DEADLETTER_CONNECTION`` names another account: the dashboard then says
    it is not connected rather than show an empty container that is not the app's.
    """
    settings: dict[str, str] = {k: v for k, v in os.environ.items() if k.startswith("DEADLETTER_")}
    path = find_settings_file(REPO)
    if path is not None:
        with contextlib.suppress(DevhostError):
            load_settings(path, settings)
    if (settings.get("DEADLETTER_CONNECTION") or "AzureWebJobsStorage") != "AzureWebJobsStorage":
        return None
    return settings.get("DEADLETTER_CONTAINER") or "deadletter"


def try_it_command(functions_url: str) -> str:
    """One line of shell: push the two sample rows through the Power BI-compatible route."""
    url = f"{functions_url}/api/datasets/SalesMarketing/tables/Product/rows"
    body = json.dumps({"rows": SAMPLE_ROWS})
    return (
        f"curl -sS --fail-with-body -w '\\n' -X POST {url} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.run",
        description="Run the function app locally: Azurite + Power BI emulator + devhost.",
    )
    parser.add_argument(
        "--ports",
        choices=("fixed", "auto"),
        default="fixed",
        help="fixed: Azurite 10000-10002, emulator 5300, functions 7071 (default); "
        "auto: free ports for everything",
    )
    return parser.parse_args(argv)


def start(args: argparse.Namespace, stop: threading.Event, children: list[Child]) -> None:
    """Start the three servers, wait for each, print how to use them."""
    ports = FIXED_PORTS if args.ports == "fixed" else dict.fromkeys(FIXED_PORTS, 0)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    deadline = time.monotonic() + STARTUP_SECONDS
    azurite = Child(
        "azurite",
        [
            str(REPO / "node_modules" / ".bin" / "azurite"),
            *("--blobHost", "127.0.0.1", "--blobPort", str(ports["blob"])),
            *("--queueHost", "127.0.0.1", "--queuePort", str(ports["queue"])),
            *("--tableHost", "127.0.0.1", "--tablePort", str(ports["table"])),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ],
        child_env,
    )
    children.append(azurite)
    storage: dict[str, str] = {}
    while not {"blob", "queue", "table"} <= set(storage):
        match = azurite.wait_for(_AZURITE_READY, deadline, stop)
        storage[match.group(1).lower()] = match.group(2).rstrip("/")
    storage_connection = connection_string(storage["blob"], storage["queue"], storage["table"])
    # The emulator starts once Azurite's ports are known, so that its dashboard can be told
    # where the app's dead letters are (through the environment: the string holds a key).
    container = dead_letter_container()
    emulator = Child(
        "emulator",
        [
            sys.executable,
            *("-m", "emulator", "--host", "127.0.0.1", "--port", str(ports["emulator"])),
            *("--workspace", f"{WORKSPACE_NAME}={WORKSPACE_ID}"),
            *("--identity-header", IDENTITY_HEADER),
            *(("--deadletter-container", container) if container else ()),
        ],
        {
            **child_env,
            "EMULATOR_DEADLETTER_CONNECTION": storage_connection if container else "",
            # Queued ingestion into the emulator's KQL databases goes through Azurite's queues
            # and containers, as ADX's goes through its own storage (README, the emulator).
            "EMULATOR_KUSTO_STORAGE_CONNECTION": storage_connection,
        },
    )
    children.append(emulator)
    emulator_url = emulator.wait_for(_EMULATOR_READY, deadline, stop).group(1)
    emulator.wait_for(re.compile(r"Time scale:"), deadline, stop)  # the banner's last line

    devhost = Child(
        "devhost",
        [sys.executable, "-m", "devhost", "--host", "127.0.0.1", "--port", str(ports["devhost"])],
        devhost_environment(emulator_url, storage_connection),
    )
    children.append(devhost)
    banner: list[str] = []
    functions_url = devhost.wait_for(_DEVHOST_READY, deadline, stop, banner).group(1)
    listing = banner[next((i for i, line in enumerate(banner) if line == "Functions:"), 0) : -1]

    lines = [
        "",
        "Local run is ready: functions (devhost) + Power BI emulator + Azurite. "
        "Ctrl-C stops all three.",
        "",
        f"Dashboard:          {emulator_url}/   (live: datasets, rows, quotas, dead letters)",
        "",
        *listing,
        "",
        f"Power BI emulator:  {emulator_url}/v1.0/myorg   "
        f"(workspace {WORKSPACE_NAME} = {WORKSPACE_ID}; managed identity)",
        f"Emulator state:     {emulator_url}/_emulator/state",
        f"Azurite blob:       {storage['blob']}/{ACCOUNT}",
        f"Azurite queue:      {storage['queue']}/{ACCOUNT}   (rows queue: {ROWS_QUEUE})",
        "Processes:          "
        + ", ".join(f"{child.name} pid {child.process.pid}" for child in children),
        "",
        "Try it:",
        try_it_command(functions_url),
        f"Then watch them arrive on the dashboard ({emulator_url}/), or read them:",
        f"curl -s {emulator_url}/_emulator/state",
        "",
    ]
    print("\n".join(lines), flush=True)
    for child in children:
        child.echo()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REPO / "node_modules" / ".bin" / "azurite").exists():
        print(
            "devhost.run: node_modules/.bin/azurite is missing: run `make setup` "
            "(npm ci installs Azurite)",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    try:
        start(args, stop, children)
        while not stop.wait(0.5):
            for child in children:
                code = child.process.poll()
                if code is not None:
                    raise ChildFailed(child, f"exited unexpectedly (exit code {code})")
        print("Stopping devhost, emulator and Azurite...", flush=True)
        return 0
    except Interrupted:
        print("Interrupted during startup; stopping.", flush=True)
        return 0
    except ChildFailed as failed:
        print(f"devhost.run: {failed}", file=sys.stderr, flush=True)
        if not failed.child.echoing:
            print(f"Last output of {failed.child.name}:", file=sys.stderr)
            for line in list(failed.child.lines)[-30:]:
                print(f"  {line}", file=sys.stderr)
        if args.ports == "fixed":
            print(
                "If a port is busy (Azurite 10000-10002, emulator 5300, functions 7071), stop "
                "what holds it or run `python -m devhost.run --ports auto`.",
                file=sys.stderr,
            )
        sys.stderr.flush()
        return 1
    finally:
        stop_all(children)
        if children:
            print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
