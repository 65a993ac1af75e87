"""Shared pacing on a real ledger: Table storage in Azurite, several governors as processes.

Each :class:`SharedGovernor` here stands for one process (its own cache, its own lock); they
share nothing but the Azurite table, as instances share nothing but the storage account. Time
is a fake clock that both use as their wall clock and that moves only when one of them sleeps,
so the windows are checked without waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from collections.abc import Iterator

import pytest

from shared.engine.governor import Quotas
from shared.engine.retry import Deadline
from shared.engine.shared_governor import PaceRecord, SharedGovernor
from shared.errors import LedgerConflict, TransientError
from shared.stores import storage
from shared.stores.pacing import CLIENT_OPTIONS, TableLedger
from tests.azurite import Azurite
from tests.unit.fakes import FakeClock

pytestmark = pytest.mark.integration

REAL_START = 1_800_000_000.0  # a wall-clock time (2027): records hold epoch seconds


def ledger_for(azurite: Azurite, table: str) -> TableLedger:
    env = {"AzureWebJobsStorage": azurite.connection_string}
    return TableLedger(lambda: storage.table_client("AzureWebJobsStorage", table, env))


@pytest.fixture
def table(azurite: Azurite) -> str:
    return f"pace{uuid.uuid4().hex[:10]}"


def governors(
    azurite: Azurite, table: str, count: int, clock: FakeClock, **options: float
) -> list[SharedGovernor]:
    return [
        SharedGovernor(
            ledger_for(azurite, table),
            Quotas(even=True),
            clock=clock,
            sleep=clock.sleep,
            wall=clock,
            **options,  # type: ignore[arg-type]
        )
        for _ in range(count)
    ]


def test_the_ledger_stores_a_record_and_refuses_a_stale_write(azurite: Azurite, table: str) -> None:
    ledger = ledger_for(azurite, table)
    assert ledger.read("ds") == (None, None)  # no table yet: nothing, not an error
    record = PaceRecord(posts=[1.5, 2.0], paused_until=9.0, large=True)
    first = ledger.write("ds", record.to_plain(), None)
    with pytest.raises(LedgerConflict):
        ledger.write("ds", record.to_plain(), None)  # created meanwhile by "another process"
    plain, version = ledger.read("ds")
    assert version == first
    assert PaceRecord.from_plain(plain) == record
    second = ledger.write("ds", PaceRecord(posts=[3.0]).to_plain(), first)
    with pytest.raises(LedgerConflict):
        ledger.write("ds", record.to_plain(), first)  # first is stale now
    assert ledger.read("ds")[1] == second


def test_three_processes_share_one_dataset_s_posts_per_minute(azurite: Azurite, table: str) -> None:
    """Three governors take 150 slots for one dataset in turn: together they keep to 120 POSTs
    in any rolling minute and 0.5 s between POSTs, as one process would."""
    clock = FakeClock(REAL_START)
    three = governors(azurite, table, 3, clock)
    starts: list[float] = []
    for k in range(150):
        with three[k % 3].slot("ds", 10):
            starts.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.5 - 1e-6
    for i, start in enumerate(starts):
        in_minute = [t for t in starts[: i + 1] if t > start - 60]
        assert len(in_minute) <= 120
    # Evenly spread, not bunched: 150 POSTs take about 150 x 0.5 s.
    assert starts[-1] - starts[0] == pytest.approx(149 * 0.5, abs=5)
    assert sum(g.conflicts for g in three) > 0  # they did meet on the record


def test_pending_posts_are_counted_across_processes(azurite: Azurite, table: str) -> None:
    """Five slots held by two processes: a third process's sixth waits, and past its deadline
    gets a TransientError; once one is released it goes."""
    clock = FakeClock(REAL_START)
    a, b, c = governors(azurite, table, 3, clock, poll=0.25)
    with contextlib.ExitStack() as held:
        for k in range(5):
            held.enter_context((a if k % 2 else b).slot("ds", 1))
        with (
            pytest.raises(TransientError, match="already pending"),
            c.slot("ds", 1, deadline=Deadline.after(2.0, clock)),
        ):
            pass
    with c.slot("ds", 1, deadline=Deadline.after(10.0, clock)):
        pass


def test_a_process_that_dies_holding_claims_stalls_others_at_most_claim_ttl(
    azurite: Azurite, table: str
) -> None:
    """A process takes all five slots and is killed (its with-blocks never end). Another one's
    POST waits for the claims to expire, claim_ttl after they were taken, and not longer."""
    clock = FakeClock(REAL_START)
    dead, alive = governors(azurite, table, 2, clock, claim_ttl=35.0, poll=0.25)
    abandoned = [dead.slot("ds", 1) for _ in range(5)]
    for held in abandoned:
        held.__enter__()  # never exited: the process died
    taken = clock.now
    with alive.slot("ds", 1):
        waited = clock.now - taken
    assert 35.0 - 2.5 <= waited <= 35.0 + 0.5  # the last claim was taken 2 s after the first


def test_a_pause_seen_by_one_process_holds_every_process(azurite: Azurite, table: str) -> None:
    clock = FakeClock(REAL_START)
    a, b = governors(azurite, table, 2, clock)
    with a.slot("ds", 1):
        pass
    a.pause("ds", 40.0)
    with pytest.raises(TransientError) as refused, b.slot("ds", 1, max_pause=30.0):
        pass
    assert refused.value.retry_after == pytest.approx(40.0, abs=0.5)
    before = clock.now
    with b.slot("ds", 1, max_pause=300.0):
        assert clock.now - before == pytest.approx(40.0, abs=0.5)


def _hourly(governor: SharedGovernor, clock: FakeClock, posts: int) -> list[float]:
    starts = []
    for _ in range(posts):
        with governor.slot("ds", 1):
            starts.append(clock.now)
    return starts


def test_a_long_pause_teaches_every_process_that_a_table_is_large(
    azurite: Azurite, table: str
) -> None:
    """Power BI answers 3,540 s: only an hourly limit explains it, and the rows this hour are
    few, so a table holds 250,000 rows. Another process (and a fresh one, started after)
    then keeps to 120 POSTs an hour."""
    clock = FakeClock(REAL_START)
    a, b = governors(azurite, table, 2, clock)
    a.pause("ds", 3540.0)
    fresh = governors(azurite, table, 1, clock)[0]
    assert fresh.wait_needed("ds", 1) == pytest.approx(3540.0, abs=1)
    clock.sleep(3541)
    starts = _hourly(b, clock, 120) + _hourly(fresh, clock, 1)
    assert starts[-1] - starts[0] >= 3600 - 1e-6  # the 121st waited for the hour


def test_rows_sent_by_several_processes_count_toward_the_large_table_switch(
    azurite: Azurite, table: str
) -> None:
    clock = FakeClock(REAL_START)
    a, b = governors(azurite, table, 2, clock)
    for k in range(25):  # 250,000 rows, half each
        with (a if k % 2 else b).slot("ds", 10_000, table="Events"):
            pass
    clock.sleep(3600)  # the rows leave the hour; the table stays large
    starts = _hourly(a, clock, 121)
    assert starts[-1] - starts[0] >= 3600 - 1e-6


def test_a_failed_post_does_not_count_toward_the_table_s_rows(azurite: Azurite, table: str) -> None:
    clock = FakeClock(REAL_START)
    (a,) = governors(azurite, table, 1, clock)
    for _ in range(30):
        with contextlib.suppress(RuntimeError), a.slot("ds", 10_000, table="Events"):
            raise RuntimeError("the POST failed")
    plain, _ = a.ledger.read("ds")
    record = PaceRecord.from_plain(plain)
    assert record.table_rows.get("Events", 0) == 0 and not record.large
    assert not record.claims  # released all the same


@contextlib.contextmanager
def _closed_port() -> Iterator[str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )


def test_unreachable_storage_falls_back_to_a_local_share_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No ledger: the governor warns once and paces on a quarter of each quota (30 POSTs a
    minute, 2 s apart), never raising; it tries the ledger again after retry_after."""
    clock = FakeClock(REAL_START)
    with _closed_port() as connection:
        env = {"Dead": connection}
        ledger = TableLedger(lambda: storage.table_client("Dead", "pacing", env, **CLIENT_OPTIONS))
        governor = SharedGovernor(
            ledger,
            Quotas(even=True),
            fallback_share=4,
            retry_after=30.0,
            clock=clock,
            sleep=clock.sleep,
            wall=clock,
        )
        caplog.set_level(logging.WARNING)
        starts = []
        for _ in range(31):
            with governor.slot("ds", 1):
                starts.append(clock.now)
    warnings = [r for r in caplog.records if "ledger unavailable" in r.getMessage()]
    assert 1 <= len(warnings) <= 3  # once per retry_after window, not once per POST
    assert "1/4" in warnings[0].getMessage()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 2.0 - 1e-6  # 30 a minute, evenly
