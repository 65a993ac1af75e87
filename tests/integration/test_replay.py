"""Replay re-drives dead letters and poison messages once the cause is fixed, exactly once."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from shared.cli.replay import replay_dead_letters
from shared.contracts import Target
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import Ingestor
from shared.stores.deadletter import BlobDeadLetterStore
from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, REPO, WORKSPACE_ID, Api

COLUMNS = [{"name": "n", "dataType": "Int64"}]


def test_dead_letters_are_replayed_once_the_dataset_exists(api: Api, azurite: Azurite) -> None:
    """Rows dead-lettered because the dataset was missing arrive after it is created, and a
    second replay sends nothing again."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    store = BlobDeadLetterStore(service.get_container_client(f"dl-{uuid.uuid4().hex[:10]}"))
    client = PowerBIClient(api.emulator.base, StaticTokenProvider(api.token))
    name = f"Later-{uuid.uuid4().hex[:6]}"
    first = Ingestor(client, dead_letters=store).push(
        Target(name, "T"), [{"n": i} for i in range(7)]
    )
    assert (first.sent, first.dead_lettered) == (0, 7)

    dataset_id = api.create_dataset([{"name": "T", "columns": COLUMNS}], name=name)
    report = replay_dead_letters(store.container, Ingestor(client, dead_letters=store))
    assert (report.blobs_replayed, report.rows_sent, report.stopped) == (1, 7, None)
    again = replay_dead_letters(store.container, Ingestor(client, dead_letters=store))
    assert (again.blobs_replayed, again.blobs_already_replayed, again.rows_sent) == (0, 1, 0)
    assert sorted(r["n"] for r in api.stored_rows(dataset_id, "T")) == list(range(7))
    (blob,) = list(store.container.list_blobs(include=["metadata"]))
    assert blob.metadata["replayed"] == "true" and blob.metadata["replay_sent"] == "7"


def replay_environment(api: Api, azurite: Azurite, queue: str) -> dict[str, str]:
    """The command's environment: the emulator's identity endpoint, Azurite, ``queue``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POWERBI_", "IDENTITY_", "MSI_", "DEADLETTER_"))
    }
    env.update(
        POWERBI_API_URL=api.emulator.base,
        IDENTITY_ENDPOINT=f"{api.emulator.base}/msi/token",
        IDENTITY_HEADER=IDENTITY_HEADER,
        AzureWebJobsStorage=azurite.connection_string,
        ROWS_QUEUE=queue,
        # A workspace: Power BI refuses a managed identity on My workspace (issue 17).
        POWERBI_WORKSPACE_ID=WORKSPACE_ID,
    )
    return env


def replay_poison(settings: Path, env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """``python -m shared replay poison``, as an operator runs it; its JSON report."""
    done = subprocess.run(
        [sys.executable, "-m", "shared", "--settings", str(settings), "replay", "poison"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_poison_messages_are_replayed_by_the_command(
    api: Api, azurite: Azurite, tmp_path: Path
) -> None:
    """`python -m shared replay poison` pushes each poison message's rows and deletes it."""
    queue = f"rows{uuid.uuid4().hex[:8]}"
    name = f"Poisoned-{uuid.uuid4().hex[:6]}"
    dataset_id = api.create_dataset(
        [{"name": "T", "columns": COLUMNS}], name=name, group=WORKSPACE_ID
    )
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{queue}-poison")
    poison.create_queue()
    for start in (0, 10):
        envelope = {"dataset": name, "table": "T", "rows": [{"n": start + i} for i in range(3)]}
        poison.send_message(base64.b64encode(json.dumps(envelope).encode()).decode())
    env = replay_environment(api, azurite, queue)
    assert replay_poison(tmp_path / "none.json", env)["messagesReplayed"] == 2
    assert sorted(r["n"] for r in api.stored_rows(dataset_id, "T")) == [0, 1, 2, 10, 11, 12]
    assert poison.get_queue_properties().approximate_message_count == 0


def test_a_blob_the_trigger_gave_up_on_is_resumed_by_replay(
    api: Api, azurite: Azurite, tmp_path: Path
) -> None:
    """A blob reported on ``webjobs-blobtrigger-poison`` (the host's own format) is read again
    from its checkpoint by `replay poison`; another function's poison message, and one of a
    function of the same name on another container, are left alone."""
    name = f"BlobPoison-{uuid.uuid4().hex[:6]}"
    dataset_id = api.create_dataset(
        [{"name": "T", "columns": COLUMNS}], name=name, group=WORKSPACE_ID
    )
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"ingest{uuid.uuid4().hex[:8]}"
    service.create_container(container)
    blob_name = f"{name}/T/gave-up.csv"
    service.get_blob_client(container, blob_name).upload_blob(b"n\n1\n2\n3\n")
    poison = QueueClient.from_connection_string(
        azurite.connection_string, "webjobs-blobtrigger-poison"
    )
    with contextlib.suppress(ResourceExistsError):
        poison.create_queue()

    def report(function: str, blob: str, where: str = container) -> str:
        body = {
            "Type": "BlobTrigger",
            "FunctionId": f"Host.Functions.{function}",
            "BlobType": "BlockBlob",
            "ContainerName": where,
            "BlobName": blob,
            "ETag": '"0x1"',
        }
        return base64.b64encode(json.dumps(body).encode()).decode()

    ours = poison.send_message(report("ingest_blob", blob_name))
    theirs = poison.send_message(report("someone_elses_function", "x.csv"))
    elsewhere = poison.send_message(report("ingest_blob", "y.csv", "someone-elses-container"))
    env = replay_environment(api, azurite, f"rows{uuid.uuid4().hex[:8]}")
    env["INGEST_CONTAINER"] = container
    assert replay_poison(tmp_path / "none.json", env)["messagesReplayed"] >= 1
    assert sorted(r["n"] for r in api.stored_rows(dataset_id, "T")) == [1, 2, 3]
    left = {m.id for m in poison.peek_messages(max_messages=32)}
    assert theirs.id in left and elsewhere.id in left and ours.id not in left
    for message in poison.receive_messages(max_messages=32):
        if message.id in (theirs.id, elsewhere.id):
            poison.delete_message(message)
