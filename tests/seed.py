"""The seed's SalesMarketing dataset, as tests use it: a Product row and the definition under a
fresh name (so that each test gets its own dataset in the shared emulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.engine.schema import DatasetDefinition, load_definitions

REPO = Path(__file__).resolve().parents[1]


def product(i: int) -> dict[str, Any]:
    """Row ``i`` of the seed's Product table, every column filled."""
    return {
        "ProductID": i,
        "Manufacturer": "Contoso",
        "Category": "Components",
        "Segment": "Mid",
        "Product": f"Part {i}",
        "IsCompete": i % 2 == 0,
    }


def definition(name: str) -> DatasetDefinition:
    """The seed's SalesMarketing definition under the name ``name``."""
    body = load_definitions(REPO / "datasets")["SalesMarketing"].body
    return DatasetDefinition.from_body({**body, "name": name})
