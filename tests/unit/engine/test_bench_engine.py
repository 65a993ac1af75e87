"""The engine benchmark's stand-in client keeps up with PowerBIClient's interface: a change to
the client that the stand-in lacks fails here, not in the middle of `make bench`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import data, engine


@pytest.mark.parametrize("kind", ["csv", "ndjson"])
def test_the_engine_benchmark_pushes_a_small_file(tmp_path: Path, kind: str) -> None:
    path = (data.write_csv if kind == "csv" else data.write_ndjson)(tmp_path / f"f.{kind}", 25_000)
    sent, posts = engine.engine_push(path, kind)
    assert (sent, posts) == (25_000, 3)
    assert engine.naive_push(path, kind)[0] == 25_000
