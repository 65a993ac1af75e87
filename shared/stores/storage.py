"""Azure Storage clients from Functions-style connection settings.

A connection named ``X`` (``AzureWebJobsStorage`` by default) is either a connection string in
the setting ``X`` (``UseDevelopmentStorage=true`` means Azurite), or an identity-based
connection: ``X__blobServiceUri`` / ``X__queueServiceUri`` (or ``X__serviceUri``) with the
managed identity, user-assigned when ``X__clientId`` is set
(https://learn.microsoft.com/azure/azure-functions/functions-reference#common-properties-for-identity-based-connections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient


def blob_service(connection: str, env: Mapping[str, str], **options: Any) -> BlobServiceClient:
    """A blob service client for the connection ``connection`` (``options`` go to the SDK
    client, e.g. ``retry_total=0`` for a quick probe)."""
    from azure.storage.blob import BlobServiceClient

    value = env.get(connection, "").strip()
    uri = env.get(f"{connection}__blobServiceUri") or env.get(f"{connection}__serviceUri")
    if value:
        try:
            return BlobServiceClient.from_connection_string(value, **options)
        except ValueError as exc:
            raise ConfigError(connection, "is not a valid storage connection string") from exc
    if uri:
        from azure.identity import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=env.get(f"{connection}__clientId"))
        return BlobServiceClient(uri, credential=credential, **options)
    raise ConfigError(
        connection,
        f"is not set: give a storage connection string, or {connection}__blobServiceUri to "
        "use the managed identity",
    )


def queue_client(
    connection: str, queue: str, env: Mapping[str, str], **options: Any
) -> QueueClient:
    """A client for queue ``queue`` of the connection ``connection`` (messages read and written
    as they are, without an encoding policy)."""
    from azure.storage.queue import QueueClient

    value = env.get(connection, "").strip()
    uri = env.get(f"{connection}__queueServiceUri") or env.get(f"{connection}__serviceUri")
    if value:
        try:
            return QueueClient.from_connection_string(value, queue, **options)
        except ValueError as exc:
            raise ConfigError(connection, "is not a valid storage connection string") from exc
    if uri:
        from azure.identity import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=env.get(f"{connection}__clientId"))
        return QueueClient(uri, queue, credential=credential, **options)
    raise ConfigError(
        connection,
        f"is not set: give a storage connection string, or {connection}__queueServiceUri to "
        "use the managed identity",
    )
