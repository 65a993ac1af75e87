"""Scale-out (issue 16): three devhost processes, as the instances of a scaled-out function app,
on one Azurite (one rows queue, the same containers) and one emulator whose quota windows run
60 times faster (``--time-scale 60``; the app paces on the same clock,
``POWERBI_QUOTA_TIME_SCALE=60``).

The datasets do not exist beforehand: their definitions are in DATASETS_DIR, so every host
meets them missing and would create them. A backlog of 2,000 five-row messages for one dataset
waits on the queue before the hosts start; then synchronous HTTP senders (spread over the hosts,
round robin, retrying 429/503 after Retry-After) and queue senders load that dataset and three
more. Power BI's per-dataset quotas (120 POSTs a minute, 5 pending, 1,000,000 rows an hour) are
the emulator's: every ``throttled_*`` counter is a 429 the hosts together could have avoided.

The second test drains the same backlog with one host and with three, and compares the POSTs
per 1,000 messages: sharing the queue must not cost more than twice the POSTs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.reliability.checks import check_accounting, check_scale_out
from tests.reliability.harness import FaultPhase, Ledger, LoadPlan, rig_with, run_scenario

pytestmark = pytest.mark.integration

#: The emulator's (and the app's) quota clock: a minute of quota lasts a second.
TIME_SCALE = 60.0
HOSTS = 3
BACKLOG = 2_000
#: Power BI documents no Add Rows latency; the emulator answers in milliseconds, which would
#: leave its limit of 5 pending POSTs per dataset out of reach. An assumed 300 ms for every
#: POST keeps POSTs pending long enough for the hosts' POSTs to overlap.
SLOW_POWERBI = (FaultPhase("300 ms answers", {"latency_ms": 300, "latency_rate": 1.0}),)
#: devhost takes one queue lease per message and does not renew it (the real host renews it
#: while the invocation runs); the rig's 20 s, short so that a crash scenario's messages come
#: back soon, is shorter than a host holding ~530 fetched messages (batchSize 32 while at most
#: newBatchThreshold 500 are in flight, host.json) takes to finish them on a busy machine: the
#: lease ran out and another host ran the message again (seen: 178 duplicate rows). Nothing
#: is killed here, so a long lease costs nothing.
SETTINGS = {"DEVHOST_QUEUE_LEASE_SECONDS": "120"}


def scale_out_plan(rows: int = 12_000, backlog: int = BACKLOG) -> LoadPlan:
    """Four datasets made by the bundle; the first also gets the ``backlog`` (five-row
    messages); half the rows by synchronous HTTP (20 a request), half by the queue (10 a
    message); every 250th row invalid. Sixteen senders at once, all on the first dataset,
    then on the other three."""
    return LoadPlan(
        datasets=4,
        rows=rows,
        http_share=0.5,
        queue_share=0.5,
        http_rows_per_request=20,
        queue_rows_per_message=10,
        http_mode="sync",
        backlog_messages=backlog,
        backlog_rows_per_message=5,
        bundle_creates=True,
        senders=16,
        one_dataset_first=True,
    )


def test_three_hosts_share_each_datasets_quota_and_identity(
    tmp_path: Path, azurite: Azurite
) -> None:
    with rig_with(
        tmp_path, azurite, hosts=HOSTS, start=False, time_scale=TIME_SCALE, settings=SETTINGS
    ) as setup:
        ledger = run_scenario(
            setup,
            scale_out_plan(),
            phases=SLOW_POWERBI,
            phase_seconds=60,
            duration=5,
            timeout=150,
            progress=print,
        )
    print("\n" + ledger.table())
    assert ledger.hosts == HOSTS
    check_scale_out(ledger)


def backlog_plan() -> LoadPlan:
    """Only the backlog: 2,000 five-row messages for one dataset made by the bundle."""
    return LoadPlan(datasets=1, rows=0, backlog_messages=BACKLOG, bundle_creates=True)


def per_1000_messages(ledger: Ledger) -> float:
    return ledger.total("posts") * 1_000 / BACKLOG


def test_three_hosts_drain_a_backlog_in_at_most_twice_the_posts_of_one(
    tmp_path: Path, azurite: Azurite
) -> None:
    with rig_with(
        tmp_path, azurite, hosts=HOSTS, start=False, time_scale=TIME_SCALE, settings=SETTINGS
    ) as setup:
        one = run_scenario(
            setup,
            backlog_plan(),
            phases=SLOW_POWERBI,
            phase_seconds=60,
            duration=0,
            hosts=1,
            timeout=150,
            progress=print,
        )
        setup.stop_hosts()
        three = run_scenario(
            setup,
            backlog_plan(),
            phases=SLOW_POWERBI,
            phase_seconds=60,
            duration=0,
            hosts=HOSTS,
            timeout=150,
            progress=print,
        )
    print("\none host:\n" + one.table() + "\n\nthree hosts:\n" + three.table())
    alone, shared = per_1000_messages(one), per_1000_messages(three)
    print(f"\nPOSTs per 1,000 messages: one host {alone:.1f}, three hosts {shared:.1f}")
    check_accounting(one)
    check_accounting(three)
    assert three.hosts == HOSTS
    assert shared <= 2 * alone, f"three hosts {shared:.1f} POSTs per 1,000, one {alone:.1f}"
