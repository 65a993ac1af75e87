"""The long-lived objects of a process, built once from the app settings and reused.

Triggers call :func:`get_ingestor`; building the credential, the HTTP session and the governor
once per worker process is what keeps tokens cached and pacing shared across invocations.
Tests build their own :class:`~shared.ingest.Ingestor` with the pieces they need.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from shared.auth import make_token_provider
from shared.claimcheck import ClaimCheckStore
from shared.coalesce import Coalescer
from shared.deadletter import BlobDeadLetterStore
from shared.errors import ConfigError
from shared.governor import Governor, Quotas
from shared.ingest import Ingestor
from shared.powerbi import DEFAULT_TIMEOUT, PowerBIClient
from shared.queue_ingest import QueueIngest
from shared.schema import load_definitions
from shared.settings import Settings

_lock = threading.RLock()
_ingestor: Ingestor | None = None
_settings: Settings | None = None
_queue: QueueIngest | None = None


def get_settings() -> Settings:
    """The process's settings, read once from the environment (ConfigError if malformed)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def build_ingestor(
    settings: Settings, env: Mapping[str, str] | None = None, *, dead_letters: bool = True
) -> Ingestor:
    """An ingestor wired from ``settings`` (``env`` supplies the storage connection)."""
    env = os.environ if env is None else env
    client = PowerBIClient(
        settings.api_root,
        make_token_provider(settings),
        timeout=(DEFAULT_TIMEOUT[0], settings.request_timeout),
    )
    store = (
        BlobDeadLetterStore.from_settings(
            settings.deadletter_connection, settings.deadletter_container, env
        )
        if dead_letters
        else None
    )
    return Ingestor(
        client,
        definitions=load_definitions(settings.datasets_dir),
        governor=Governor(Quotas(time_scale=settings.quota_time_scale)),
        dead_letters=store,
        default_workspace=settings.workspace_id or settings.workspace_name,
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
    """A queue handler over ``ingestor``, with one coalescer for all its invocations."""
    env = os.environ if env is None else env
    coalescer = Coalescer(ingestor, linger=settings.queue_linger, max_wait=settings.queue_max_wait)
    claims = ClaimCheckStore.from_settings(
        settings.storage_connection, settings.claimcheck_container, env
    )
    store = ingestor.dead_letters
    if store is None:
        raise ConfigError(settings.deadletter_connection, "the queue needs a dead-letter store")
    return QueueIngest(
        lambda: coalescer, lambda: claims, lambda: store, time_budget=settings.queue_time_budget
    )


def get_queue_ingest() -> QueueIngest:
    """The process's queue handler: one coalescer, so concurrent invocations share POSTs."""
    global _queue
    with _lock:
        if _queue is None:
            _queue = build_queue_ingest(get_settings(), get_ingestor())
        return _queue


def reset() -> None:
    """Forget the process's settings and ingestor (tests change the environment between runs)."""
    global _ingestor, _settings, _queue
    with _lock:
        _ingestor = None
        _settings = None
        _queue = None
