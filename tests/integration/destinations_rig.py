"""A rig for issue 18's end-to-end checks: devhost serving the app with a datasets directory that
holds the seed's SalesMarketing definition and a ``SalesMarketing.destinations.json``, an
emulator serving Power BI and Kusto (queued ingestion through Azurite), and Azurite.

Each :class:`Rig` has its own emulator, so that "no Power BI dataset was made" can be read from
the emulator's state, and its own queue and containers on the shared Azurite. Rows are read
back from the KQL database with the real ``azure.kusto.data.KustoClient``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.kusto.data import KustoClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from tests.azurite import Azurite, dead_letter_lines
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess
from tests.emulator.kusto_fixtures import client as kusto_client
from tests.emulator.kusto_fixtures import start_kusto_emulator
from tests.integration.test_devhost import Devhost, app_environment, start_devhost

REPO = Path(__file__).resolve().parents[2]
#: The seed's dataset and table (/work/shared/seed/push-data-into-a-dataset.md).
DATASET = "SalesMarketing"
TABLE = "Product"
#: The KQL database the emulator serves, and the prefix the routing file gives KQL tables.
DATABASE = "Sales"
TABLE_PREFIX = "Seed_"
KUSTO_TABLE = f"{TABLE_PREFIX}{TABLE}"
#: A Power BI surface key (FRONTDOOR_KEYS); a test value, not a secret.
FRONTDOOR_KEY = "seed18-frontdoor-key"
#: Settings a developer's shell might carry that would change what the app does here, besides
#: those test_devhost.app_environment already drops.
EXTRA_STRIPPED = ("EVENTHOUSE_", "DATASETS_DIR", "FRONTDOOR_", "HTTP_MODE", "INGEST_CONTAINER")


@dataclass
class Rig:
    """One configuration of destinations for the seed's Product table, running."""

    destinations: list[str]
    azurite: Azurite
    emulator: EmulatorProcess
    host: Devhost
    env: dict[str, str]
    kusto: KustoClient
    http: requests.Session = field(default_factory=requests.Session)
    #: The configuration's name, for messages.
    name: str = ""

    @functools.cached_property
    def api(self) -> Api:
        """The emulator's Power BI API with a token (one session for the rig)."""
        return Api(self.emulator)

    # -- sending ---------------------------------------------------------------------------

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """A request to devhost's ``/api/<path>``."""
        return self.http.post(f"{self.host.base}/api/{path}", timeout=60, **kwargs)

    def rows_queue(self) -> QueueClient:
        """The app's rows queue (host.json: ``messageEncoding: none``, so plain text)."""
        return QueueClient.from_connection_string(
            self.azurite.connection_string, self.env["ROWS_QUEUE"]
        )

    def ingest(self) -> ContainerClient:
        service = BlobServiceClient.from_connection_string(self.azurite.connection_string)
        return service.get_container_client(self.env["INGEST_CONTAINER"])

    # -- reading back ----------------------------------------------------------------------

    def flush(self) -> None:
        """Land the emulator's pending queued-ingestion batches (its admin call)."""
        response = self.http.post(f"{self.emulator.base}/_emulator/kusto/flush", timeout=60)
        response.raise_for_status()

    def kql(self, query: str) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        """A query through the real client: the primary result's (name, type) columns and its
        rows as dicts."""
        result = self.kusto.execute_query(DATABASE, query).primary_results[0]
        columns = [(c.column_name, c.column_type) for c in result.columns]
        names = [name for name, _ in columns]
        return columns, [dict(zip(names, list(row), strict=True)) for row in result]

    def kusto_count(self) -> int:
        self.flush()
        _, rows = self.kql(f"{KUSTO_TABLE} | count")
        return int(rows[0]["Count"])

    def kusto_counters(self) -> dict[str, int]:
        """The emulator's Kusto counters (streaming_rows, queued_blobs, rows_ingested, ...)."""
        state = self.http.get(f"{self.emulator.base}/_emulator/kusto/state", timeout=10).json()
        counters: dict[str, int] = state["counters"]
        return counters

    def powerbi_datasets(self) -> list[dict[str, Any]]:
        """Every dataset the emulator holds, in any workspace (its admin state)."""
        state = self.http.get(f"{self.emulator.base}/_emulator/state", timeout=10).json()
        found: list[dict[str, Any]] = state["datasets"]
        return found

    def powerbi_dataset_id(self) -> str | None:
        """The id of the seed's dataset in the app's workspace, or None."""
        api = self.api
        listed = api.request("GET", f"{api.prefix(WORKSPACE_ID)}/datasets").json()["value"]
        ids = [str(d["id"]) for d in listed if d["name"] == DATASET]
        assert len(ids) <= 1, listed
        return ids[0] if ids else None

    def powerbi_rows(self) -> list[dict[str, Any]]:
        dataset_id = self.powerbi_dataset_id()
        return [] if dataset_id is None else self.api.stored_rows(dataset_id, TABLE)

    def dead_letters(self) -> list[dict[str, Any]]:
        return dead_letter_lines(self.azurite.connection_string, self.env["DEADLETTER_CONTAINER"])

    def checkpoint(self, blob: str) -> dict[str, Any] | None:
        """The engine's checkpoint of ``blob`` (``<account>/<container>/<name>.json`` in the
        checkpoint container, shared/stores/checkpoint.py), or None before there is one."""
        service = BlobServiceClient.from_connection_string(self.azurite.connection_string)
        container = service.get_container_client(self.env["CHECKPOINT_CONTAINER"])
        source = f"{service.account_name}/{self.env['INGEST_CONTAINER']}/{blob}"
        try:
            saved: dict[str, Any] = json.loads(container.download_blob(f"{source}.json").readall())
        except ResourceNotFoundError:
            return None
        return saved

    def activity(self) -> dict[str, Any]:
        """devhost's counters (``/admin/devhost/activity``)."""
        found: dict[str, Any] = self.http.get(
            f"{self.host.base}/admin/devhost/activity", timeout=10
        ).json()
        return found

    def queue_depth(self) -> int:
        """Messages on the rows queue and its poison queue (visible or not)."""
        total = 0
        for name in (self.env["ROWS_QUEUE"], f"{self.env['ROWS_QUEUE']}-poison"):
            queue = QueueClient.from_connection_string(self.azurite.connection_string, name)
            with contextlib.suppress(ResourceNotFoundError):
                total += queue.get_queue_properties().approximate_message_count or 0
        return total

    def stop(self) -> None:
        self.host.stop()
        self.kusto.close()  # type: ignore[no-untyped-call]  # azure-kusto-data leaves it untyped
        self.http.close()
        if "api" in self.__dict__:
            self.api.session.close()
        self.emulator.stop()


def start_rig(destinations: list[str], azurite: Azurite, tmp: Path, *emulator_args: str) -> Rig:
    """The emulator (Power BI and Kusto; ``emulator_args`` added to its command line), then
    devhost with the seed's definition routed to ``destinations``; both on free ports."""
    emulator = start_kusto_emulator(
        azurite, tmp / "emulator", "--kusto-database", DATABASE, *emulator_args
    )
    try:
        datasets = tmp / "datasets"
        datasets.mkdir()
        shutil.copy(REPO / "datasets" / f"{DATASET}.json", datasets / f"{DATASET}.json")
        routing = {
            "tables": {TABLE: destinations},
            "eventhouse": {"database": DATABASE, "table_prefix": TABLE_PREFIX},
        }
        (datasets / f"{DATASET}.destinations.json").write_text(json.dumps(routing))
        suffix = uuid.uuid4().hex[:10]
        env = {
            k: v
            for k, v in app_environment(emulator, azurite, f"rows{suffix}").items()
            if not k.startswith(EXTRA_STRIPPED)
        }
        # The default rule (the app's workspace, defined datasets), not test_devhost's "*/*".
        env.pop("ALLOWED_TARGETS", None)
        env.update(
            DATASETS_DIR=str(datasets),
            EVENTHOUSE_URI=emulator.base,
            EVENTHOUSE_DATABASE=DATABASE,
            INGEST_CONTAINER=f"ingest{suffix}",
            CHECKPOINT_CONTAINER=f"checkpoints{suffix}",
            DEADLETTER_CONTAINER=f"dl{suffix}",
            CLAIMCHECK_CONTAINER=f"claims{suffix}",
            FRONTDOOR_KEYS=FRONTDOOR_KEY,
            # devhost lists the ingest container this often (the real host is told by Event
            # Grid); short, so that a test waits on the file's rows and not on the poll.
            DEVHOST_BLOB_POLL_SECONDS="0.3",
        )
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        service.get_container_client(env["INGEST_CONTAINER"]).create_container()
        settings = tmp / "local.settings.json"
        settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
        host = start_devhost(env, settings)
    except BaseException:
        emulator.stop()
        raise
    http = requests.Session()
    http.trust_env = False
    return Rig(destinations, azurite, emulator, host, env, kusto_client(emulator), http)


def wait_for(check: Callable[[], bool], seconds: float, what: Callable[[], str]) -> None:
    """Poll ``check`` until it holds; after ``seconds``, fail with ``what()`` (the state)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds} s waiting: {what()}")
        time.sleep(0.25)


__all__ = ["Rig", "start_rig", "wait_for"]
