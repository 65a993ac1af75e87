"""The coalescer joins concurrent pushes for one table into shared deliveries."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from shared.contracts import PushResult, Target
from shared.engine.coalesce import Coalescer
from shared.engine.ingest import Part, PushIncomplete
from shared.errors import TransientError

TARGET = Target("Sales", "Product")


class FakeIngestor:
    """Records each shared delivery; every row is 'sent' unless told to stop after some parts."""

    default_workspace = None

    def __init__(self, deliver_parts: int | None = None, explode: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.deliver_parts = deliver_parts
        self.explode = explode
        self.lock = threading.Lock()

    def push_parts(
        self, target: Target, parts: Sequence[Part], *, deadline: float | None = None
    ) -> list[PushResult]:
        with self.lock:
            self.calls.append([len(list(p.rows)) for p in parts])  # type: ignore[arg-type]
        if self.explode:
            raise RuntimeError("boom")
        results = []
        for number, part in enumerate(parts):
            rows = list(part.rows)
            result = PushResult(target, received=len(rows))
            if self.deliver_parts is None or number < self.deliver_parts:
                result.sent = len(rows)
            else:
                result.stopped, result.cause = "throttled", TransientError("throttled")
            results.append(result)
        return results


def run_together(coalescer: Coalescer, callers: int, rows: int) -> list[Any]:
    """``callers`` invocations arriving at once on one event loop, as the worker runs them."""

    async def call(number: int) -> Any:
        return await coalescer.push(TARGET, [{"n": number}] * rows, source=f"m{number}")

    async def everyone() -> list[Any]:
        return list(
            await asyncio.gather(*(call(n) for n in range(callers)), return_exceptions=True)
        )

    return asyncio.run(everyone())


def test_concurrent_small_pushes_share_one_delivery() -> None:
    """2,000 callers of 5 rows arriving together make one shared delivery per 10,000 rows, and
    each gets back the result for its own 5 rows."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=0.5)  # type: ignore[arg-type]
    results = run_together(coalescer, 2_000, 5)
    assert all(isinstance(r, PushResult) and r.sent == 5 for r in results)
    assert [sum(call) for call in ingestor.calls] == [10_000]


def test_a_full_buffer_is_delivered_without_waiting_for_the_linger() -> None:
    """When the buffer reaches max_rows it is closed and delivered; late callers start another."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=30.0, max_rows=20)  # type: ignore[arg-type]
    results = run_together(coalescer, 8, 5)
    assert all(isinstance(r, PushResult) for r in results)
    assert sorted(sum(call) for call in ingestor.calls) == [20, 20]


def test_different_tables_are_not_mixed() -> None:
    """Pushes for different tables never share a delivery."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=0.05)  # type: ignore[arg-type]

    async def both() -> None:
        await asyncio.gather(
            coalescer.push(TARGET, [{"n": 1}]), coalescer.push(Target("Sales", "Other"), [{"n": 1}])
        )

    asyncio.run(both())
    assert sorted(ingestor.calls) == [[1], [1]]


def test_only_the_callers_whose_rows_were_not_delivered_fail() -> None:
    """A part left undelivered raises PushIncomplete for its caller only."""
    ingestor = FakeIngestor(deliver_parts=3)
    coalescer = Coalescer(ingestor, linger=0.5)  # type: ignore[arg-type]
    results = run_together(coalescer, 6, 1)
    assert sum(isinstance(r, PushResult) for r in results) == 3
    assert sum(isinstance(r, PushIncomplete) for r in results) == 3


def test_an_unexpected_failure_reaches_every_waiting_caller() -> None:
    """If the shared delivery itself blows up, no caller is left waiting or told 'done'."""
    coalescer = Coalescer(FakeIngestor(explode=True), linger=0.2)  # type: ignore[arg-type]
    results = run_together(coalescer, 5, 1)
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_lone_caller_waits_only_the_linger() -> None:
    """A single caller is delivered after the linger with just its rows."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=0.01)  # type: ignore[arg-type]
    result = asyncio.run(coalescer.push(TARGET, [{"n": 1}] * 3))
    assert result.sent == 3 and ingestor.calls == [[3]]


@pytest.mark.parametrize("rows", [0, 1])
def test_empty_and_single_rows(rows: int) -> None:
    """Zero or one row still gets a result."""
    coalescer = Coalescer(FakeIngestor(), linger=0.01)  # type: ignore[arg-type]
    assert asyncio.run(coalescer.push(TARGET, [{"n": 1}] * rows)).received == rows


def test_a_steady_stream_is_held_until_it_pauses_or_max_wait() -> None:
    """Arrivals closer together than the linger keep the buffer open, up to max_wait."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=0.1, max_wait=0.6)  # type: ignore[arg-type]

    async def stream() -> None:
        calls = []
        for n in range(20):  # one arrival every 50 ms for a second
            calls.append(asyncio.ensure_future(coalescer.push(TARGET, [{"n": n}])))
            await asyncio.sleep(0.05)
        await asyncio.gather(*calls)

    asyncio.run(stream())
    # Without the quiet-period rule each 0.1 s linger would flush 2 arrivals (10 deliveries);
    # held to max_wait, a second of arrivals makes two or three.
    assert 2 <= len(ingestor.calls) <= 3
    assert sum(sum(call) for call in ingestor.calls) == 20
