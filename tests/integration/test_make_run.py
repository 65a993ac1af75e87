"""``make run`` end to end: the printed curl pushes rows, Ctrl-C stops everything.

Runs ``python -m devhost.run --ports auto``: the code path of ``make run``
(``python -m devhost.run``) with free ports, so it never collides with anything.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.emulator.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def descendants(root: int) -> set[int]:
    """Every live process below ``root``, from /proc (no psutil here)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_make_run_serves_the_printed_curl_and_stops_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERBI_", "IDENTITY_"))}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    process = subprocess.Popen(
        [sys.executable, "-m", "devhost.run", "--ports", "auto"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:

        def next_line(deadline: float) -> str:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            assert line is not None, "devhost.run stopped or hung:\n" + "\n".join(output)
            return line

        deadline = time.monotonic() + 90
        while next_line(deadline) != "Try it:":
            pass
        command = next_line(deadline)
        assert command.startswith("curl "), command
        children = {int(pid) for pid in re.findall(r"\bpid (\d+)", "\n".join(output))}
        assert len(children) == 3, output

        pushed = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert json.loads(pushed.stdout)["sent"] == 2

        state_url = next(
            m.group(1)
            for line in output
            if (m := re.search(r"curl -s (http://\S+/_emulator/state)", line))
        )
        session = requests.Session()
        session.trust_env = False
        state = session.get(state_url, timeout=10).json()
        tables = {
            (dataset["name"], table["name"]): table["rows"]
            for dataset in state["datasets"]
            for table in dataset["tables"]
        }
        assert tables == {("SalesMarketing", "Product"): 2}

        # The dashboard is printed, answers HTML, shows the pushed rows and reads dead letters.
        dashboard_url = next(
            m.group(1) for line in output if (m := re.match(r"Dashboard:\s+(http://\S+/)", line))
        )
        page = session.get(dashboard_url, timeout=10)
        assert page.status_code == 200, page.text
        assert page.headers["Content-Type"].startswith("text/html")
        assert "SalesMarketing" in page.text and 'data-rows="2"' in page.text
        assert "Not connected" not in page.text, "make run should connect the dead-letter panel"

        # The emulator's KQL databases take queued ingestion through Azurite: the resources
        # the ingest client asks for are handed out (all five), not refused.
        base = state_url.removesuffix("/_emulator/state")
        kusto = {"audience": "https://kusto.kusto.windows.net"}
        token = session.post(f"{base}/_emulator/token", json=kusto, timeout=10).json()[
            "access_token"
        ]
        resources = session.post(
            f"{base}/v1/rest/mgmt",
            json={"db": "NetDefaultDB", "csl": ".get ingestion resources"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert resources.status_code == 200, resources.text
        kinds = {row[0] for row in resources.json()["Tables"][0]["Rows"]}
        assert "SecuredReadyForAggregationQueue" in kinds and "TempStorage" in kinds, kinds

        everything = children | descendants(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, "\n".join(output)
        assert not [pid for pid in everything if alive(pid)], "\n".join(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
