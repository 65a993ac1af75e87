"""Outage: Power BI (the emulator) goes away, connections are refused, then it comes back.

Messages wait in the queue and are retried; a message goes to the poison queue only after the
configured number of tries; ``python -m shared replay poison`` delivers what reached it; at the
end every row sent is stored or dead-lettered, per dataset. The emulator keeps its datasets in
SQLite across the outage, as the real service would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.reliability.checks import check_long_outage, check_short_outage
from tests.reliability.harness import Ledger, LoadPlan, Rig, rig, run_scenario

pytestmark = pytest.mark.integration

#: The queue and HTTP paths: a blob that meets an outage is handed on to the queue (covered in
#: tests/integration/test_blob_pipeline.py); here the point is messages waiting.
PLAN = LoadPlan(datasets=2, rows=20_000, http_share=0.3, queue_share=0.7)


def test_a_short_outage_is_waited_out_with_nothing_poisoned(
    tmp_path: Path, azurite: Azurite
) -> None:
    """Down for 8 s, within what five tries of a 10 s budget ride out: messages wait, no
    message reaches the poison queue, every row arrives."""
    with rig(tmp_path, azurite) as setup:
        ledger = run_scenario(
            setup, PLAN, phases=(), duration=10, outage_at=3, outage_seconds=8, progress=print
        )
        output = setup.output()
    print("\n" + ledger.table())
    check_short_outage(ledger, output)


def all_poisoned(setup: Rig) -> bool:
    """Every message not delivered before the outage has gone to the poison queue."""
    return setup.waiting() == 0 and setup.poisoned() > 0


#: Settings of the long outage: few tries, a short budget.
LONG_OUTAGE = {
    "QUEUE_TIME_BUDGET_SECONDS": "2",
    "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "3",
}


def long_outage(
    setup: Rig, plan: LoadPlan, at_least: float, progress: Callable[[str], None]
) -> Ledger:
    """Power BI down from the start, for ``at_least`` seconds and until every waiting message
    has gone to the poison queue; then back, and what was poisoned replayed."""
    return run_scenario(
        setup,
        plan,
        phases=(),
        duration=10,
        outage_at=0,
        outage_seconds=at_least,
        outage_until=all_poisoned,
        progress=progress,
    )


def test_a_long_outage_poisons_only_after_the_configured_tries_and_replay_recovers(
    tmp_path: Path, azurite: Azurite
) -> None:
    """Down from the start (before the app has a token or has looked a dataset up) for at
    least 20 s, until every waiting message has gone to the poison queue, with
    maxDequeueCount 3 and a 2 s budget: each went after exactly 3 tries, none was handled
    twice; once Power BI is back, replay delivers them and nothing is lost."""
    with rig(tmp_path, azurite, **LONG_OUTAGE) as setup:
        ledger = long_outage(setup, PLAN, at_least=20, progress=print)
        output = setup.output()
    print("\n" + ledger.table())
    tries = check_long_outage(ledger, output, tries=3)
    print(f"failed tries by number: {dict(tries)}; {ledger.poisoned} poisoned and replayed")
