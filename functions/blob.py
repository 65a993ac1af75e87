"""Blob trigger: a thin adapter from an uploaded file to :mod:`shared.sources.blob_ingest`.

The Event Grid source (``source=EVENT_GRID``) is the only blob trigger on the Flex Consumption
plan, and the SDK-type ``BlobClient`` binding (azurefunctions-extensions-bindings-blob) lets the
file be streamed in chunks instead of loaded whole, as the plain ``InputStream`` binding does.
Files go in ``%INGEST_CONTAINER%`` at ``<dataset>/<table>/<name>.(csv|ndjson|json)[.gz]``.
"""

from __future__ import annotations

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_sdk

from shared.runtime import get_blob_events, get_blob_ingest

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the library leaves __init__ untyped


@bp.function_name("ingest_blob")
@bp.blob_trigger(
    arg_name="blob",
    path="%INGEST_CONTAINER%/{name}",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def ingest_blob(blob: blob_sdk.BlobClient) -> None:
    """Push the file's rows from its checkpoint on; hand the rest on if time runs short."""
    get_blob_ingest().handle(blob)


@bp.function_name("blob_created")
@bp.event_grid_trigger(arg_name="event")
def blob_created(event: func.EventGridEvent) -> None:
    """A BlobCreated event from another storage account: ingest the blob it names, if its
    account is on BLOB_ALLOWED_HOSTS (CloudEvents deliveries arrive with ``type``)."""
    event_type = getattr(event, "event_type", None) or getattr(event, "type", "")
    data = event.get_json()
    get_blob_events().handle(str(event_type), data if isinstance(data, dict) else {})
