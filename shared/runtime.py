"""The long-lived objects of a process, built once from the app settings and reused.

Triggers call :func:`get_ingestor`; building the credential, the HTTP session and the governor
once per worker process is what keeps tokens cached and pacing shared across invocations.
Tests build their own :class:`~shared.engine.ingest.Ingestor` with the pieces they need.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from shared.destinations.auth import make_token_provider
from shared.destinations.powerbi import DEFAULT_TIMEOUT, PowerBIClient
from shared.engine.coalesce import Coalescer
from shared.engine.governor import Governor, Quotas
from shared.engine.ingest import Ingestor
from shared.engine.profile import load_profiles
from shared.engine.retry import RetryPolicy
from shared.engine.routing import EVENTHOUSE, Routing, load_routing
from shared.engine.schema import load_definitions
from shared.engine.shared_governor import SharedGovernor
from shared.engine.targets import TargetPolicy
from shared.errors import ConfigError
from shared.settings import DEFAULT_QUEUED_FILE_BYTES, Settings
from shared.sources.blob_events import BlobEvents, client_options
from shared.sources.blob_ingest import BlobIngest
from shared.sources.claimcheck import ClaimCheckStore
from shared.sources.messages import encode
from shared.sources.queue_ingest import QueueIngest, redelivery_delay
from shared.stores import pacing, storage
from shared.stores.checkpoint import CheckpointStore
from shared.stores.deadletter import BlobDeadLetterStore
from shared.stores.leases import BlobLeaseLock
from shared.stores.pacing import TableLedger
from shared.stores.storage import blob_service, managed_identity, queue_client, table_client

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger(__name__)

_lock = threading.RLock()
_ingestor: Ingestor | None = None
_settings: Settings | None = None
_queue: QueueIngest | None = None
_blob: BlobIngest | None = None
_events: BlobEvents | None = None
_http_coalescer: Coalescer | None = None


def get_settings() -> Settings:
    """The process's settings, read once from the environment (ConfigError if malformed)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def build_governor(settings: Settings, env: Mapping[str, str]) -> Governor:
    """The process's pacing: shared by every process through Table storage (PACING=shared,
    the default), or this process's alone (PACING=local, or no storage connection set)."""
    quotas = Quotas(time_scale=settings.quota_time_scale, even=True)
    if settings.pacing == "local":
        return Governor(quotas)
    connection = settings.storage_connection
    if not any(k == connection or k.startswith(f"{connection}__") for k in env):
        log.warning(
            "PACING=shared but %s is not set: this process paces alone (set it, or "
            "PACING=local to say so)",
            connection,
        )
        return Governor(quotas)
    try:  # a malformed connection is told now, not at the first POST
        client = table_client(connection, settings.pacing_table, env, **pacing.CLIENT_OPTIONS)
    except ConfigError as error:
        log.warning("PACING=shared: %s; this process paces alone", error)
        return Governor(quotas)
    ledger = TableLedger(lambda: client)
    return SharedGovernor(
        ledger,
        quotas,
        # A claim outlives its POST by at most the request timeout: the crash bound.
        claim_ttl=settings.request_timeout + 5.0,
        fallback_share=settings.pacing_fallback_processes,
    )


def build_ingestor(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    *,
    dead_letters: bool = True,
    callers: bool = True,
) -> Ingestor:
    """An ingestor wired from ``settings`` (``env`` supplies the storage connection)."""
    env = os.environ if env is None else env
    # One policy for every in-process retry: the client's lookups and the ingestor's Add Rows.
    retry = RetryPolicy(max_retry_after=settings.max_retry_after)
    client = PowerBIClient(
        settings.api_root,
        make_token_provider(settings, managed_identity),
        timeout=(DEFAULT_TIMEOUT[0], settings.request_timeout),
        retry=retry,
    )
    store = (
        BlobDeadLetterStore.from_settings(
            settings.deadletter_connection, settings.deadletter_container, env
        )
        if dead_letters
        else None
    )
    definitions = load_definitions(settings.datasets_dir)
    # datasets/<Dataset>.destinations.json (issue 18); no file: Power BI only, as before.
    routing = load_routing(settings.datasets_dir, definitions, settings)
    eventhouse = None
    if any(isinstance(r, Routing) and r.uses(EVENTHOUSE) for r in routing.values()):
        # Imported only when a table is routed there: the Kusto clients are heavy to load.
        from shared.destinations.eventhouse import EventhouseClient

        eventhouse = EventhouseClient.from_settings(settings, managed_identity)
    return Ingestor(
        client,
        definitions=definitions,
        profiles=load_profiles(settings.datasets_dir),
        routing=routing,
        eventhouse=eventhouse,
        # Callers' targets are checked; the operator's command line (callers=False) is not.
        policy=TargetPolicy.parse(settings.allowed_targets) if callers else None,
        governor=build_governor(settings, env),
        dead_letters=store,
        retry=retry,
        default_workspace=settings.workspace_id or settings.workspace_name,
        creation_lock=BlobLeaseLock.from_settings(
            settings.storage_connection, settings.locks_container, env
        ),
    )


def get_ingestor() -> Ingestor:
    """The process's ingestor, built on first use from the environment."""
    global _ingestor
    with _lock:
        if _ingestor is None:
            _ingestor = build_ingestor(get_settings())
        return _ingestor


def build_queue_ingest(
    settings: Settings, ingestor: Ingestor, env: Mapping[str, str] | None = None
) -> QueueIngest:
    """A queue handler over ``ingestor``, with one coalescer for all its invocations. Long
    pauses hand messages back to the rows queue (``ROWS_QUEUE``), compared with the host's
    redelivery delay: the ``visibilityTimeout`` of host.json beside this package, or its
    app-setting override."""
    env = os.environ if env is None else env
    coalescer = Coalescer(ingestor, linger=settings.queue_linger, max_wait=settings.queue_max_wait)
    claims = ClaimCheckStore.from_settings(
        settings.storage_connection, settings.claimcheck_container, env
    )
    store = ingestor.dead_letters
    if store is None:
        raise ConfigError(settings.deadletter_connection, "the queue needs a dead-letter store")
    return QueueIngest(
        lambda: coalescer,
        lambda: claims,
        lambda: store,
        time_budget=settings.queue_time_budget,
        blobs=functools.cache(lambda: build_blob_ingest(settings, ingestor, env)),
        blob_service=lambda: blob_service(settings.storage_connection, env),
        rows_queue=lambda: queue_client(settings.storage_connection, settings.rows_queue, env),
        redelivery_delay=redelivery_delay(env, Path(__file__).resolve().parents[1] / "host.json"),
    )


def get_http_coalescer() -> Coalescer | None:
    """The process's coalescer for synchronous Add Rows requests (group commit), or None when
    ``HTTP_GROUP_COMMIT`` is off: one per process, so that concurrent requests share POSTs."""
    global _http_coalescer
    with _lock:
        settings = get_settings()
        if not settings.http_group_commit:
            return None
        if _http_coalescer is None:
            # max_wait: a steady stream of requests is still sent at least this often, and
            # the longest a buffer waits for the dataset's next POST slot (0.5 s apart).
            _http_coalescer = Coalescer(get_ingestor(), linger=settings.http_linger, max_wait=1.0)
        return _http_coalescer


def get_queue_ingest() -> QueueIngest:
    """The process's queue handler: one coalescer, so concurrent invocations share POSTs."""
    global _queue
    with _lock:
        if _queue is None:
            _queue = build_queue_ingest(get_settings(), get_ingestor())
        return _queue


def build_blob_ingest(
    settings: Settings, ingestor: Ingestor, env: Mapping[str, str] | None = None
) -> BlobIngest:
    """A blob ingester whose long files hand their rest on through the rows queue."""
    env = os.environ if env is None else env
    service = blob_service(settings.storage_connection, env)
    store = ingestor.dead_letters
    if store is None:
        raise ConfigError(
            settings.deadletter_connection, "blob ingestion needs a dead-letter store"
        )
    queue = queue_client(settings.storage_connection, settings.rows_queue, env)

    def hand_on(message: dict[str, Any], delay: float) -> None:
        queue.send_message(encode(json.dumps(message)), visibility_timeout=int(min(delay, 604_800)))

    return BlobIngest(
        ingestor,
        CheckpointStore(service.get_container_client(settings.checkpoint_container)),
        store,
        continuation=hand_on,
        time_budget=settings.blob_time_budget,
        max_bytes=settings.blob_max_bytes,
        queued_file_bytes=(
            settings.eventhouse.queued_file_bytes
            if settings.eventhouse
            else DEFAULT_QUEUED_FILE_BYTES
        ),
    )


def get_blob_ingest() -> BlobIngest:
    """The process's blob ingester."""
    global _blob
    with _lock:
        if _blob is None:
            _blob = build_blob_ingest(get_settings(), get_ingestor())
        return _blob


def blob_client_for(settings: Settings, env: Mapping[str, str]) -> Callable[[str], BlobClient]:
    """How to open a blob URL: with the storage connection's key when the URL is that account
    (Azurite locally), else with the managed identity (the process's one credential), with
    the short timeouts of :func:`~shared.sources.blob_events.client_options` either way."""

    def open_url(url: str) -> BlobClient:
        from azure.storage.blob import BlobClient

        own = blob_service(settings.storage_connection, env, **client_options())
        if url.lower().startswith(own.url.lower().rstrip("/") + "/"):
            container, _, name = url[len(own.url.rstrip("/")) + 1 :].partition("/")
            return own.get_blob_client(unquote(container), unquote(name))
        return BlobClient.from_blob_url(
            url, credential=managed_identity(settings.client_id), **client_options()
        )

    return open_url


def get_blob_events() -> BlobEvents:
    """The process's BlobCreated event handler."""
    global _events
    with _lock:
        if _events is None:
            settings = get_settings()
            _events = BlobEvents(
                get_blob_ingest, settings.blob_allowed_hosts, blob_client_for(settings, os.environ)
            )
        return _events


def reset() -> None:
    """Forget the process's settings, ingestor, clients and credentials (tests change the
    environment between runs)."""
    global _ingestor, _settings, _queue, _blob, _events, _http_coalescer
    with _lock:
        _http_coalescer = None
        storage.forget()
        ClaimCheckStore.forget()
        _events = None
        _ingestor = None
        _settings = None
        _queue = None
        _blob = None
