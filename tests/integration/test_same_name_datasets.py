"""Two datasets of one name, made before the bundle starts (an earlier creation race, or a
person): three devhost processes, as three instances, all deliver to the same one, the
smallest id, through the queue and synchronous HTTP; none answers a 5xx or dead-letters."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess
from tests.integration.senders import SyncSenders
from tests.integration.test_devhost import app_environment, start_devhost

pytestmark = pytest.mark.integration

COLUMNS = [{"name": "n", "dataType": "Int64"}, {"name": "label", "dataType": "string"}]


def test_three_processes_deliver_to_the_smallest_id_of_two_same_name_datasets(
    emulator: EmulatorProcess, azurite: Azurite, tmp_path: Path
) -> None:
    api = Api(emulator)
    name = f"Twin-{uuid.uuid4().hex[:6]}"
    ids = sorted(
        api.create_dataset([{"name": "T", "columns": COLUMNS}], WORKSPACE_ID, name=name)
        for _ in range(2)
    )
    queue_name = f"rows{uuid.uuid4().hex[:10]}"
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    queue.create_queue()
    env = app_environment(emulator, azurite, queue_name)
    env.update(
        PACING_TABLE=f"pace{uuid.uuid4().hex[:10]}",
        DEADLETTER_CONTAINER=f"dl-{uuid.uuid4().hex[:10]}",
    )
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    for k in range(30):
        body = {"dataset": name, "table": "T", "rows": [{"n": k * 10 + i} for i in range(10)]}
        queue.send_message(base64.b64encode(json.dumps(body).encode()).decode())
    hosts = [start_devhost(env, settings) for _ in range(3)]
    http = SyncSenders()

    def sender(k: int) -> None:
        rows = [{"n": 1000 + k * 10 + i, "label": "http"} for i in range(10)]
        http.send(f"{hosts[k % 3].base}/api/rows", {"dataset": name, "table": "T", "rows": rows})

    try:
        threads = [threading.Thread(target=sender, args=(k,)) for k in range(9)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        expected = {k * 10 + i for k in range(30) for i in range(10)}
        expected |= {1000 + k * 10 + i for k in range(9) for i in range(10)}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            stored = [r["n"] for r in api.stored_rows(ids[0], "T")]
            if len(stored) >= len(expected):
                break
            time.sleep(0.5)
        outputs = [list(host.output) for host in hosts]
    finally:
        for host in hosts:
            host.stop()
    assert sorted(stored) == sorted(expected), "every row once, all in the smallest id"
    assert api.stored_rows(ids[1], "T") == []
    assert http.statuses == Counter({200: 9}), http.statuses
    assert dead_letter_lines(azurite.connection_string, env["DEADLETTER_CONTAINER"]) == []
    warned = [any(f"2 datasets are named {name!r}" in line for line in out) for out in outputs]
    assert sum(warned) >= 2, "the processes that looked the name up said so"
