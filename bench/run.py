"""Run every benchmark figure, print the table and write ``bench/results/latest.json``.

``python -m bench.run [--quick] [--no-1gib] [--only 1]`` (``make bench`` runs the full set).
The full run takes about 20 minutes on two cores (figures 3 and 7, which run several processes
and real-time loads, about 6 of them; figure 8, fifteen pushes of 1,000,000 rows against the
emulator, about 8); ``--quick`` runs smaller versions of the same figures in about ten (the
quota figure cannot be much shorter: each of its two file runs needs an emulated hour, a real
minute); ``--only 1`` runs figure 1 alone (``--only`` may be given more than once).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    coldstart,
    data,
    destinations,
    engine,
    groupcommit,
    latency,
    machine,
    memory,
    quota,
    tables,
)
from bench.report import Figure, summarise_profile, table

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    """How big each figure's run is."""

    engine_rows: int
    engine_repetitions: int
    profile_rows: int
    memory_small: int  # the large memory run is the engine's CSV file (engine_rows)
    memory_1gib: bool
    quota_rows: int
    queue_messages: int
    http_requests: int
    import_repetitions: int
    group_seconds: float  # figure 6: how long the senders send, in each of its two runs
    tables_seconds: float  # figure 7: how long the 50 tables are fed, in each of its five runs
    destinations_rows: int  # figure 8: rows pushed in each of its runs


FULL = Plan(1_000_000, 3, 100_000, 100_000, True, 1_500_000, 2_000, 300, 7, 60.0, 60.0, 1_000_000)
QUICK = Plan(100_000, 3, 50_000, 20_000, False, 1_100_000, 2_000, 100, 3, 20.0, 10.0, 200_000)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs of every figure")
    parser.add_argument("--no-1gib", action="store_true", help="skip the 1 GiB memory run")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument(
        "--only",
        action="append",
        choices=["1", "2", "3", "4", "5", "6", "7", "8"],
        help="run only this figure (repeatable); the default is every figure",
    )
    args = parser.parse_args(argv)
    wanted = set(args.only or ["1", "2", "3", "4", "5", "6", "7", "8"])
    plan = QUICK if args.quick else FULL
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    host = machine.describe()
    began = time.perf_counter()
    figures: list[Figure] = []
    profiles: dict[str, Any] = {}

    def step(title: str) -> None:
        say(f"[{time.perf_counter() - began:6.1f} s] {title}")

    def attempt(number: str, title: str, run: Callable[[], list[Figure]]) -> list[Figure]:
        """One figure's run; a failure is reported as a figure (and the rest still run)."""
        if number not in wanted:
            return []
        step(f"{number}. {title}")
        try:
            done = run()
        except Exception as error:
            say(traceback.format_exc())
            done = [Figure(number, title, f"FAILED: {type(error).__name__}: {error}", "", False)]
        for figure in done:
            say(f"         {figure.id}: {figure.measured} (target {figure.target})")
        figures.extend(done)
        return done

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        step(f"writing {plan.engine_rows:,} rows as CSV and NDJSON")
        files = {
            "csv": data.write_csv(work / "rows.csv", plan.engine_rows),
            "ndjson": data.write_ndjson(work / "rows.ndjson", plan.engine_rows),
        }
        small = {
            "csv": data.head_csv(files["csv"], work / "profile.csv", plan.profile_rows),
            "ndjson": data.write_ndjson(work / "profile.ndjson", plan.profile_rows),
        }
        if "1" in wanted:  # only figure 1 reads the CSV written for an ingest profile
            step(f"writing {plan.engine_rows:,} rows as CSV for an ingest profile")
            files[engine.PROFILED] = data.write_profiled_csv(
                work / "rows-profiled.csv", plan.engine_rows
            )
            small[engine.PROFILED] = data.head_csv(
                files[engine.PROFILED], work / "profile-profiled.csv", plan.profile_rows
            )

        attempt(
            "5",
            "Cold start: python -X importtime -c 'import function_app'",
            lambda: coldstart.run(plan.import_repetitions),
        )
        engine_figures = attempt(
            "1",
            f"Engine throughput vs naive, {plan.engine_rows:,} rows x {plan.engine_repetitions}",
            lambda: engine.run(files, plan.engine_rows, plan.engine_repetitions, small),
        )
        if any(f.met is False and f.details for f in engine_figures):
            step("   target missed: profiling the engine (cProfile)")
            profiles["engine"] = engine.profiles(small, results)

        big = plan.memory_1gib and not args.no_1gib
        memory_small = data.head_csv(files["csv"], work / "memory.csv", plan.memory_small)
        attempt(
            "2",
            f"Blob path peak memory, {plan.memory_small:,} and {plan.engine_rows:,} rows"
            + (" and 1 GiB" if big else ""),
            lambda: [
                memory.run(memory_small, plan.memory_small, files["csv"], plan.engine_rows, big)
            ],
        )
        attempt(
            "3",
            f"Quotas: {plan.quota_rows:,} rows at time scale 60, then the queue path; "
            "1 process, then 3",
            lambda: quota.run(files["csv"], plan.engine_rows, plan.quota_rows, plan.queue_messages),
        )

        def both_destinations() -> list[Figure]:
            rows = plan.destinations_rows
            csv_file = (
                files["csv"]
                if rows == plan.engine_rows
                else data.write_csv(work / "destinations.csv", rows)
            )
            return destinations.run(csv_file, rows)

        attempt(
            "8",
            f"Both destinations: {plan.destinations_rows:,} rows to Power BI, to the Eventhouse "
            "and to both; the Eventhouse's chunk size",
            both_destinations,
        )

    def http() -> list[Figure]:
        figure, summary = latency.run(plan.http_requests, results)
        if summary is not None:
            profiles["http"] = summary
        return [figure]

    attempt("4", f"HTTP function latency, {plan.http_requests} requests of 100 rows", http)
    attempt(
        "6",
        f"Group commit: {groupcommit.SENDERS} senders of one-row requests, "
        f"{plan.group_seconds:.0f} s with and without, real quota time",
        lambda: [groupcommit.run(plan.group_seconds)],
    )
    attempt(
        "7",
        f"Scale-out: 50 tables x {tables.PER_SECOND} one-row messages/s, "
        f"{plan.tables_seconds:.0f} s x 3 runs, real quota time",
        lambda: tables.run(plan.tables_seconds),
    )
    duration = time.perf_counter() - began
    host["load_at_end"] = machine.load()
    figures.sort(key=lambda f: f.id)

    print()
    print(
        f"Python {host['python']} | CPU {host['cpu']} | {host['cores']} cores | "
        f"{host['memory_gb']} GB | {host['os']} | commit {host['commit']}"
    )
    mode = "quick" if args.quick else "full"
    print(
        f"{mode} run, {duration:.0f} s, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
        f"{host['load_at_start']} at the start, {host['load_at_end']} at the end"
    )
    print()
    print(table(figures))
    notes = [f"- {f.id}: {f.details['skipped']}" for f in figures if f.details.get("skipped")]
    if notes:
        print("\n" + "\n".join(notes))
    for kind, summary in profiles.get("engine", {}).items():
        listing = results / f"profile-engine-{kind}.txt"
        label = engine.PROFILED_LABEL if kind == engine.PROFILED else kind.upper()
        print(f"\nEngine profile, {label}, by own time (full listing: {listing}):")
        print(summarise_profile(summary))
    if "http" in profiles:
        print(f"\nHTTP function profile (full listing in {results}/profile-http-add-rows.txt):")
        print(summarise_profile(profiles["http"]))
    output = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "duration_seconds": round(duration, 1),
        "machine": host,
        "plan": plan.__dict__,
        "figures": [f.to_json() for f in figures],
        "profiles": profiles,
    }
    # A partial run does not overwrite the full run's results.
    target = results / (
        "latest.json" if args.only is None else f"latest-only-{'-'.join(sorted(wanted))}.json"
    )
    target.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
