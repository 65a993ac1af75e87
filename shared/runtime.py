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
from shared.deadletter import BlobDeadLetterStore
from shared.governor import Governor, Quotas
from shared.ingest import Ingestor
from shared.powerbi import DEFAULT_TIMEOUT, PowerBIClient
from shared.schema import load_definitions
from shared.settings import Settings

_lock = threading.Lock()
_ingestor: Ingestor | None = None


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
            _ingestor = build_ingestor(Settings.from_env())
        return _ingestor
