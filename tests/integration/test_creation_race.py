"""One dataset per name, whoever comes first: three real processes, built as the app builds
its ingestor (shared.runtime.build_ingestor, so with the blob-lease creation lock in Azurite),
meet the same missing dataset at the same moment, against one emulator.

A file barrier releases them together: each process announces it is ready, then polls for
the round's "go" file, which the test writes once all three are ready. Each race is run for
three names in turn, through the engine's resolver (a definition in DATASETS_DIR) and through
the Power BI surface's Create Dataset. Exactly one dataset of each name must exist afterwards,
and all three processes must report its id. (Without the lock, the same runs left two or three
datasets of a name: see the commit that added this test.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.azurite import Azurite
from tests.emulator.conftest import Api, EmulatorProcess
from tests.integration.test_devhost import app_environment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 3
ROUNDS = 3
KEY = "race-test-key"

#: What each process runs: build the app's ingestor, warm up (token, workspace id, so that the
#: race is over the lookup and the creation, not over who got a token first), then for each
#: name: wait at the barrier, resolve or create, and record the id. Prints {name: id}.
SCRIPT = """
import json, sys, time
from pathlib import Path

from shared.contracts import Target
from shared.runtime import build_ingestor
from shared.settings import Settings
from shared.sources.frontdoor import FrontDoor
from shared.sources.webhook import WebRequest

barrier, me, how, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
settings = Settings.from_env()
ingestor = build_ingestor(settings, dead_letters=False)
door = FrontDoor(lambda: settings, lambda: ingestor, lambda: ingestor.client)
ingestor.workspace_id(ingestor.default_workspace)
ids = {}
for round, name in enumerate(names):
    (barrier / f"ready-{round}-{me}").touch()
    while not (barrier / f"go-{round}").exists():
        time.sleep(0.001)
    if how == "resolve":
        ids[name] = ingestor.resolve(Target(name, "T")).dataset_id
    else:
        table = {"name": "T", "columns": [{"name": "n", "dataType": "Int64"}]}
        answer = door.handle(WebRequest(
            "POST",
            json.dumps({"name": name, "tables": [table]}).encode(),
            {"authorization": f"Bearer {settings.frontdoor_keys[0]}"},
            route={"path": "datasets"},
        ))
        assert answer.status == 201, (answer.status, answer.body)
        ids[name] = answer.body["id"]
print(json.dumps(ids))
"""


def definition(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "tables": [{"name": "T", "columns": [{"name": "n", "dataType": "Int64"}]}],
    }


def race(
    emulator: EmulatorProcess, azurite: Azurite, tmp_path: Path, how: str, names: list[str]
) -> list[dict[str, str]]:
    """Run the three processes through the rounds; what each reported."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    if how == "resolve":
        for name in names:
            (datasets / f"{name}.json").write_text(json.dumps(definition(name)))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = app_environment(emulator, azurite, f"rows{uuid.uuid4().hex[:8]}")
    env.update(
        DATASETS_DIR=str(datasets),
        LOCKS_CONTAINER=f"locks-{uuid.uuid4().hex[:8]}",
        FRONTDOOR_KEYS=KEY,
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(barrier), str(me), how, *names],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in range(PROCESSES)
    ]
    try:
        for round_ in range(len(names)):
            ready = [barrier / f"ready-{round_}-{me}" for me in range(PROCESSES)]
            give_up = time.monotonic() + 120
            while not all(path.exists() for path in ready):
                crashed = [p for p in processes if p.poll() not in (None, 0)]
                assert not crashed, crashed[0].communicate()[1]
                assert time.monotonic() < give_up, "the processes did not reach the barrier"
                time.sleep(0.01)
            (barrier / f"go-{round_}").touch()
        reports = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def datasets_named(api: Api, name: str) -> list[str]:
    """The ids of the emulator's datasets called ``name`` (its admin state, every workspace)."""
    state = api.session.get(f"{api.emulator.base}/_emulator/state", timeout=30).json()
    return [d["id"] for d in state["datasets"] if d["name"] == name]


@pytest.mark.parametrize("how", ["resolve", "create"])
def test_three_processes_racing_for_a_missing_dataset_make_one(
    emulator: EmulatorProcess, azurite: Azurite, api: Api, tmp_path: Path, how: str
) -> None:
    """Through the engine's resolver (a definition to create from) or the Power BI surface's
    Create Dataset, three processes released at once for each of three missing names leave
    exactly one dataset per name, and all three report its id."""
    names = [f"Race{how.title()}{uuid.uuid4().hex[:6]}-{k}" for k in range(ROUNDS)]

    reports = race(emulator, azurite, tmp_path, how, names)

    for name in names:
        made = datasets_named(api, name)
        assert len(made) == 1, f"{name}: {len(made)} datasets {made}"
        assert [report[name] for report in reports] == made * PROCESSES
