"""Fault accounting: the HTTP (queue mode), queue and blob paths at once, into five datasets,
while the emulator throttles, fails, stalls, drops connections and loses answers; then every
row is counted. Rows stored + rows dead-lettered = rows sent, per dataset; duplicates only
where the emulator stored a batch and lost its answer, and every one of them traced to such a
batch. Then the same load while devhost is SIGKILLed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.reliability.checks import check_crashes, check_faults
from tests.reliability.harness import CRASH_BACKGROUND, LoadPlan, rig, run_scenario

pytestmark = pytest.mark.integration


def crash_plan(rows: int = 100_000) -> LoadPlan:
    """The crash scenario's load: one bigger file per dataset (two POSTs), so a crash can land
    in the middle of it."""
    return LoadPlan(rows=rows, http_share=0.15, queue_share=0.25, blob_files_per_dataset=1)


def test_100000_rows_through_every_fault_lose_nothing(tmp_path: Path, azurite: Azurite) -> None:
    plan = LoadPlan(datasets=5, rows=100_000)
    with rig(tmp_path, azurite) as setup:
        ledger = run_scenario(
            setup, plan, phase_seconds=2.5, duration=40, timeout=420, progress=print
        )
    print("\n" + ledger.table())
    assert ledger.sent == 100_000
    check_faults(ledger)


def test_sigkill_during_queue_and_blob_processing_loses_nothing(
    tmp_path: Path, azurite: Azurite
) -> None:
    """devhost is killed three times at random moments, the first two while a blob and queue
    messages are being processed, and restarted; the same accounting holds. Duplicates beyond
    lost answers are the crashes' re-sends (a redelivered message, a blob resumed from its
    checkpoint), counted; no row is lost."""
    with rig(tmp_path, azurite) as setup:
        ledger = run_scenario(
            setup,
            crash_plan(),
            phases=CRASH_BACKGROUND,
            duration=30,
            crashes=3,
            crash_window=25,
            timeout=420,
            progress=print,
        )
    print("\n" + ledger.table())
    check_crashes(ledger, crashes=3)
