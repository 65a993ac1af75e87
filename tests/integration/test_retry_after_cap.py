"""POWERBI_MAX_RETRY_AFTER_SECONDS where there is no time budget: the command line."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.emulator.conftest import REPO, WORKSPACE_NAME, Api
from tests.integration.test_cli import run

__all__ = ["run"]


def test_the_cli_exits_3_instead_of_sleeping_an_hour(run: Any, api: Api, tmp_path: Path) -> None:
    """``python -m shared push`` has no deadline. Power BI answers Retry-After: 3600: the
    command does not sleep an hour (the subprocess would time out after 120 s), it exits 3
    (delivery stopped on a transient error) with nothing sent, after one POST."""
    name = f"Cap-{uuid.uuid4().hex[:6]}"
    seed = json.loads((REPO / "datasets" / "SalesMarketing.json").read_text())
    definition = tmp_path / f"{name}.json"
    definition.write_text(json.dumps({**seed, "name": name}))
    made = run("provision", str(definition), "--workspace", WORKSPACE_NAME)
    assert made.returncode == 0, made.stderr
    dataset_id = json.loads(made.stdout)["id"]
    rows = tmp_path / "rows.ndjson"
    rows.write_text("\n".join(json.dumps({"ProductID": i}) for i in range(3)) + "\n")
    api.set_faults(script=["throttle"], retry_after=3600)

    push = run(
        "push", str(rows), "--dataset", name, "--table", "Product", "--workspace", WORKSPACE_NAME
    )

    assert push.returncode == 3, push.stderr
    assert json.loads(push.stdout)["sent"] == 0
    assert "429" in push.stderr
    assert api.stored_rows(dataset_id, "Product") == []
    assert api.state(dataset_id)["counters"]["injected_throttle"] == 1
