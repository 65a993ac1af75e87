"""The engine benchmark's stand-in client keeps up with PowerBIClient's interface: a change to
the client that the stand-in lacks fails here, not in the middle of `make bench`. And the CSV
written for an ingest profile (figure 1c) is stored exactly as the plain CSV is, by the same
fast paths, or the figure would compare different work."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench import data, engine
from shared.engine.batching import BLOCK_ROWS
from shared.engine.profile import TableProfile
from shared.engine.schema import DatasetDefinition, RowValidator
from shared.errors import RowProblem
from shared.sources.formats import read_rows

#: Every field of the generator repeats within 5,000 rows (the price's cycle is the longest).
ROWS = 5_000


@pytest.mark.parametrize("kind", ["csv", "ndjson"])
def test_the_engine_benchmark_pushes_a_small_file(tmp_path: Path, kind: str) -> None:
    path = (data.write_csv if kind == "csv" else data.write_ndjson)(tmp_path / f"f.{kind}", 25_000)
    sent, posts = engine.engine_push(path, kind)
    assert (sent, posts) == (25_000, 3)
    assert engine.naive_push(path, kind)[0] == 25_000


def test_the_profiled_csv_is_the_plain_csv_written_as_an_export_would() -> None:
    for i in range(ROWS):
        plain = data.csv_line(i).rstrip("\n").split(",")
        profiled = data.profiled_csv_line(i).rstrip("\n").split(",")
        assert profiled[:6] == plain[:6]
        assert profiled[6] == (plain[6] or "NA")
        assert profiled[7].replace("/", "-").replace(" ", "T") + "Z" == plain[7]
        assert len(profiled[7]) == len("yyyy/MM/dd HH:mm:ss")


def test_the_profiled_csv_sends_the_same_bodies_as_the_plain_csv(tmp_path: Path) -> None:
    plain = data.write_csv(tmp_path / "plain.csv", 25_000)
    profiled = data.write_profiled_csv(tmp_path / "profiled.csv", 25_000)
    assert engine.engine_push(profiled, "csv", data.INGEST_PROFILE) == (25_000, 3)
    same = engine.check_same_rows(plain, profiled)
    assert (same["rows"], same["posts"]) == (25_000, 3)
    # Another file fails the check.
    with pytest.raises(AssertionError, match="not stored as the plain CSV"):
        engine.check_same_rows(plain, data.write_csv(tmp_path / "other.csv", 24_999))


def _definition() -> DatasetDefinition:
    return DatasetDefinition.from_body(data.definition(engine.NAME))


def _blocks(path: Path, validator: RowValidator) -> list[Any]:
    """The file's rows as the engine's block path coerces them (builtins, for comparing)."""
    rows = iter(read_rows(data.read_chunks(path), "csv", profile=validator.profile))
    out: list[Any] = []
    while block := list(itertools.islice(rows, BLOCK_ROWS)):
        checked = validator.check_block(block)
        assert checked is not None, "a bench block left the block path"
        out += msgspec.to_builtins(checked[0])
    return out


def _one_by_one(path: Path, validator: RowValidator) -> list[Any]:
    rows = read_rows(data.read_chunks(path), "csv", profile=validator.profile)
    out = [validator(row, index) for index, row in enumerate(rows)]
    assert not any(isinstance(row, RowProblem) for row in out)
    return out


def test_the_profiled_csv_validates_to_the_plain_csvs_rows(tmp_path: Path) -> None:
    plain = data.write_csv(tmp_path / "plain.csv", ROWS)
    profiled = data.write_profiled_csv(tmp_path / "profiled.csv", ROWS)
    table = _definition().tables[data.TABLE]
    profile = engine.ingest_profile(_definition())
    want = _blocks(plain, table.validator())
    got = _blocks(profiled, table.validator(profile))
    assert len(got) == ROWS
    assert got == want
    assert got == _one_by_one(profiled, table.validator(profile))
    assert want == _one_by_one(plain, table.validator())
    assert got[0]["Updated"] == "2026-01-01T00:00:00.000Z"
    assert got[99]["Price"] is None and got[99]["Updated"] == "2026-04-16T03:39:33.000Z"


def test_the_profiled_dates_take_the_column_rewrite(tmp_path: Path) -> None:
    """Figure 1c measures the whole-column rewrite of the date pattern, not the per-value
    reader: with a per-value reader that fails every value, the blocks still validate."""
    profiled = data.write_profiled_csv(tmp_path / "profiled.csv", 2 * BLOCK_ROWS)
    profile = engine.ingest_profile(_definition())
    rule = profile.columns["Updated"]
    assert rule.rewrite is not None

    def refuse(text: str) -> str:
        raise ValueError(f"read value by value: {text!r}")

    broken: TableProfile = dataclasses.replace(
        profile, columns={**profile.columns, "Updated": dataclasses.replace(rule, parse=refuse)}
    )
    validator = _definition().tables[data.TABLE].validator(broken)
    assert len(_blocks(profiled, validator)) == 2 * BLOCK_ROWS
    # The per-value reader is the one refused: the row path, which uses it, refuses the row.
    row = next(iter(read_rows(data.read_chunks(profiled), "csv", profile=broken)))
    problem = validator(row, 0)
    assert isinstance(problem, RowProblem) and problem.column == "Updated"
