"""A process that starts (scale-out, recycle) facing a table the bundle did not fill.

The table already holds 250,000 rows and its dataset has used the hour's 120 POSTs (a large
table's limit), all sent directly to the emulator, so nothing in the shared pacing record says
so. The fresh devhost learns it from Power BI's first 429 (a Retry-After only an hourly limit
explains), keeps it in the shared record, and hands every queue message back to wait out the
pause instead of spending its tries; synchronous senders get 429 with Retry-After, never a 5xx.
When the hour allows, every row arrives once. The emulator runs 60 times faster than real
time, and its clock is advanced rather than waited for.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from tests.azurite import Azurite
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess, start_emulator
from tests.integration.senders import SyncSenders
from tests.integration.test_devhost import app_environment, start_devhost

pytestmark = pytest.mark.integration

COLUMNS = [{"name": "n", "dataType": "Int64"}, {"name": "label", "dataType": "string"}]


@pytest.fixture
def scaled(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator whose minute lasts one real second."""
    process = start_emulator("--time-scale", "60", tmp=tmp_path)
    yield process
    process.stop()


def emulated_now(api: Api) -> float:
    now: float = api.session.get(f"{api.emulator.base}/_emulator/clock", timeout=10).json()["now"]
    return now


def fill(api: Api, dataset_id: str) -> float:
    """250,000 rows in 25 POSTs, then single rows until the hour's 120 POSTs are used.
    Returns the emulated time of the first POST."""
    first = emulated_now(api)
    for k in range(25):
        rows = [{"n": -1 - (k * 10_000 + i), "label": "filled"} for i in range(10_000)]
        assert api.post_rows(dataset_id, "T", rows, WORKSPACE_ID).status_code == 200
    for k in range(95):
        assert api.post_rows(
            dataset_id, "T", [{"n": -300_000 - k, "label": "filled"}], WORKSPACE_ID
        ).ok
    usage = api.state(dataset_id)["usage"]
    assert usage["postsLastHour"] == 120
    refused = api.post_rows(
        dataset_id, "T", [{"n": -400_000, "label": "one too many"}], WORKSPACE_ID
    )
    assert refused.status_code == 429  # the premise: the hour is used up
    return first


def test_a_fresh_process_meeting_a_full_large_table_waits_for_the_hour(
    scaled: EmulatorProcess, azurite: Azurite, tmp_path: Path
) -> None:
    api = Api(scaled)
    name = f"Big-{uuid.uuid4().hex[:6]}"
    dataset_id = api.create_dataset([{"name": "T", "columns": COLUMNS}], WORKSPACE_ID, name=name)
    first = fill(api, dataset_id)
    # The hour's first POST leaves the window 1,200 emulated seconds (20 real ones) from now.
    api.advance(max(0.0, first + 3600 - 1200 - emulated_now(api)))

    queue_name = f"rows{uuid.uuid4().hex[:10]}"
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    queue.create_queue()
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{queue_name}-poison")
    table = f"pace{uuid.uuid4().hex[:10]}"
    env = app_environment(scaled, azurite, queue_name)
    env.update(
        POWERBI_QUOTA_TIME_SCALE="60",
        # A 20 s pause is not waited out in process: it is handed back, or answered 429.
        POWERBI_MAX_RETRY_AFTER_SECONDS="5",
        QUEUE_TIME_BUDGET_SECONDS="10",
        HTTP_TIME_BUDGET_SECONDS="8",
        PACING_TABLE=table,
        DEADLETTER_CONTAINER=f"dl-{uuid.uuid4().hex[:10]}",
        AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:01",
        # Two tries: a message that spent its tries on the pause would be poisoned in seconds.
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="2",
    )
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    for k in range(5):
        body = {"dataset": name, "table": "T", "rows": [{"n": k * 10 + i} for i in range(10)]}
        queue.send_message(base64.b64encode(json.dumps(body).encode()).decode())
    host = start_devhost(env, settings)
    http = SyncSenders()

    def sender(k: int) -> None:
        rows = [{"n": 1000 + k * 10 + i, "label": "http"} for i in range(5)]
        http.send(f"{host.base}/api/rows", {"dataset": name, "table": "T", "rows": rows})

    try:
        senders = [threading.Thread(target=sender, args=(k,)) for k in range(3)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(timeout=180)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            stored = [r["n"] for r in api.stored_rows(dataset_id, "T") if r["n"] >= 0]
            if len(stored) >= 65:
                break
            time.sleep(1)
        output = list(host.output)
    finally:
        host.stop()
    counters = api.state(dataset_id)["counters"]
    handed_back = [line for line in output if "dequeue count not spent" in line]
    print(
        f"\nfresh process, full large table: HTTP answers {dict(http.statuses)}, "
        f"{len(handed_back)} hand-backs, {counters.get('posts_accepted')} POSTs accepted, "
        f"429s {sum(v for k, v in counters.items() if k.startswith('throttled_'))}"
    )
    assert sorted(stored) == sorted(
        [k * 10 + i for k in range(5) for i in range(10)]
        + [1000 + k * 10 + i for k in range(3) for i in range(5)]
    ), "every row once"
    assert not any(status >= 500 for status in http.statuses), http.statuses
    assert http.statuses[429] > 0  # the senders were told to wait, and when
    assert int(poison.get_queue_properties().approximate_message_count) == 0
    assert not any("MaxDequeueCount" in line for line in output)
    assert handed_back, "the queue messages waited out the pause in the queue"
    # Learned and kept for every process: the shared record says the table is large.
    record = TableClient.from_connection_string(azurite.connection_string, table).get_entity(
        dataset_id, "pace"
    )
    assert record["Large"] is True
