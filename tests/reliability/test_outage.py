"""Outage: Power BI (the emulator) goes away, connections are refused, then it comes back.

Messages wait in the queue and are retried; a message goes to the poison queue only after the
configured number of tries; ``python -m shared replay poison`` delivers what reached it; at the
end every row sent is stored or dead-lettered, per dataset. The emulator keeps its datasets in
SQLite across the outage, as the real service would.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.reliability.harness import LoadPlan, Rig, rig, run_scenario
from tests.reliability.test_fault_accounting import check_accounting

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
        output = setup.log + (setup.host.output if setup.host else [])
    print("\n" + ledger.table())
    check_accounting(ledger)
    assert ledger.total("duplicates") == 0
    assert ledger.emulator_outages == 1
    assert ledger.poisoned == 0
    failed = [line for line in output if "Executed 'Functions.ingest_queue' (Failed" in line]
    retried = [line for line in output if "could not connect" in line]
    print(
        f"{len(retried)} log lines of Add Rows retried for want of a connection; "
        f"{len(failed)} invocations failed and were redelivered; "
        f"{ledger.total('posts')} POSTs accepted after the emulator came back"
    )
    assert retried, "the outage was met by the queue path"
    # The restarted emulator counts afresh: rows arrived after the outage.
    assert ledger.total("posts") > 0


def all_poisoned(setup: Rig) -> bool:
    """Every message not delivered before the outage has gone to the poison queue."""
    return setup.waiting() == 0 and setup.poisoned() > 0


def test_a_long_outage_poisons_only_after_the_configured_tries_and_replay_recovers(
    tmp_path: Path, azurite: Azurite
) -> None:
    """Down from the start (before the app has a token) for at least 20 s, until every waiting
    message has gone to the poison queue, with maxDequeueCount 3 and a 2 s budget: each went
    after exactly 3 tries, none was handled twice; once Power BI is back, replay delivers them
    and nothing is lost."""
    with rig(
        tmp_path,
        azurite,
        QUEUE_TIME_BUDGET_SECONDS="2",
        AzureFunctionsJobHost__extensions__queues__maxDequeueCount="3",
    ) as setup:
        ledger = run_scenario(
            setup,
            PLAN,
            phases=(),
            duration=10,
            outage_at=0.5,  # before the app has a token or has looked its datasets up
            outage_seconds=20,
            outage_until=all_poisoned,
            progress=print,
        )
        output = setup.log + (setup.host.output if setup.host else [])
    print("\n" + ledger.table())
    check_accounting(ledger)
    # No answer was lost and nothing crashed: a duplicate here would be a message handled
    # twice (an invocation outliving its lease).
    assert ledger.total("duplicates") == 0
    assert ledger.poisoned > 0 and ledger.replayed == ledger.poisoned
    moved = [line for line in output if "reached MaxDequeueCount of 3" in line]
    assert len(moved) == ledger.poisoned
    # Each failed try logs the message and the try's number: the poisoned ones failed a third
    # time and never a fourth.
    failed = re.findall(r"queue message (\S+) \(try (\d+)\): not delivered yet", "\n".join(output))
    third = {message for message, attempt in failed if attempt == "3"}
    print(
        f"failed tries by number: {dict(Counter(attempt for _, attempt in failed))}; "
        f"{ledger.poisoned} messages poisoned and replayed"
    )
    assert max(int(attempt) for _, attempt in failed) == 3
    assert len(third) == ledger.poisoned
