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
_settings: Settings | None = None


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
            settings = _settings if _settings is not None else Settings.from_env()
            _ingestor = build_ingestor(settings)
        return _ingestor


def reset() -> None:
    """Forget the process's settings and ingestor (tests change the environment between runs)."""
    global _ingestor, _settings
    with _lock:
        _ingestor = None
        _settings = None
