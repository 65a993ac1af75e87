"""``UseDevelopmentStorage=true``, the Functions default in local.settings.json, reaches Azurite's
default ports through every storage client the app and devhost build: the storage SDK versions
azure-kusto-ingest pins (blob 12.26.0, queue 12.13.0) refuse the shorthand themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devhost.host import connection_string
from shared.stores import storage
from shared.stores.storage import (
    blob_service,
    expand_connection_string,
    queue_client,
    table_client,
)


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    storage.forget()
    yield
    storage.forget()


def test_every_client_of_the_shorthand_points_at_azurite_default_ports() -> None:
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    assert blob_service("AzureWebJobsStorage", env).url.startswith(
        "http://127.0.0.1:10000/devstoreaccount1"
    )
    assert queue_client("AzureWebJobsStorage", "rows", env).url == (
        "http://127.0.0.1:10001/devstoreaccount1/rows"
    )
    assert table_client("AzureWebJobsStorage", "pacing", env).url.startswith(
        "http://127.0.0.1:10002/devstoreaccount1"
    )


def test_a_proxy_host_and_any_spelling_of_the_keys() -> None:
    expanded = expand_connection_string(
        " usedevelopmentstorage = TRUE ; DevelopmentStorageProxyUri=http://azurite.local/ "
    )
    assert "BlobEndpoint=http://azurite.local:10000/devstoreaccount1;" in expanded
    assert "AccountName=devstoreaccount1;" in expanded


def test_other_connection_strings_are_left_as_they_are() -> None:
    real = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;"
        "EndpointSuffix=core.windows.net"
    )
    assert expand_connection_string(real) == real
    assert expand_connection_string("UseDevelopmentStorage=false") == "UseDevelopmentStorage=false"


def test_devhost_bindings_read_the_shorthand_too() -> None:
    binding = {"connection": "AzureWebJobsStorage"}
    text = connection_string(binding, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;" in text
