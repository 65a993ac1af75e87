"""The HTTP functions over real HTTP through devhost: NDJSON, signatures and bad input, with
nothing pushed for a refused request."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.azurite import Azurite
from tests.emulator.conftest import WORKSPACE_ID, Api, EmulatorProcess
from tests.integration.test_devhost import (
    PRODUCT_COLUMNS,
    ROWS,
    Devhost,
    app_environment,
    start_devhost,
)

SECRET = "devhost-webhook-secret"


@pytest.fixture(scope="module")
def signed_host(
    emulator: EmulatorProcess, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Devhost]:
    """devhost with WEBHOOK_SECRET and a 64 KB body limit; the queue trigger disabled."""
    settings: Path = tmp_path_factory.mktemp("signed") / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    env = app_environment(emulator, azurite, f"rows{uuid.uuid4().hex[:8]}")
    env.update(
        WEBHOOK_SECRET=SECRET,
        HTTP_MAX_BODY_BYTES="65536",
        **{"AzureWebJobs.ingest_queue.Disabled": "true"},
    )
    host = start_devhost(env, settings)
    yield host
    host.stop()


@pytest.fixture
def dataset(api: Api) -> tuple[str, str]:
    name = f"Signed-{uuid.uuid4().hex[:8]}"
    return name, api.create_dataset(
        [{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name
    )


def post(host: Devhost, path: str, body: bytes, **headers: str) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    return session.post(f"{host.base}/api/{path}", data=body, headers=headers, timeout=60)


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_signed_ndjson_is_pushed(signed_host: Devhost, api: Api, dataset: tuple[str, str]) -> None:
    """NDJSON rows with the target in the query and a right signature are pushed."""
    name, dataset_id = dataset
    body = "\n".join(json.dumps(row) for row in ROWS).encode()
    response = post(
        signed_host,
        f"rows?dataset={name}&table=Product",
        body,
        **{"Content-Type": "application/x-ndjson", "X-Signature-256": signature(body)},
    )
    assert response.status_code == 200, response.text
    assert response.json()["sent"] == 2
    assert len(api.stored_rows(dataset_id, "Product")) == 2


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b'{"rows": []}', {}, 401, "X-Signature-256"),
        (b'{"rows": []}', {"X-Signature-256": "sha256=" + "0" * 64}, 401, "does not match"),
        (b'{"rows": [' + b"1," * 40_000 + b"1]}", "sign", 413, "HTTP_MAX_BODY_BYTES"),
        (b'{"rows": [1, 2', "sign", 400, "line 1, column"),
        (b'{"rows": {}}', "sign", 400, "rows must be an array"),
        (b'{"rows": []}', "sign-xml", 415, "application/json"),
    ],
    ids=["unsigned", "wrong-signature", "too-large", "not-json", "wrong-shape", "xml"],
)
def test_refused_requests_push_nothing(
    signed_host: Devhost,
    api: Api,
    dataset: tuple[str, str],
    body: bytes,
    headers: dict[str, str] | str,
    status: int,
    says: str,
) -> None:
    """Each refused request gets its 4xx and an actionable message; no row reaches Power BI."""
    name, dataset_id = dataset
    sent_headers = {"Content-Type": "application/json"}
    if headers in ("sign", "sign-xml"):
        sent_headers["X-Signature-256"] = signature(body)
        if headers == "sign-xml":
            sent_headers["Content-Type"] = "application/xml"
    elif isinstance(headers, dict):
        sent_headers.update(headers)
    response = post(signed_host, f"datasets/{name}/tables/Product/rows", body, **sent_headers)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert SECRET not in response.text
    assert api.stored_rows(dataset_id, "Product") == []
