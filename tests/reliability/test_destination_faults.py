"""Fault accounting with faults on one destination only (issue 18, "What must be shown").

Two datasets, each routed to Power BI and to the Eventhouse (``datasets/<name>.destinations.json``
in the rig's DATASETS_DIR; the emulator serves both surfaces, its KQL database's queued
ingestion going through the rig's Azurite), loaded through HTTP in queue mode, the rows queue
and blobs at once, every 250th row invalid. Then every row is counted in each destination by
its id:

- faults on the Eventhouse only (Kusto's 429, 500, 503, dropped connections, stored-then-500,
  latency): Power BI holds exactly the valid rows, once each, as it would alone; the
  Eventhouse holds every valid row or has it dead-lettered naming it, duplicates only where
  Kusto stored a streaming ingestion and lost its answer;
- faults on Power BI only (the fault cycle of test_fault_accounting.py): the mirror image.

In both, each invalid row is dead-lettered exactly once, naming no destination.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.faults import KINDS as FAULT_KINDS
from tests.azurite import Azurite
from tests.reliability.checks import check_destination_faults
from tests.reliability.harness import (
    EVENTHOUSE,
    FAULT_CYCLE,
    POWERBI,
    FaultPhase,
    Ledger,
    LoadPlan,
    rig_with,
    run_scenario,
)

pytestmark = pytest.mark.integration

DATABASE = "Reliability"
#: 40,000 rows in two datasets: every path carries thousands of rows in each, and a run stays
#: near two minutes on the shared two-core machine.
PLAN = LoadPlan(datasets=2, rows=40_000, destinations=(POWERBI, EVENTHOUSE))

#: The Kusto surface's fault cycle, phase after phase like Power BI's (harness.FAULT_CYCLE).
#: ``all_operations``: commands (``.create-merge``, ``.get ingestion resources``) and queries
#: fail too, not only streaming ingestion, whose failures the managed client mostly hands to
#: queued ingestion. Kusto's injected 429 carries no Retry-After: the service documents none
#: (emulator/kusto.py), so ``retry_after`` would not change it.
KUSTO_CYCLE = (
    FaultPhase("429 storm", {"throttle": 0.7, "all_operations": True}, EVENTHOUSE),
    FaultPhase("calm", {}, EVENTHOUSE),
    FaultPhase(
        "500/503 burst", {"error_500": 0.2, "error_503": 0.3, "all_operations": True}, EVENTHOUSE
    ),
    FaultPhase("latency spikes", {"latency_ms": 1500, "latency_rate": 0.4}, EVENTHOUSE),
    FaultPhase("dropped connections", {"drop": 0.3, "all_operations": True}, EVENTHOUSE),
    # Streaming only: a stored batch answered 500 is what can duplicate rows.
    FaultPhase("accept then fail", {"accept_then_fail": 0.25}, EVENTHOUSE),
    FaultPhase(
        "everything at once",
        {
            "throttle": 0.1,
            "error_500": 0.05,
            "error_503": 0.05,
            "drop": 0.05,
            "accept_then_fail": 0.05,
            "latency_ms": 800,
            "latency_rate": 0.2,
            "all_operations": True,
        },
        EVENTHOUSE,
    ),
)


def certain(cycle: tuple[FaultPhase, ...]) -> tuple[FaultPhase, ...]:
    """``cycle`` with each phase's fault kinds also scripted once at its start (a plan's
    ``script`` is consumed first, one entry per request: emulator/faults.py). With 40,000 rows
    a phase sees a few requests only, and a kind left to its rate alone was sometimes never
    drawn: a fresh-clone run met no accept_then_fail on Power BI, and the check that every
    kind was met failed for want of a fault, not for a lost row."""
    return tuple(
        FaultPhase(
            phase.name,
            {**phase.plan, "script": [kind for kind in FAULT_KINDS if phase.plan.get(kind)]},
            phase.target,
        )
        for phase in cycle
    )


def run(tmp_path: Path, azurite: Azurite, phases: tuple[FaultPhase, ...]) -> Ledger:
    """The load with ``phases``, devhost started once the definitions and routing files are
    written; the per-destination ledger printed."""
    with rig_with(tmp_path, azurite, start=False, kusto_database=DATABASE) as setup:
        ledger = run_scenario(
            setup, PLAN, phases=phases, phase_seconds=2.5, duration=30, timeout=240, progress=print
        )
    print("\n" + ledger.destination_table())
    return ledger


def test_faults_on_the_eventhouse_leave_power_bi_as_alone_and_lose_nothing(
    tmp_path: Path, azurite: Azurite
) -> None:
    ledger = run(tmp_path, azurite, certain(KUSTO_CYCLE))
    assert ledger.sent == 40_000
    check_destination_faults(ledger, faulted=EVENTHOUSE)


def test_faults_on_power_bi_leave_the_eventhouse_as_alone_and_lose_nothing(
    tmp_path: Path, azurite: Azurite
) -> None:
    ledger = run(tmp_path, azurite, certain(FAULT_CYCLE))
    assert ledger.sent == 40_000
    check_destination_faults(ledger, faulted=POWERBI)
