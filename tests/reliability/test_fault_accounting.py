"""Fault accounting: the HTTP (queue mode), queue and blob paths at once, into five datasets,
while the emulator throttles, fails, stalls, drops connections and loses answers; then every
row is counted. Rows stored + rows dead-lettered = rows sent, per dataset; duplicates only
where the emulator stored a batch and lost its answer, and every one of them traced to such a
batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.reliability.harness import CRASH_BACKGROUND, KINDS, Ledger, LoadPlan, rig, run_scenario

pytestmark = pytest.mark.integration


def check_accounting(ledger: Ledger) -> None:
    """What every scenario must show: no row lost, none invented, bad rows dead-lettered and
    only they, good rows stored and only they."""
    for d in ledger.datasets:
        assert d.lost == 0, f"{d.name}: {d.lost} rows neither stored nor dead-lettered"
        assert d.phantom == 0, f"{d.name}: {d.phantom} rows nobody sent"
        assert d.distinct + d.dead_lettered == d.sent_total, d
        assert d.dead_lettered == d.bad > 0, d
        assert d.good_dead_lettered == 0 and d.bad_stored == 0, d


def test_100000_rows_through_every_fault_lose_nothing(tmp_path: Path, azurite: Azurite) -> None:
    plan = LoadPlan(datasets=5, rows=100_000)
    with rig(tmp_path, azurite) as setup:
        ledger = run_scenario(
            setup, plan, phase_seconds=2.5, duration=40, timeout=420, progress=print
        )
    print("\n" + ledger.table())
    check_accounting(ledger)
    assert ledger.sent == 100_000
    for d in ledger.datasets:
        assert all(d.sent[path] > 0 for path in ("http", "queue", "blob")), d.sent
        # Every duplicate is a copy of a row stored in a batch whose answer was lost.
        assert d.unexplained_duplicates == 0, d
        assert d.avoidable_429s == 0, f"{d.name} hit a limit the client could have avoided"
    injected = ledger.injected
    for kind in KINDS:
        assert injected[f"injected_{kind}"] > 0, f"no {kind} was injected: {dict(injected)}"
    # A message whose batch keeps failing can reach the poison queue (visibility is 1 s here,
    # 30 s deployed); replay must then have delivered it, which the accounting above shows.
    assert ledger.replayed == ledger.poisoned


def test_sigkill_during_queue_and_blob_processing_loses_nothing(
    tmp_path: Path, azurite: Azurite
) -> None:
    """devhost is killed three times at random moments, the first two while a blob and queue
    messages are being processed, and restarted; the same accounting holds. Duplicates beyond
    lost answers are the crashes' re-sends (a redelivered message, a blob resumed from its
    checkpoint), counted; no row is lost."""
    # One bigger file per dataset (two POSTs), so a crash can land in the middle of it.
    plan = LoadPlan(
        datasets=5, rows=100_000, http_share=0.15, queue_share=0.25, blob_files_per_dataset=1
    )
    with rig(tmp_path, azurite) as setup:
        ledger = run_scenario(
            setup,
            plan,
            phases=CRASH_BACKGROUND,
            duration=30,
            crashes=3,
            crash_window=25,
            timeout=420,
            progress=print,
        )
    print("\n" + ledger.table())
    check_accounting(ledger)
    assert ledger.crashes == 3
    cut = ledger.cut_short()
    assert cut["ingest_blob"] > 0 and cut["ingest_queue"] > 0, ledger.crash_hits
    for d in ledger.datasets:
        # A row is stored at most once, plus once per crash re-send and per lost answer.
        assert d.max_copies <= 1 + ledger.crashes + d.injected.get("injected_accept_then_fail", 0)
