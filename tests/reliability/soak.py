"""``make soak``: the reliability scenarios, bigger and repeated for a configurable time.

Rounds cycle through four scenarios, each on its own emulator and devhost (one Azurite for the
whole soak): **faults** (100,000 rows into 5 datasets through HTTP, the queue and blobs while
the fault plan cycles through 429 storms, 500/503 bursts, latency, drops and lost answers),
**crashes** (the same load, devhost SIGKILLed three times mid-flight), **outage** (the
emulator down for at least 30 s, until every waiting message has reached the poison queue, with
maxDequeueCount 3; then replay) and **scale-out** (test_scale_out.py's load with a quarter of
the rows, on five devhost processes, one SIGKILLed mid-run and left down: the others carry on
within :data:`CARRY_ON_BOUND`). Each round prints its accounting table; at the end the
hostile-input property tests run with more examples, and a summary is printed and written to
``tests/reliability/results/latest.md`` (and ``.json``).

    python -m tests.reliability.soak --minutes 10

Exits 1 if any row was lost or any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.azurite import Azurite, start_azurite
from tests.emulator.conftest import REPO
from tests.reliability.checks import (
    check_crashes,
    check_faults,
    check_long_outage,
    check_scale_out,
)
from tests.reliability.harness import (
    CRASH_BACKGROUND,
    Ledger,
    LoadPlan,
    rig,
    rig_with,
    run_scenario,
)
from tests.reliability.test_fault_accounting import crash_plan
from tests.reliability.test_outage import LONG_OUTAGE, long_outage
from tests.reliability.test_scale_out import SETTINGS, SLOW_POWERBI, TIME_SCALE, scale_out_plan

RESULTS = REPO / "tests" / "reliability" / "results"
SCENARIOS = ("faults", "crashes", "outage", "scale-out")
#: devhost processes of a scale-out round (issue 16: "the same with five processes").
SCALE_OUT_HOSTS = 5
#: Seconds within which the surviving hosts must finish an invocation after one is killed:
#: the longest a dead process's pacing claims hold a dataset, POWERBI_TIMEOUT_SECONDS (30)
#: + 5 (shared/runtime.py build_governor; README "Scaling out").
CARRY_ON_BOUND = 35.0


@dataclass
class Round:
    scenario: str
    ledger: Ledger | None
    failure: str | None


CRASHES = 3


def run_round(scenario: str, rows: int, workdir: Path, azurite: Azurite) -> Ledger:
    """One round of ``scenario``, checked exactly as its test checks it (AssertionError)."""
    if scenario == "faults":
        with rig(workdir, azurite) as setup:
            ledger = run_scenario(
                setup, LoadPlan(rows=rows), phase_seconds=3, duration=45, progress=_say
            )
        print(ledger.table(), flush=True)
        check_faults(ledger)
        return ledger
    if scenario == "crashes":
        with rig(workdir, azurite) as setup:
            ledger = run_scenario(
                setup,
                crash_plan(rows),
                phases=CRASH_BACKGROUND,
                duration=40,
                crashes=CRASHES,
                crash_window=35,
                progress=_say,
            )
        print(ledger.table(), flush=True)
        check_crashes(ledger, CRASHES)
        return ledger
    if scenario == "scale-out":
        with rig_with(
            workdir,
            azurite,
            hosts=SCALE_OUT_HOSTS,
            start=False,
            time_scale=TIME_SCALE,
            settings=SETTINGS,
        ) as setup:
            ledger = run_scenario(
                setup,
                scale_out_plan(max(4_000, rows // 4)),
                phases=SLOW_POWERBI,
                phase_seconds=60,
                duration=40,
                crashes=1,
                crash_window=30,
                crash_restart=False,
                timeout=600,
                progress=_say,
            )
        print(ledger.table(), flush=True)
        check_scale_out(ledger, crashes=1, carry_on_within=CARRY_ON_BOUND)
        return ledger
    plan = LoadPlan(datasets=2, rows=max(2, rows // 5), http_share=0.3, queue_share=0.7)
    with rig(workdir, azurite, **LONG_OUTAGE) as setup:
        ledger = long_outage(setup, plan, at_least=30, progress=_say)
        output = setup.output()
    print(ledger.table(), flush=True)
    check_long_outage(ledger, output, tries=3)
    return ledger


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


def hostile_inputs(scale: int) -> tuple[Counter[str], bool]:
    """Run the hostile-input property tests with ``scale`` times the examples; count them."""
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "tried.json"
        env = {
            **os.environ,
            "HOSTILE_EXAMPLES_SCALE": str(scale),
            "HOSTILE_COUNT_FILE": str(counts),
        }
        suites = ["tests/reliability/test_hostile_input.py", "tests/reliability/test_security.py"]
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        print("  " + (done.stdout.strip().splitlines() or ["(no output)"])[-1], flush=True)
        tried = Counter(json.loads(counts.read_text())) if counts.exists() else Counter()
        return tried, done.returncode == 0


def summary(rounds: list[Round], tried: Counter[str], hostile_ok: bool, minutes: float) -> str:
    """The soak's table, as Markdown."""
    lines = [
        "| scenario | rounds | rows sent | stored (distinct) | dead-lettered | duplicates "
        "(after lost answers / other re-sends) | poisoned → replayed | crashes | lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        mine = [r.ledger for r in rounds if r.scenario == scenario and r.ledger is not None]
        if not mine:
            continue
        explained = sum(x.total("explained_by_lost_answers") for x in mine)
        duplicates = sum(x.total("duplicates") for x in mine)
        lines.append(
            f"| {scenario} | {len(mine)} | {sum(x.sent for x in mine):,} | "
            f"{sum(x.total('distinct') for x in mine):,} | "
            f"{sum(x.total('dead_lettered') for x in mine):,} | "
            f"{duplicates:,} ({explained:,} / {duplicates - explained:,}) | "
            f"{sum(x.poisoned for x in mine):,} → {sum(x.replayed for x in mine):,} | "
            f"{sum(x.crashes for x in mine)} | **{sum(x.total('lost') for x in mine)}** |"
        )
    done = [r.ledger for r in rounds if r.ledger is not None]
    injected: Counter[str] = Counter()
    cut: Counter[str] = Counter()
    for ledger in done:
        injected.update(ledger.injected)
        cut.update(ledger.cut_short())
    sent = sum(x.sent for x in done)
    lost = sum(x.total("lost") for x in done)
    failures = [f"{r.scenario}: {r.failure}" for r in rounds if r.failure]
    seconds = sum(x.seconds for x in done)
    lines += [
        "",
        f"- **Load held:** {sent:,} rows in {len(rounds)} rounds over {minutes:.1f} minutes "
        f"({sent / max(seconds, 1) * 60:,.0f} rows/min while rounds ran), 5 datasets a round "
        "(2 in outage rounds), through HTTP (queue mode), the rows queue and blobs (CSV and "
        "gzipped NDJSON) at once.",
        "- **Faults injected:** "
        + (", ".join(f"{k.removeprefix('injected_')} {v:,}" for k, v in injected.items()) or "none")
        + ".",
        f"- **Crashes survived:** {sum(x.crashes for x in done)} SIGKILLs of the host, "
        "cutting short "
        + (", ".join(f"{v:,} {k}" for k, v in sorted(cut.items())) or "nothing")
        + " invocations; "
        f"{sum(x.emulator_outages for x in done)} Power BI outages of 30 s or more "
        "(until every waiting message had gone to the poison queue; replay recovered them).",
        _scale_out_line([r.ledger for r in rounds if r.scenario == "scale-out" and r.ledger]),
        "- **Hostile inputs tried:** "
        f"{sum(tried.values()):,} ("
        + ", ".join(f"{k} {v:,}" for k, v in sorted(tried.items()))
        + f"), {'all' if hostile_ok else 'NOT all'} answered with a 4xx or a dead letter.",
        f"- **Rows lost: {lost}.** Checks failed: {len(failures)}"
        + (": " + "; ".join(failures) if failures else "."),
    ]
    return "\n".join(lines)


def _scale_out_line(ledgers: list[Ledger]) -> str:
    """The scale-out rounds in one bullet: hosts, datasets per name, avoidable 429s and how
    soon the survivors carried on after a kill."""
    if not ledgers:
        return "- **Scale-out:** no round ran."
    most = max(d.datasets_named for x in ledgers for d in x.datasets)
    carried = [s for x in ledgers for s in x.carried_on]
    shown = ", ".join("never" if s is None else f"{s:.1f} s" for s in carried) or "-"
    return (
        f"- **Scale-out:** {len(ledgers)} rounds of {max(x.hosts for x in ledgers)} devhost "
        f"processes on one queue (one SIGKILLed and left down a round): at most {most} "
        f"dataset(s) of one name, {sum(x.total('avoidable_429s') for x in ledgers):,} 429s "
        f"the client could have avoided; the others carried on after {shown} "
        f"(bound {CARRY_ON_BOUND:g} s)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10"))
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows per round")
    parser.add_argument("--hostile-scale", type=int, default=5, help="x the tests' examples")
    args = parser.parse_args(argv)
    # Stopped with SIGTERM (a CI timeout, `kill`), unwind like Ctrl-C: every round's finally
    # blocks stop their emulator, devhost and Azurite instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    deadline = started + args.minutes * 60
    azurite = start_azurite()
    rounds: list[Round] = []
    work = RESULTS / "work"  # each round's devhost and emulator logs, for a post-mortem
    shutil.rmtree(work, ignore_errors=True)
    try:
        k = 0
        while time.monotonic() < deadline or not rounds:
            scenario = SCENARIOS[k % len(SCENARIOS)]
            print(f"round {k + 1}: {scenario}", flush=True)
            workdir = work / f"round{k + 1}-{scenario}"
            ledger: Ledger | None = None
            failure = None
            try:
                ledger = run_round(scenario, args.rows, workdir, azurite)
            except Exception as error:  # a failed check or a broken round: recorded, go on
                failure = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                print(f"  FAILED: {failure}", flush=True)
            finally:
                (workdir / "emulator.sqlite").unlink(missing_ok=True)  # the rows: large
            rounds.append(Round(scenario, ledger, failure))
            k += 1
    finally:
        azurite.stop()
    print("hostile inputs:", flush=True)
    tried, hostile_ok = hostile_inputs(args.hostile_scale)
    minutes = (time.monotonic() - started) / 60
    table = summary(rounds, tried, hostile_ok, minutes)
    machine = f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"Soak of {stamp} ({machine}; `make soak SOAK_MINUTES={args.minutes:g}`):\n\n{table}\n"
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(
        json.dumps(
            {
                "when": stamp,
                "machine": machine,
                "minutes": round(minutes, 1),
                "rounds": [
                    {
                        "scenario": r.scenario,
                        "failure": r.failure,
                        **(r.ledger.to_json() if r.ledger is not None else {}),
                    }
                    for r in rounds
                ],
                "hostile_inputs": dict(tried),
                "hostile_ok": hostile_ok,
            },
            indent=2,
        )
    )
    ok = hostile_ok and all(r.failure is None for r in rounds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
