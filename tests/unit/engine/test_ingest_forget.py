"""Ingestor.forget: a stale dataset id is dropped, a fresh one another caller made is kept."""

from __future__ import annotations

from typing import Any

from shared.contracts import Target
from shared.engine.ingest import Ingestor
from shared.engine.retry import Deadline

TABLE = {"name": "T", "columns": [{"name": "n", "dataType": "Int64"}]}


class Datasets:
    """Lookups only: Get Datasets answers the current id of dataset "D"."""

    def __init__(self) -> None:
        self.current = "00000000-0000-4000-8000-00000000000a"
        self.lookups = 0

    def get_datasets(
        self, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        self.lookups += 1
        return [{"id": self.current, "name": "D"}]

    def get_tables(
        self, dataset_id: str, workspace: str | None = None, *, deadline: Deadline | None = None
    ) -> list[dict[str, Any]]:
        return [TABLE]


def test_forget_with_a_stale_id_keeps_a_fresh_resolution() -> None:
    """Two callers meet a 404 for the same old id: the first forgets it and looks the dataset
    up again; the second, late, must not drop that fresh resolution (one lookup, not two)."""
    service = Datasets()
    ingestor = Ingestor(service)  # type: ignore[arg-type]
    target = Target("D", "T")
    old = ingestor.resolve(target).dataset_id
    service.current = "00000000-0000-4000-8000-00000000000b"  # deleted and made again

    ingestor.forget(target, old)  # the first caller
    fresh = ingestor.resolve(target).dataset_id
    ingestor.forget(target, old)  # the second caller, with the same stale id
    again = ingestor.resolve(target).dataset_id

    assert (old, fresh, again) == (
        "00000000-0000-4000-8000-00000000000a",
        "00000000-0000-4000-8000-00000000000b",
        "00000000-0000-4000-8000-00000000000b",
    )
    assert service.lookups == 2


def test_forget_without_an_id_drops_whatever_is_cached() -> None:
    """Without an id, forget drops the cached resolution, so the next push looks it up."""
    service = Datasets()
    ingestor = Ingestor(service)  # type: ignore[arg-type]
    target = Target("D", "T")
    ingestor.resolve(target)

    ingestor.forget(target)
    ingestor.resolve(target)

    assert service.lookups == 2


def test_two_datasets_of_one_name_resolve_to_the_smallest_id_with_a_warning(
    caplog: Any,
) -> None:
    """Two datasets named "D" (a creation race, or a second one made by hand): every process
    picks the same one, the smallest id, whatever order Get Datasets lists them in, and says
    so; not a failure that sends every row of that dataset to the dead letters."""

    class Twice(Datasets):
        def __init__(self, order: list[str]) -> None:
            super().__init__()
            self.order = order

        def get_datasets(
            self, workspace: str | None = None, *, deadline: Deadline | None = None
        ) -> list[dict[str, Any]]:
            return [{"id": i, "name": "D"} for i in self.order]

    ids = ["00000000-0000-4000-8000-00000000000c", "00000000-0000-4000-8000-00000000000b"]
    picked = {
        Ingestor(Twice(order)).resolve(Target("D", "T")).dataset_id  # type: ignore[arg-type]
        for order in (ids, ids[::-1])
    }

    assert picked == {"00000000-0000-4000-8000-00000000000b"}
    assert "2 datasets are named 'D'" in caplog.text
