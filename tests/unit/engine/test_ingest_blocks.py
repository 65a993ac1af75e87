"""Ingestor reads rows in blocks (shared/engine/ingest.py, ``valid()``): a source that fails
part-way through a block must still have the rows it gave before the failure validated and
packed, so a batch that those rows complete is sent, as it was when rows went one by one.
Against the local Power BI emulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.contracts import Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.batching import BLOCK_ROWS
from shared.engine.ingest import Ingestor
from shared.engine.retry import RetryPolicy
from shared.engine.schema import DatasetDefinition, load_definitions
from tests.emulator.conftest import REPO, WORKSPACE_NAME, Api, api, emulator

__all__ = ["api", "emulator"]

FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


def product(i: int) -> dict[str, Any]:
    if i % 40 == 7:
        return {"ProductID": "not a number"}  # refused by the schema
    return {"ProductID": i, "Manufacturer": "Contoso", "Product": f"Part {i}", "IsCompete": True}


class SourceFailed(Exception):
    pass


def failing_source(rows: int) -> Iterator[dict[str, Any]]:
    """``rows`` rows, then the source fails (a blob download cut off, say)."""
    for i in range(rows):
        yield product(i)
    raise SourceFailed("the stream broke")


def test_rows_read_before_a_source_fails_mid_block_still_fill_and_send_a_batch(api: Api) -> None:
    """The 10,000th valid row comes (with the refused rows before it) in the block the source
    fails in: that full batch is posted before the failure reaches the caller."""
    valid = [i for i in range(20_000) if i % 40 != 7]
    last_of_batch = valid[9_999]  # the input position that completes the first batch
    read = last_of_batch + 100  # the source fails 100 rows later, in the same block
    assert last_of_batch // BLOCK_ROWS == (read - 1) // BLOCK_ROWS
    assert read % BLOCK_ROWS != 0  # mid-block

    name = f"Blocks-{uuid.uuid4().hex[:6]}"
    body = load_definitions(REPO / "datasets")["SalesMarketing"].body
    client = PowerBIClient(api.emulator.base, StaticTokenProvider(api.token), retry=FAST)
    ingestor = Ingestor(
        client,
        definitions={name: DatasetDefinition.from_body({**body, "name": name})},
        retry=FAST,
    )
    target = Target(name, "Product", WORKSPACE_NAME)
    with pytest.raises(SourceFailed):
        ingestor.push(target, failing_source(read))

    dataset_id = ingestor.resolve(target).dataset_id
    stored = api.stored_rows(dataset_id, "Product")
    assert [row["ProductID"] for row in stored] == valid[:10_000]
    assert api.state(dataset_id)["counters"]["posts_accepted"] == 1
