"""Figure 8's pure helpers (bench/destinations.py): the routing file each run writes is one the
runtime accepts and routes as the run says, counters are read as differences, rates are scaled
to a million rows, and the best chunk size is picked as documented."""

from __future__ import annotations

import pytest

from bench import data, destinations
from bench.destinations import (
    Outcome,
    Plan,
    best_chunk,
    counter_delta,
    figures,
    per_million,
    routing_body,
)
from shared.engine.ingest import EVENTHOUSE_CHUNK_ROWS
from shared.engine.routing import EVENTHOUSE, POWERBI, parse_routing
from shared.engine.schema import DatasetDefinition
from shared.settings import Settings


@pytest.mark.parametrize("route", [(EVENTHOUSE,), (POWERBI, EVENTHOUSE)])
def test_the_routing_file_of_a_run_is_accepted_and_routes_the_bench_table(
    route: tuple[str, ...],
) -> None:
    definition = DatasetDefinition.from_body(data.definition("Fig8"))
    settings = Settings.from_env(
        {"EVENTHOUSE_URI": "http://127.0.0.1:1", "EVENTHOUSE_DATABASE": "Other"}
    )
    routing = parse_routing(
        routing_body(route, "F8_ab_"), "Fig8.destinations.json", definition, settings
    )
    assert routing.destinations(data.TABLE) == route
    assert routing.eventhouse is not None
    # The run's own database and prefix, not the settings' default database.
    assert routing.eventhouse.database == destinations.DATABASE
    assert routing.eventhouse.table(data.TABLE) == f"F8_ab_{data.TABLE}"


def test_per_million_scales_a_count_to_a_million_rows() -> None:
    assert per_million(100, 1_000_000) == 100
    assert per_million(20, 200_000) == 100
    assert per_million(3, 30_000) == 100
    with pytest.raises(ValueError, match="no rows"):
        per_million(1, 0)


def test_counter_delta_is_what_each_counter_grew_by_and_zero_when_never_counted() -> None:
    before = {"streaming_requests": 4, "rows_ingested": 40, "queries": 9}
    after = {"streaming_requests": 7, "rows_ingested": 70, "queries": 12, "queued_messages": 2}
    delta = counter_delta(before, after)
    assert delta["streaming_requests"] == 3
    assert delta["rows_ingested"] == 30
    assert delta["queued_messages"] == 2
    assert delta["failed_ingestions"] == 0
    assert "queries" not in delta  # only the counters a run is read from


def test_best_chunk_is_the_fastest_and_the_smaller_on_a_tie() -> None:
    assert best_chunk({2_500: 10.0, 10_000: 30.0, 40_000: 20.0}) == 10_000
    assert best_chunk({40_000: 30.0, 10_000: 30.0}) == 10_000
    with pytest.raises(ValueError, match="no chunk sizes"):
        best_chunk({})


def test_the_runs_compare_the_engine_chunk_size_with_a_smaller_and_a_larger_one() -> None:
    ids = [plan.id for plan in destinations.PLANS]
    assert ids[:3] == ["8a", "8b", "8c"]
    assert destinations.PLANS[1].chunk_rows == EVENTHOUSE_CHUNK_ROWS
    sweep = sorted(p.chunk_rows for p in destinations.PLANS if p.destinations == (EVENTHOUSE,))
    assert sweep == sorted(destinations.CHUNK_SIZES)
    assert sweep[0] < EVENTHOUSE_CHUNK_ROWS < sweep[-1]


def _outcome(plan: Plan, wall: float, posts: int, calls: int, rows: int = 200_000) -> Outcome:
    outcome = Outcome(plan, rows, wall, wall / 2)
    if POWERBI in plan.destinations:
        outcome.powerbi = {"posts_accepted": posts, "rows_accepted": rows}
        outcome.arrived[POWERBI] = rows
    if EVENTHOUSE in plan.destinations:
        outcome.kusto = {"streaming_requests": calls, "queued_messages": 0}
        outcome.arrived[EVENTHOUSE] = rows
    return outcome


def test_figures_hold_8c_to_half_8a_rows_per_cpu_second_and_to_8a_posts() -> None:
    plans = {p.id: p for p in destinations.PLANS[:3]}
    runs = [
        _outcome(plans["8a"], 4.0, 20, 0),
        _outcome(plans["8b"], 5.0, 0, 20),
        _outcome(plans["8c"], 7.9, 20, 20),
    ]
    by_id = {f.id: f for f in figures(runs, 200_000)}
    assert by_id["8c"].met is True  # CPU 2.0 / 3.95 = 0.506x
    assert by_id["8d"].met is True
    assert "100 POSTs (8a: 100)" in by_id["8d"].measured
    assert "8e" not in by_id  # one chunk size: nothing to compare

    slow = [runs[0], runs[1], _outcome(plans["8c"], 8.1, 20, 20)]
    assert {f.id: f.met for f in figures(slow, 200_000)}["8c"] is False
    more_posts = [runs[0], runs[1], _outcome(plans["8c"], 7.0, 21, 20)]
    assert {f.id: f.met for f in figures(more_posts, 200_000)}["8d"] is False
    lost = _outcome(plans["8c"], 7.0, 20, 20)
    lost.arrived[EVENTHOUSE] -= 1
    assert {f.id: f.met for f in figures([runs[0], runs[1], lost], 200_000)}["8d"] is False
