"""The queue path end to end: Azurite's queue, devhost running the queue trigger as the host
does (polling, base64, dequeue count, visibility, poison), the emulator as Power BI."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess
from tests.integration.test_devhost import Devhost, app_environment, start_devhost
from tests.integration.test_replay import replay_poison

COLUMNS = [{"name": "n", "dataType": "Int64"}, {"name": "label", "dataType": "string"}]


@dataclass
class Pipeline:
    """A fresh rows queue, its poison queue and dead-letter container, and devhost on demand."""

    azurite: Azurite
    env: dict[str, str]
    settings: Path
    queue: QueueClient
    poison: QueueClient
    hosts: list[Devhost] = field(default_factory=list)

    def start(self, **overrides: str) -> Devhost:
        host = start_devhost({**self.env, **overrides}, self.settings)
        self.hosts.append(host)
        return host

    def dead_letters(self) -> list[dict[str, Any]]:
        return dead_letter_lines(self.azurite.connection_string, self.env["DEADLETTER_CONTAINER"])


@pytest.fixture
def pipeline(emulator: EmulatorProcess, azurite: Azurite, tmp_path: Path) -> Iterator[Pipeline]:
    name = f"rows{uuid.uuid4().hex[:10]}"
    queue = QueueClient.from_connection_string(azurite.connection_string, name)
    queue.create_queue()
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{name}-poison")
    env = app_environment(emulator, azurite, name)
    env["DEADLETTER_CONTAINER"] = f"dl-{uuid.uuid4().hex[:10]}"
    env["PYTHONUNBUFFERED"] = "1"
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    setup = Pipeline(azurite, env, settings, queue, poison)
    yield setup
    for host in setup.hosts:
        host.stop()


def envelope(dataset: str, start: int, count: int) -> str:
    rows = [{"n": start + i, "label": f"row {start + i}"} for i in range(count)]
    body = {"dataset": dataset, "table": "T", "rows": rows}
    return base64.b64encode(json.dumps(body).encode()).decode()


def send_all(client: QueueClient, messages: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client.send_message, messages))


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what} after {seconds} s")


def stored_count(api: Api, dataset_id: str) -> int:
    return int(api.state(dataset_id)["tables"][0]["rows"])


def queue_empty(queue: QueueClient) -> bool:
    return int(queue.get_queue_properties().approximate_message_count) == 0


def new_dataset(api: Api, prefix: str) -> tuple[str, str]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return name, api.create_dataset([{"name": "T", "columns": COLUMNS}], WORKSPACE_ID, name=name)


def test_2000_messages_of_5_rows_take_four_posts(api: Api, pipeline: Pipeline) -> None:
    """A backlog of 2,000 five-row messages is delivered in exactly 4 POSTs, each row once.

    Why 4: the host fetches 32 messages (batchSize) at a time while no more than 500
    (newBatchThreshold, host.json) are in flight, so it holds at most 532, and stops fetching
    only once more than 500 are in flight. Every message in flight waits in the one buffer of
    its table until the buffer is sent, so a buffer closed by the quiet period holds more than
    500 and at most 532 messages (at most 2,660 rows: one POST). With the linger long enough
    that the host's fetches, 100 ms apart, never leave the buffer quiet for that long, and a
    max wait that never binds, the only flush is "the host stopped fetching": 500 < each of the
    first three buffers <= 532 and the last holds the rest, so 2,000 messages make 4 POSTs."""
    name, dataset_id = new_dataset(api, "Backlog")
    send_all(pipeline.queue, [envelope(name, i * 5, 5) for i in range(2_000)])
    pipeline.start(QUEUE_LINGER_SECONDS="2", QUEUE_MAX_WAIT_SECONDS="120")
    wait_for(lambda: stored_count(api, dataset_id) >= 10_000, 180, "10,000 rows")
    wait_for(lambda: queue_empty(pipeline.queue), 30, "an empty queue")
    stored = sorted(r["n"] for r in api.stored_rows(dataset_id, "T"))
    posts = api.state(dataset_id)["counters"]["posts_accepted"]
    print(f"\n2,000 messages x 5 rows -> {posts} POSTs; {len(stored)} rows stored")
    assert stored == list(range(10_000)), "every row exactly once"
    assert posts == 4


def test_faults_lose_no_row_and_duplicate_only_after_accept_then_fail(
    api: Api, pipeline: Pipeline
) -> None:
    """Through 429s, 503s, dropped connections and a lost answer, every row arrives; rows appear
    twice only because the emulator stored a batch and lost the answer, and that is counted."""
    name, dataset_id = new_dataset(api, "Faults")
    faults = ["throttle", "error_503", "drop", "ok", "accept_then_fail", "throttle", "drop"]
    api.set_faults(script=faults, retry_after=0)
    pipeline.start(AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:01")
    for wave in range(8):  # waves a second apart: several POSTs, so every fault is met
        send_all(pipeline.queue, [envelope(name, (wave * 50 + i) * 2, 2) for i in range(50)])
        time.sleep(1.0)
    wait_for(
        lambda: (
            queue_empty(pipeline.queue)
            and len({r["n"] for r in api.stored_rows(dataset_id, "T")}) == 800
        ),
        180,
        "all 800 rows",
    )
    stored = [r["n"] for r in api.stored_rows(dataset_id, "T")]
    counters = api.state(dataset_id)["counters"]
    injected = {k: v for k, v in counters.items() if k.startswith("injected_")}
    duplicates = len(stored) - len(set(stored))
    print(
        f"\nfaults injected {injected}; POSTs accepted {counters['posts_accepted']}; rows stored "
        f"{len(stored)}, distinct {len(set(stored))}, duplicates {duplicates}"
    )
    assert set(stored) == set(range(800)), "no row lost"
    assert pipeline.dead_letters() == [] and queue_empty_or_missing(pipeline.poison)
    assert injected == {
        "injected_throttle": 2,
        "injected_error_503": 1,
        "injected_drop": 2,
        "injected_accept_then_fail": 1,
    }
    # The only duplicates are the rows of the one batch whose answer was lost, sent again:
    # some rows twice, none three times.
    assert duplicates > 0
    assert max(Counter(stored).values()) == 2
    assert {k: v for k, v in counters.items() if k.startswith("throttled_")} == {}


def queue_empty_or_missing(queue: QueueClient) -> bool:
    try:
        return queue_empty(queue)
    except Exception:
        return True


def test_poison_after_max_tries_then_replay_delivers(api: Api, pipeline: Pipeline) -> None:
    """A message that keeps failing transiently moves to <queue>-poison after maxDequeueCount
    tries; once the cause is gone, replay delivers it. (Every Add Rows answered 500: a failure
    with no pause asked for. A 429 with a Retry-After longer than the redelivery delay would
    hand the message back instead: see test_long_pauses_hand_messages_back_none_is_poisoned.)"""
    name, dataset_id = new_dataset(api, "Poison")
    api.set_faults(error_500=1.0)
    pipeline.queue.send_message(envelope(name, 0, 3))
    pipeline.start(
        QUEUE_TIME_BUDGET_SECONDS="1",
        AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:00",
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3",
    )
    wait_for(lambda: not queue_empty_or_missing(pipeline.poison), 60, "the poison queue")
    assert queue_empty(pipeline.queue) and stored_count(api, dataset_id) == 0
    (poisoned,) = list(pipeline.poison.peek_messages())
    assert poisoned.dequeue_count == 0 or poisoned.content  # moved as it was
    api.session.delete(f"{api.emulator.base}/_emulator/faults")
    assert replay_poison(pipeline.settings, {**pipeline.env})["messagesReplayed"] == 1
    assert sorted(r["n"] for r in api.stored_rows(dataset_id, "T")) == [0, 1, 2]
    assert queue_empty(pipeline.poison)


def test_bad_messages_are_dead_lettered_once(api: Api, pipeline: Pipeline) -> None:
    """Not base64, not JSON, wrong shape, unknown table, over-long strings: each is
    dead-lettered on its first delivery with a reason, and nothing reaches the poison queue."""
    name, dataset_id = new_dataset(api, "Bad")
    good = {"dataset": name, "table": "T", "rows": [{"n": 1}]}
    bad = [
        "%%% definitely not base64 %%%",
        base64.b64encode(b"{ not json").decode(),
        base64.b64encode(json.dumps({"table": "T", "rows": []}).encode()).decode(),
        base64.b64encode(json.dumps({**good, "table": "Nope"}).encode()).decode(),
        base64.b64encode(
            json.dumps({**good, "rows": [{"n": 2, "label": "x" * 4_001}]}).encode()
        ).decode(),
        base64.b64encode(json.dumps(good).encode()).decode(),
    ]
    send_all(pipeline.queue, bad)
    pipeline.start()
    wait_for(lambda: len(pipeline.dead_letters()) >= 5, 60, "five dead letters")
    wait_for(lambda: queue_empty(pipeline.queue), 30, "an empty queue")
    letters = pipeline.dead_letters()
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert len(letters) == 5, reasons
    for expected in (
        "neither base64 nor JSON",
        "not valid JSON",
        "message.dataset",
        "no table 'Nope'",
        "4,000",
    ):
        assert expected in reasons
    assert all("(try 1)" in letter["source"] for letter in letters), "first delivery only"
    assert queue_empty_or_missing(pipeline.poison)
    assert [r["n"] for r in api.stored_rows(dataset_id, "T")] == [1]


def test_long_pauses_hand_messages_back_none_is_poisoned(api: Api, pipeline: Pipeline) -> None:
    """Power BI answers its first two Add Rows 429 with Retry-After: 10, longer than the
    invocation's 3 s budget and than the host's 1 s redelivery delay. Each time, the messages
    are handed back (the same body, invisible for 10 s) and the originals completed, so with
    maxDequeueCount 2 none reaches the poison queue (redelivered instead, each would spend
    its two tries within seconds of the first 429); after the pauses every row arrives once."""
    name, dataset_id = new_dataset(api, "Pause")
    api.set_faults(script=["throttle", "throttle"], retry_after=10)
    send_all(pipeline.queue, [envelope(name, i * 3, 3) for i in range(5)])
    host = pipeline.start(
        QUEUE_TIME_BUDGET_SECONDS="3",
        AzureFunctionsJobHost__extensions__queues__visibilityTimeout="00:00:01",
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="2",
    )
    wait_for(lambda: stored_count(api, dataset_id) >= 15, 120, "15 rows")
    wait_for(lambda: queue_empty(pipeline.queue), 30, "an empty queue")
    stored = [r["n"] for r in api.stored_rows(dataset_id, "T")]
    handed_back = [line for line in host.output if "dequeue count not spent" in line]
    counters = api.state(dataset_id)["counters"]
    print(
        f"\n5 messages, 2 x 429 Retry-After 10 s: {len(handed_back)} hand-backs, "
        f"{counters['posts_accepted']} POSTs accepted, {len(stored)} rows stored"
    )
    assert sorted(stored) == list(range(15)), "every row exactly once"
    assert queue_empty_or_missing(pipeline.poison)
    assert not any("MaxDequeueCount" in line for line in host.output)
    assert counters["injected_throttle"] == 2
    assert len(handed_back) >= 5  # every message at least once (10 when all share each POST)
    assert pipeline.dead_letters() == []
