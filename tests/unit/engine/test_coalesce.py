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
from shared.engine.profile import TableProfile, compile_profile
from shared.engine.retry import Deadline
from shared.engine.schema import Column, TableSchema
from shared.errors import TransientError

TARGET = Target("Sales", "Product")


class FakeIngestor:
    """Records each shared delivery; every row is 'sent' unless told to stop after some parts."""

    default_workspace = None

    def __init__(self, deliver_parts: int | None = None, explode: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.deadlines: list[Deadline | None] = []
        self.profiles: list[TableProfile | None] = []
        self.deliver_parts = deliver_parts
        self.explode = explode
        self.lock = threading.Lock()

    def cached(self, target: Target) -> None:
        """Never looked up here: the coalescer does not wait for a POST slot."""
        return None

    def push_parts(
        self,
        target: Target,
        parts: Sequence[Part],
        *,
        deadline: Deadline | None = None,
        profile: TableProfile | None = None,
    ) -> list[PushResult]:
        with self.lock:
            self.calls.append([len(list(p.rows)) for p in parts])  # type: ignore[arg-type]
            self.deadlines.append(deadline)
            self.profiles.append(profile)
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


def test_rows_under_different_profiles_are_not_mixed() -> None:
    """Two messages for one table, each with its own profile override, are delivered apart,
    each under its own profile; two under the same (declared) profile share a delivery."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=0.05)  # type: ignore[arg-type]
    schema = TableSchema("Product", (Column("n", "Int64"),))
    declared, own = compile_profile(schema, {}, "a"), compile_profile(schema, {}, "b")

    async def together() -> None:
        await asyncio.gather(
            coalescer.push(TARGET, [{"n": 1}], profile=declared),
            coalescer.push(TARGET, [{"n": 2}], profile=declared),
            coalescer.push(TARGET, [{"n": 3}], profile=own),
        )

    asyncio.run(together())
    assert sorted(ingestor.calls) == [[1], [1, 1]]
    assert sorted(map(id, ingestor.profiles)) == sorted([id(declared), id(own)])


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


class VirtualTime:
    """Time for one event loop that moves only when the test moves it: the coalescer's clock
    and its ``wait`` (an event, or a timeout on this clock). No wall clock is involved, so the
    outcome cannot depend on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._made = 0

    def clock(self) -> float:
        return self.now

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Return when ``event`` is set or the test has moved time ``seconds`` on."""
        if event.is_set():
            return
        due: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._made += 1
        entry = (self.now + seconds, self._made, due)
        self._sleepers.append(entry)
        setter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({due, setter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            setter.cancel()
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking each waiter that falls due, in order, and
        letting it run until it waits again."""
        end = self.now + seconds
        while self._sleepers and min(self._sleepers)[0] <= end:
            entry = min(self._sleepers)
            self._sleepers.remove(entry)
            self.now = entry[0]
            entry[2].set_result(None)
            await settle()
        self.now = end


async def settle() -> None:
    """Let every task that can run do so until it waits (a fixed number of loop turns: no task
    here does I/O before it waits, so this does not depend on time)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_steady_stream_is_held_until_it_pauses_or_max_wait() -> None:
    """Arrivals closer together than the linger keep the buffer open, up to max_wait: with one
    arrival a second for 20 s, a linger of 2 s and a max wait of 12 s, the first buffer is sent
    at 12 s with the 12 arrivals of 0..11 s, and the second, opened at 12 s, once the stream
    has been quiet for 2 s, with the other 8. (Without the quiet-period rule each linger would
    send 2 arrivals: 10 deliveries.)"""
    ingestor = FakeIngestor()
    time = VirtualTime()
    coalescer = Coalescer(
        ingestor,  # type: ignore[arg-type]
        linger=2,
        max_wait=12,
        clock=time.clock,
        wait=time.wait,
    )

    async def stream() -> None:
        calls = []
        for n in range(20):
            calls.append(asyncio.ensure_future(coalescer.push(TARGET, [{"n": n}])))
            await settle()
            await time.advance(1)
        await time.advance(2)  # the quiet period after the last arrival
        results = await asyncio.gather(*calls)
        assert [r.sent for r in results] == [1] * 20

    asyncio.run(stream())
    assert ingestor.calls == [[1] * 12, [1] * 8]


def test_a_shared_delivery_keeps_to_the_earliest_deadline() -> None:
    """Callers with different time budgets share a POST: it keeps to the one that ends first,
    so no caller's budget is overrun."""
    ingestor = FakeIngestor()
    coalescer = Coalescer(ingestor, linger=0.05)  # type: ignore[arg-type]
    later, sooner = Deadline(100.0), Deadline(50.0)

    async def both() -> None:
        await asyncio.gather(
            coalescer.push(TARGET, [{"n": 1}], deadline=later),
            coalescer.push(TARGET, [{"n": 2}], deadline=sooner),
            coalescer.push(TARGET, [{"n": 3}]),
        )

    asyncio.run(both())
    assert ingestor.calls == [[1, 1, 1]] and ingestor.deadlines == [sooner]


class _SlotGovernor:
    """The dataset's next POST slot is 0.3 s away."""

    def wait_needed(self, dataset: str, rows: int) -> float:
        return 0.3


class _ResolvedIngestor(FakeIngestor):
    """A target already looked up, whose dataset's next POST must wait for its slot."""

    governor = _SlotGovernor()

    def cached(self, target: Target) -> Any:  # type: ignore[override]
        return type("Resolved", (), {"dataset_id": "d"})()


def test_a_buffer_stays_open_until_the_next_post_slot() -> None:
    """After the linger, the buffer waits for the dataset's next POST slot with its door open:
    a caller arriving meanwhile rides this POST, not the one after."""
    ingestor = _ResolvedIngestor()
    coalescer = Coalescer(ingestor, linger=0.01, max_wait=1.0)  # type: ignore[arg-type]

    async def late() -> Any:
        await asyncio.sleep(0.1)  # after the linger, within the slot's wait
        return await coalescer.push(TARGET, [{"n": 2}])

    async def both() -> None:
        await asyncio.gather(coalescer.push(TARGET, [{"n": 1}]), late())

    asyncio.run(both())
    assert ingestor.calls == [[1, 1]]
