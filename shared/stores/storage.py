"""Azure Storage clients from Functions-style connection settings, built once per process.

A connection named ``X`` (``AzureWebJobsStorage`` by default) is either a connection string in
the setting ``X`` (``UseDevelopmentStorage=true`` means Azurite), or an identity-based
connection: ``X__blobServiceUri`` / ``X__queueServiceUri`` (or ``X__serviceUri``) with the
managed identity, user-assigned when ``X__clientId`` is set
(https://learn.microsoft.com/azure/azure-functions/functions-reference#common-properties-for-identity-based-connections).

Clients and credentials are kept for the life of the process and shared by every invocation:
the SDK clients are thread-safe and pool their connections, and a ``ManagedIdentityCredential``
caches its tokens, so building one per call would cost a TLS handshake and a token request
each time. One credential per identity (client id, or the system-assigned one) serves every
client that uses it. :func:`forget` drops them all (tests that change the environment).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import ConfigError

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.identity import ManagedIdentityCredential
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

#: The environment variables that choose where a ManagedIdentityCredential asks for tokens
#: (azure-identity reads them when the credential is built).
IDENTITY_VARIABLES = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
)

_T = TypeVar("_T")
_lock = threading.RLock()  # re-entered: a client's build gets its credential here too
_built: dict[Hashable, Any] = {}


def _once(key: Hashable, build: Callable[[], _T]) -> _T:
    """The object kept under ``key``, built by ``build`` the first time (one build at a time,
    so concurrent first calls share one object)."""
    with _lock:
        if key not in _built:
            _built[key] = build()
        found: _T = _built[key]
        return found


def forget() -> None:
    """Drop every client and credential kept (the next call builds them anew)."""
    with _lock:
        _built.clear()


def managed_identity(client_id: str | None = None) -> ManagedIdentityCredential:
    """The process's ``ManagedIdentityCredential`` for an identity: user-assigned by
    ``client_id``, else the system-assigned one."""
    import os

    def build() -> ManagedIdentityCredential:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)

    source = tuple(os.environ.get(name) for name in IDENTITY_VARIABLES)
    return _once(("credential", client_id or None, source), build)


def _options_key(options: Mapping[str, Any]) -> Hashable:
    """Options as a key: values by equality when hashable (numbers, strings), else by identity
    (a policy object: the same object gives the same client)."""
    return tuple(
        sorted(
            (name, value if isinstance(value, Hashable) else ("id", id(value)))
            for name, value in options.items()
        )
    )


def blob_service(connection: str, env: Mapping[str, str], **options: Any) -> BlobServiceClient:
    """The blob service client for the connection ``connection`` (``options`` go to the SDK
    client, e.g. ``retry_total=0`` for a quick probe; each set of options has its client)."""
    from azure.storage.blob import BlobServiceClient

    value = env.get(connection, "").strip()
    uri = env.get(f"{connection}__blobServiceUri") or env.get(f"{connection}__serviceUri")
    if value:

        def from_string() -> BlobServiceClient:
            try:
                return BlobServiceClient.from_connection_string(value, **options)
            except ValueError as exc:
                raise ConfigError(connection, "is not a valid storage connection string") from exc

        return _once(("blob", value, _options_key(options)), from_string)
    if uri:
        client_id = env.get(f"{connection}__clientId")
        return _once(
            ("blob", uri, client_id, _options_key(options)),
            lambda: BlobServiceClient(uri, credential=managed_identity(client_id), **options),
        )
    raise ConfigError(
        connection,
        f"is not set: give a storage connection string, or {connection}__blobServiceUri to "
        "use the managed identity",
    )


def queue_client(
    connection: str, queue: str, env: Mapping[str, str], **options: Any
) -> QueueClient:
    """The client for queue ``queue`` of the connection ``connection`` (messages read and
    written as they are, without an encoding policy)."""
    from azure.storage.queue import QueueClient

    value = env.get(connection, "").strip()
    uri = env.get(f"{connection}__queueServiceUri") or env.get(f"{connection}__serviceUri")
    if value:

        def from_string() -> QueueClient:
            try:
                return QueueClient.from_connection_string(value, queue, **options)
            except ValueError as exc:
                raise ConfigError(connection, "is not a valid storage connection string") from exc

        return _once(("queue", value, queue, _options_key(options)), from_string)
    if uri:
        client_id = env.get(f"{connection}__clientId")
        return _once(
            ("queue", uri, queue, client_id, _options_key(options)),
            lambda: QueueClient(uri, queue, credential=managed_identity(client_id), **options),
        )
    raise ConfigError(
        connection,
        f"is not set: give a storage connection string, or {connection}__queueServiceUri to "
        "use the managed identity",
    )


def table_client(
    connection: str, table: str, env: Mapping[str, str], **options: Any
) -> TableClient:
    """The client for table ``table`` of the connection ``connection`` (Table storage: the
    shared pacing ledger). ``X__tableServiceUri`` (or ``X__serviceUri``) selects an
    identity-based connection, as for blobs and queues."""
    from azure.data.tables import TableClient

    value = env.get(connection, "").strip()
    uri = env.get(f"{connection}__tableServiceUri") or env.get(f"{connection}__serviceUri")
    if value:

        def from_string() -> TableClient:
            try:
                return TableClient.from_connection_string(value, table, **options)
            except ValueError as exc:
                raise ConfigError(connection, "is not a valid storage connection string") from exc

        return _once(("table", value, table, _options_key(options)), from_string)
    if uri:
        client_id = env.get(f"{connection}__clientId")
        return _once(
            ("table", uri, table, client_id, _options_key(options)),
            lambda: TableClient(uri, table, credential=managed_identity(client_id), **options),
        )
    raise ConfigError(
        connection,
        f"is not set: give a storage connection string, or {connection}__tableServiceUri to "
        "use the managed identity",
    )
