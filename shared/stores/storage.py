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

#: What ``UseDevelopmentStorage=true`` stands for: Azurite's well-known account on its default
#: ports, on 127.0.0.1 or the ``DevelopmentStorageProxyUri`` host
#: (https://learn.microsoft.com/azure/storage/common/storage-use-azurite#connection-strings; the
#: key is Azurite's published development key, not a secret). The storage SDKs that
#: azure-kusto-ingest 6.0.4 pins (azure-storage-blob 12.26.0, azure-storage-queue 12.13.0) refuse
#: the shorthand ("Connection string missing required connection details"), and it is the
#: Functions default in local.settings.json.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint={host}:10000/devstoreaccount1;QueueEndpoint={host}:10001/devstoreaccount1;"
    "TableEndpoint={host}:10002/devstoreaccount1;"
)


def expand_connection_string(value: str) -> str:
    """``value`` with ``UseDevelopmentStorage=true`` spelled out (:data:`DEVELOPMENT_STORAGE`);
    any other connection string as it is."""
    fields = {
        key.strip().lower(): text.strip()
        for key, _, text in (part.partition("=") for part in value.split(";"))
        if key.strip()
    }
    if fields.get("usedevelopmentstorage", "").lower() != "true":
        return value
    host = fields.get("developmentstorageproxyuri") or "http://127.0.0.1"
    return DEVELOPMENT_STORAGE.format(host=host.rstrip("/"))


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


def _client(
    kind: str,
    connection: str,
    env: Mapping[str, str],
    from_string: Callable[[str], _T],
    from_uri: Callable[[str, ManagedIdentityCredential], _T],
    key: Hashable,
) -> _T:
    """The ``kind`` (blob, queue, table) client of the connection ``connection``: from its
    connection string, else from ``X__<kind>ServiceUri`` (or ``X__serviceUri``) with the
    managed identity (``X__clientId``: user-assigned), built once per ``key``."""
    value = expand_connection_string(env.get(connection, "").strip())
    uri = env.get(f"{connection}__{kind}ServiceUri") or env.get(f"{connection}__serviceUri")
    if value:

        def build() -> _T:
            try:
                return from_string(value)
            except ValueError as exc:
                raise ConfigError(connection, "is not a valid storage connection string") from exc

        return _once((kind, value, key), build)
    if uri:
        client_id = env.get(f"{connection}__clientId")
        return _once(
            (kind, uri, client_id, key), lambda: from_uri(uri, managed_identity(client_id))
        )
    raise ConfigError(
        connection,
        f"is not set: give a storage connection string, or {connection}__{kind}ServiceUri to "
        "use the managed identity",
    )


def blob_service(connection: str, env: Mapping[str, str], **options: Any) -> BlobServiceClient:
    """The blob service client for the connection ``connection`` (``options`` go to the SDK
    client, e.g. ``retry_total=0`` for a quick probe; each set of options has its client)."""
    from azure.storage.blob import BlobServiceClient

    return _client(
        "blob",
        connection,
        env,
        lambda text: BlobServiceClient.from_connection_string(text, **options),
        lambda uri, credential: BlobServiceClient(uri, credential=credential, **options),
        _options_key(options),
    )


def queue_client(
    connection: str, queue: str, env: Mapping[str, str], **options: Any
) -> QueueClient:
    """The client for queue ``queue`` of the connection ``connection`` (messages read and
    written as they are, without an encoding policy)."""
    from azure.storage.queue import QueueClient

    return _client(
        "queue",
        connection,
        env,
        lambda text: QueueClient.from_connection_string(text, queue, **options),
        lambda uri, credential: QueueClient(uri, queue, credential=credential, **options),
        (queue, _options_key(options)),
    )


def table_client(
    connection: str, table: str, env: Mapping[str, str], **options: Any
) -> TableClient:
    """The client for table ``table`` of the connection ``connection`` (Table storage: the
    shared pacing ledger)."""
    from azure.data.tables import TableClient

    return _client(
        "table",
        connection,
        env,
        lambda text: TableClient.from_connection_string(text, table, **options),
        lambda uri, credential: TableClient(uri, table, credential=credential, **options),
        (table, _options_key(options)),
    )
