"""The documented worst case of Add Rows attempts (shared/engine/retry.py, README "Queue
ingestion"), driven through the real engine and triggers with every attempt failing retryably.

The destination here fails every Add Rows with a failure the retry policy re-sends in place, in
turn: an expired token (once per run), a 404 for the cached id (once per run: the target is
looked up again), a 429 and a 503 with Retry-After (the governor's pause), a refused connection
(back-off), a 429 again. Clocks are fake: nothing sleeps, and the numbers do not depend on time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import Target
from shared.engine.coalesce import Coalescer
from shared.engine.governor import Governor
from shared.engine.ingest import Ingestor, PushIncomplete
from shared.engine.retry import Deadline, RetryPolicy
from shared.errors import AuthError, NotFoundError, PushError, TransientError
from shared.settings import Settings
from shared.sources.queue_ingest import QueueIngest
from shared.sources.webhook import Webhook, WebRequest
from tests.unit.fakes import FakeClock

ROOT = Path(__file__).resolve().parents[2]
DATASET_ID = "0b7e1a3c-0000-4000-8000-000000000001"
TABLE = {"name": "T", "columns": [{"name": "n", "dataType": "Int64"}]}
#: Today's defaults: the policy's attempts and the host's deliveries of a queue message.
ATTEMPTS = RetryPolicy().max_attempts
DELIVERIES = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]["maxDequeueCount"]


def failures() -> list[PushError]:
    """One run's worth of retryable failures, in the order the destination answers them."""
    return [
        AuthError("token expired", status=403, code="TokenExpired"),
        NotFoundError("no such dataset", status=404),
        TransientError("throttled", status=429, retry_after=0.0),
        TransientError("busy", status=503, retry_after=2.0),
        TransientError("could not connect", maybe_delivered=False),
        TransientError("throttled", status=429, retry_after=1.0),
    ]


class FailingPowerBI:
    """A destination whose lookups work and whose every Add Rows fails retryably."""

    def __init__(self) -> None:
        self.posts = 0
        self.lookups = 0

    def ping(self) -> None:
        return None

    def group_id(self, name: str, *, deadline: Deadline | None = None) -> str:
        raise AssertionError("no workspace by name here")

    def get_datasets(
        self, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        self.lookups += 1
        return [{"id": DATASET_ID, "name": "D"}]

    def create_dataset(
        self,
        definition: dict[str, Any],
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        raise AssertionError("the dataset exists")

    def get_tables(
        self, dataset_id: str, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        return [TABLE]

    def put_table(
        self,
        dataset_id: str,
        table: dict[str, Any],
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        raise AssertionError("no widening here")

    def post_rows(
        self,
        dataset_id: str,
        table: str,
        body: bytes,
        workspace: str | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> None:
        script = failures()
        error = script[self.posts % len(script)]
        self.posts += 1
        raise error


def engine() -> tuple[Ingestor, FailingPowerBI, FakeClock]:
    clock = FakeClock()
    destination = FailingPowerBI()
    ingestor = Ingestor(
        destination,
        governor=Governor(clock=clock, sleep=clock.sleep),
        retry=RetryPolicy(rand=lambda: 0.0),
        clock=clock,
        sleep=clock.sleep,
    )
    return ingestor, destination, clock


def rows(count: int) -> list[dict[str, int]]:
    return [{"n": i} for i in range(count)]


def test_the_script_is_one_run_of_attempts() -> None:
    """The failures above are exactly one run's attempts with today's defaults (6)."""
    assert ATTEMPTS == len(failures()) == 6


@pytest.mark.parametrize("budget", [None, 480.0], ids=["no deadline (CLI)", "blob budget"])
def test_one_push_makes_at_most_max_attempts_posts(budget: float | None) -> None:
    """Per push (a blob invocation, the CLI): A = 6 POSTs of the first batch, then the push
    stops with PushIncomplete; later batches are not attempted."""
    ingestor, destination, clock = engine()
    deadline = None if budget is None else Deadline.after(budget, clock)

    with pytest.raises(PushIncomplete) as stopped:
        ingestor.push(Target("D", "T"), rows(25_000), deadline=deadline)

    assert destination.posts == ATTEMPTS
    assert destination.lookups == 2  # the first one, and one more after the 404
    result = stopped.value.result
    assert (result.sent, result.unsent, result.retries) == (0, 25_000, ATTEMPTS - 1)
    assert not stopped.value.maybe_delivered  # every failure proved nothing was stored


def test_one_queue_message_makes_at_most_deliveries_times_attempts_posts() -> None:
    """Per queue message: A = 6 POSTs per delivery; the host delivers it maxDequeueCount (5)
    times before it goes to the poison queue, so 5 x 6 = 30 POSTs at most."""
    ingestor, destination, clock = engine()

    def unused() -> Any:
        raise AssertionError("no claim check or dead letter here")

    coalescer = Coalescer(ingestor, linger=0.0, clock=clock)
    queue = QueueIngest(lambda: coalescer, unused, unused, time_budget=240.0, clock=clock)
    body = json.dumps({"dataset": "D", "table": "T", "rows": rows(5)}).encode()

    for delivery in range(1, DELIVERIES + 1):
        with pytest.raises(TransientError):
            asyncio.run(queue.handle(body, "m1", dequeue_count=delivery))
        assert destination.posts == delivery * ATTEMPTS

    assert (DELIVERIES, destination.posts) == (5, 30)


def test_one_http_request_makes_at_most_max_attempts_posts() -> None:
    """Per synchronous HTTP request: A = 6 POSTs, then the caller gets 429 with Retry-After;
    the request's later envelopes are not attempted."""
    ingestor, destination, clock = engine()
    web = Webhook(lambda: Settings.from_env({}), lambda: ingestor, lambda: None, clock=clock)  # type: ignore[arg-type,return-value]
    envelopes = [{"dataset": "D", "table": "T", "rows": rows(3)} for _ in range(3)]

    response = web.rows(
        WebRequest("POST", json.dumps(envelopes).encode(), {"content-type": "application/json"})
    )

    assert destination.posts == ATTEMPTS
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    assert response.body["notAttempted"] == 2
