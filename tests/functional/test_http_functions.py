"""The HTTP functions called directly with ``func.HttpRequest``, against the emulator and Azurite.

Each test sets the app settings, resets the process-wide singletons, and calls the function the
way the worker does. Nothing is mocked: Power BI is the emulator, storage is Azurite.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.storage.blob import BlobServiceClient

import function_app
from functions import http
from shared import runtime
from tests.azurite import Azurite
from tests.emulator.conftest import IDENTITY_HEADER, REPO, WORKSPACE_ID, WORKSPACE_NAME, Api

PRODUCT_COLUMNS = [
    {"name": "ProductID", "dataType": "Int64"},
    {"name": "Manufacturer", "dataType": "string"},
    {"name": "Category", "dataType": "string"},
    {"name": "Segment", "dataType": "string"},
    {"name": "Product", "dataType": "string"},
    {"name": "IsCompete", "dataType": "bool"},
]
SECRET = "webhook-shared-secret"


class Out(func.Out[list[str]]):
    """The output binding as the worker gives it: set() once, get() what was set."""

    def __init__(self) -> None:
        self.value: list[str] | None = None

    def set(self, val: list[str]) -> None:
        self.value = val

    def get(self) -> list[str]:
        assert self.value is not None
        return self.value


@pytest.fixture
def settings(
    api: Api, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """App settings pointing at the emulator (managed identity) and Azurite."""
    for key in list(os.environ):
        if key.startswith(("POWERBI_", "IDENTITY_", "MSI_", "HTTP_", "WEBHOOK_", "DEADLETTER_")):
            monkeypatch.delenv(key)
    values = {
        "POWERBI_API_URL": api.emulator.base,
        "POWERBI_AUTH": "managed_identity",
        "IDENTITY_ENDPOINT": f"{api.emulator.base}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "POWERBI_WORKSPACE_NAME": WORKSPACE_NAME,
        "AzureWebJobsStorage": azurite.connection_string,
        "ROWS_QUEUE": "rows",
        "CLAIMCHECK_CONTAINER": f"claims-{uuid.uuid4().hex[:8]}",
        # The suites make their datasets in the emulator, without definitions: every target
        # is allowed here (ALLOWED_TARGETS and its default have their own tests).
        "ALLOWED_TARGETS": "*/*",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield values
    runtime.reset()


@pytest.fixture
def dataset(api: Api, settings: dict[str, str]) -> str:
    """A fresh SalesMarketing-shaped dataset in the workspace; returns its name."""
    name = f"Hooks-{uuid.uuid4().hex[:8]}"
    api.create_dataset([{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name)
    return name


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"ProductID": i, "Manufacturer": "Contoso", "Product": f"P{i}", "IsCompete": True}
        for i in range(start, start + count)
    ]


def request(
    url: str,
    body: bytes | dict[str, Any] | list[Any],
    *,
    route: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> func.HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return func.HttpRequest(
        "POST",
        url,
        headers={"Content-Type": "application/json", **(headers or {})},
        params=params or {},
        route_params=route or {},
        body=raw,
    )


def add_rows(dataset: str, body: Any, **kwargs: Any) -> tuple[func.HttpResponse, Out]:
    out = Out()
    req = request(
        f"http://localhost/api/datasets/{dataset}/tables/Product/rows",
        body,
        route={"dataset": dataset, "table": "Product"},
        **kwargs,
    )
    return http.add_rows(req, out), out


def post_rows(body: Any, **kwargs: Any) -> tuple[func.HttpResponse, Out]:
    out = Out()
    return http.post_rows(request("http://localhost/api/rows", body, **kwargs), out), out


def answer(response: func.HttpResponse) -> Any:
    assert response.mimetype == "application/json"
    return json.loads(response.get_body())


def stored(api: Api, name: str) -> list[dict[str, Any]]:
    groups = api.request("GET", f"{api.prefix(WORKSPACE_ID)}/datasets").json()["value"]
    (dataset_id,) = [d["id"] for d in groups if d["name"] == name]
    return api.stored_rows(dataset_id, "Product")


# -- the happy paths ---------------------------------------------------------------------------


def test_power_bi_compatible_route_pushes_now(api: Api, dataset: str) -> None:
    """{"rows": [...]} to the Add Rows route: 200 with the PushResult, rows in Power BI."""
    response, out = add_rows(dataset, {"rows": rows(3)})
    body = answer(response)
    assert response.status_code == 200, body
    assert (body["received"], body["sent"], body["rejected"]) == (3, 3, 0)
    assert [r["ProductID"] for r in stored(api, dataset)] == [0, 1, 2]
    assert out.value is None


def test_invalid_rows_come_back_with_index_and_reason(api: Api, dataset: str) -> None:
    """Valid rows are pushed (200); invalid ones are listed with index and reason, not sent,
    and dead-lettered (a sender that reads only the status loses nothing); a body none of
    whose rows can be stored is a 400, not a 200."""
    payload = [*rows(2), {"ProductID": "seven"}, {"Nope": 1}]
    response, _ = add_rows(dataset, {"rows": payload})
    body = answer(response)
    assert response.status_code == 200
    assert (body["sent"], body["rejected"], body["deadLettered"]) == (2, 2, 2)
    assert body["deadLetterLocation"]
    assert [(p["index"], p["column"]) for p in body["problems"]] == [(2, "ProductID"), (3, "Nope")]
    assert len(stored(api, dataset)) == 2

    none_good, _ = add_rows(dataset, {"rows": payload[2:]})
    assert none_good.status_code == 400
    assert (answer(none_good)["sent"], answer(none_good)["deadLettered"]) == (0, 2)
    assert len(stored(api, dataset)) == 2


def test_envelope_and_array_of_envelopes(api: Api, dataset: str) -> None:
    """POST /api/rows takes one envelope, or an array of them (one result each)."""
    one, _ = post_rows({"dataset": dataset, "table": "Product", "rows": rows(1)})
    assert one.status_code == 200 and answer(one)["sent"] == 1
    many, _ = post_rows(
        [
            {"dataset": dataset, "table": "Product", "rows": rows(2, 10)},
            {
                "dataset": dataset,
                "table": "Product",
                "workspace": WORKSPACE_ID,
                "rows": rows(1, 20),
            },
        ]
    )
    body = answer(many)
    assert many.status_code == 200 and [r["sent"] for r in body["results"]] == [2, 1]
    assert sorted(r["ProductID"] for r in stored(api, dataset)) == [0, 10, 11, 20]


def test_ndjson_with_the_target_in_the_query(api: Api, dataset: str) -> None:
    """NDJSON rows, one per line, with ?dataset=&table= ."""
    body = "\n".join(json.dumps(r) for r in rows(3)).encode() + b"\n\n"
    response, _ = post_rows(
        body,
        params={"dataset": dataset, "table": "Product"},
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200 and answer(response)["sent"] == 3
    assert len(stored(api, dataset)) == 3


def test_async_mode_queues_the_envelope_and_answers_202(api: Api, dataset: str) -> None:
    """?mode=queue checks the shape, sets the queue output binding, answers 202; no push yet."""
    response, out = add_rows(dataset, {"rows": rows(2)}, params={"mode": "queue"})
    assert response.status_code == 202 and answer(response) == {"queued": 1, "rows": 2}
    assert out.value is not None and len(out.value) == 1
    message = json.loads(base64.b64decode(out.value[0]))
    assert message == {"dataset": dataset, "table": "Product", "rows": rows(2)}
    assert stored(api, dataset) == []


def test_big_async_payload_goes_by_claim_check(
    settings: dict[str, str], azurite: Azurite, dataset: str
) -> None:
    """An envelope too big for a queue message is parked in a blob; the message names it."""
    big = rows(2_000)
    response, out = add_rows(dataset, {"rows": big}, params={"mode": "queue"})
    assert response.status_code == 202
    assert out.value is not None
    message = json.loads(base64.b64decode(out.value[0]))
    assert "rows" not in message and message["blob"].startswith(settings["CLAIMCHECK_CONTAINER"])
    container, _, name = message["blob"].partition("/")
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    parked = json.loads(service.get_container_client(container).download_blob(name).readall())
    assert parked["rows"] == big
    # What a queue message holds is at most 64 KB once base64-encoded.
    assert len(out.value[0]) < 64 * 1024


def test_health_reports_settings_without_secrets(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/health: 200, both services reachable, and no secret in the answer."""
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    runtime.reset()
    response = http.health(
        func.HttpRequest("GET", "http://localhost/api/health", headers={}, body=b"")
    )
    body = answer(response)
    assert response.status_code == 200, body
    assert body["powerbi"]["reachable"] and body["storage"]["reachable"]
    text = response.get_body().decode()
    assert SECRET not in text and "AccountKey" not in text and IDENTITY_HEADER not in text
    assert body["settings"]["webhook_signature"] == "required"


def test_health_says_what_is_down(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Power BI unreachable, health answers 503 and says which check failed."""
    monkeypatch.setenv("POWERBI_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("POWERBI_AUTH", "static")
    monkeypatch.setenv("POWERBI_STATIC_TOKEN", "t")
    runtime.reset()
    response = http.health(
        func.HttpRequest("GET", "http://localhost/api/health", headers={}, body=b"")
    )
    body = answer(response)
    assert response.status_code == 503 and body["status"] == "degraded"
    assert not body["powerbi"]["reachable"] and body["storage"]["reachable"]


# -- signatures --------------------------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("sha256=" + "0" * 64, 401), ("garbage", 401), ("good", 200)],
    ids=["missing", "wrong", "malformed", "right"],
)
def test_signature_when_a_secret_is_configured(
    api: Api, dataset: str, monkeypatch: pytest.MonkeyPatch, header: str | None, status: int
) -> None:
    """With WEBHOOK_SECRET set, only a matching X-Signature-256 gets rows pushed."""
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    runtime.reset()
    body = json.dumps({"rows": rows(1)}).encode()
    headers = (
        {} if header is None else {"X-Signature-256": sign(body) if header == "good" else header}
    )
    response, _ = add_rows(dataset, body, headers=headers)
    assert response.status_code == status
    assert len(stored(api, dataset)) == (1 if status == 200 else 0)
    if status == 401:
        assert SECRET not in response.get_body().decode()


def test_no_signature_needed_without_a_secret(api: Api, dataset: str) -> None:
    """Without WEBHOOK_SECRET the signature header is not required (nor checked)."""
    response, _ = add_rows(dataset, {"rows": rows(1)}, headers={"X-Signature-256": "anything"})
    assert response.status_code == 200


# -- bad input: a 4xx a person can act on, and nothing pushed -----------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "params", "status", "says"),
    [
        (b'{"rows": [1, 2', {}, {}, 400, "line 1, column"),
        (b"\xff\xfe{}", {}, {}, 400, "not UTF-8"),
        (b'{"rows": {"a": 1}}', {}, {}, 400, "rows must be an array"),
        (b"[1, 2]", {}, {}, 400, "must be a JSON object"),
        (b'{"rows": []}', {"Content-Type": "application/xml"}, {}, 415, "application/json"),
        (b'{"rows": []}', {}, {"mode": "later"}, 400, "mode must be"),
        (b"[" * 100_000 + b"]" * 100_000, {}, {}, 400, "nested too deeply"),
    ],
    ids=["truncated", "not-utf8", "rows-object", "not-object", "xml", "bad-mode", "deep"],
)
def test_bad_bodies_on_the_power_bi_route(
    api: Api,
    dataset: str,
    body: bytes,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
    says: str,
) -> None:
    """Each malformed request gets its own 4xx with a message that says what to fix."""
    response, out = add_rows(dataset, body, headers=headers, params=params)
    payload = answer(response)
    assert response.status_code == status, payload
    assert says in payload["error"]["message"]
    assert out.value is None and stored(api, dataset) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"table": "Product", "rows": []}, "body.dataset"),
        ({"dataset": "", "table": "Product", "rows": []}, "body.dataset"),
        ({"dataset": "d", "rows": []}, "body.table"),
        ({"dataset": "d", "table": "Product", "workspace": 5, "rows": []}, "body.workspace"),
        ({"dataset": "d", "table": "Product"}, "body.rows"),
        ([{"dataset": "d", "table": "T", "rows": []}, {"dataset": "d"}], "body[1].table"),
        ([], "body"),
        ({"dataset": "d", "table": "T", "blob": "c/n"}, "blob"),
    ],
)
def test_wrong_envelope_shape_names_the_field(
    settings: dict[str, str], body: Any, field: str
) -> None:
    """A wrong envelope is a 400 that names the field."""
    response, out = post_rows(body)
    payload = answer(response)
    assert response.status_code == 400
    assert payload["error"]["field"] == field and out.value is None


def test_ndjson_without_a_target_or_with_a_bad_line(settings: dict[str, str]) -> None:
    """NDJSON needs ?dataset= and ?table=; a bad line is named by its number."""
    headers = {"Content-Type": "application/x-ndjson"}
    missing, _ = post_rows(b'{"a": 1}\n', headers=headers, params={"table": "T"})
    assert missing.status_code == 400 and answer(missing)["error"]["field"] == "query.dataset"
    bad, _ = post_rows(b'{"a": 1}\n{oops\n', headers=headers, params={"dataset": "d", "table": "T"})
    assert bad.status_code == 400 and "line 2" in answer(bad)["error"]["message"]


def test_body_over_the_limit_is_413(
    api: Api, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body over HTTP_MAX_BODY_BYTES is refused with 413 before it is read as JSON."""
    monkeypatch.setenv("HTTP_MAX_BODY_BYTES", "1000")
    runtime.reset()
    response, _ = add_rows(dataset, {"rows": rows(100)})
    assert (
        response.status_code == 413
        and "HTTP_MAX_BODY_BYTES" in answer(response)["error"]["message"]
    )
    assert stored(api, dataset) == []


def test_unknown_dataset_without_definition_is_404(settings: dict[str, str]) -> None:
    """No such dataset and no datasets/<name>.json: 404 saying so."""
    response, _ = add_rows(f"Nope-{uuid.uuid4().hex[:6]}", {"rows": rows(1)})
    body = answer(response)
    assert response.status_code == 404
    assert body["error"]["code"] == "NotFoundError" and body["sent"] == 0
    assert "does not exist" in body["error"]["message"]


def test_unknown_table_is_404(dataset: str) -> None:
    """A table the dataset does not have: 404."""
    out = Out()
    req = request(
        f"http://localhost/api/datasets/{dataset}/tables/Nope/rows",
        {"rows": rows(1)},
        route={"dataset": dataset, "table": "Nope"},
    )
    response = http.add_rows(req, out)
    assert response.status_code == 404 and "no table 'Nope'" in answer(response)["error"]["message"]


def test_throttled_past_the_time_budget_is_429_with_retry_after(
    api: Api, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When Power BI asks to wait longer than the time budget, the caller gets 429 + Retry-After
    and the rows are not pushed."""
    monkeypatch.setenv("HTTP_TIME_BUDGET_SECONDS", "2")
    runtime.reset()
    add_rows(dataset, {"rows": rows(1)})  # resolve the dataset first
    api.set_faults(script=["throttle"], retry_after=30)
    response, _ = add_rows(dataset, {"rows": rows(1, 100)})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert answer(response)["sent"] == 0
    assert [r["ProductID"] for r in stored(api, dataset)] == [0]


def test_a_retry_after_over_the_cap_is_answered_at_once_not_waited(
    api: Api, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power BI asks for 30 s, within the 200 s budget but over POWERBI_MAX_RETRY_AFTER_SECONDS
    (5): the request is not held for 30 s but answered 429 with the service's Retry-After (30),
    and nothing is pushed. (Without the cap it would wait 30 s and answer 200.)"""
    monkeypatch.setenv("POWERBI_MAX_RETRY_AFTER_SECONDS", "5")
    runtime.reset()
    add_rows(dataset, {"rows": rows(1)})  # resolve the dataset first
    api.set_faults(script=["throttle"], retry_after=30)
    response, _ = add_rows(dataset, {"rows": rows(1, 100)})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert answer(response)["sent"] == 0
    assert [r["ProductID"] for r in stored(api, dataset)] == [0]


def test_config_error_is_500_naming_the_setting(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken deployment setting is the app's fault (500), and the message names it."""
    monkeypatch.setenv("POWERBI_CLOUD", "Mars")
    runtime.reset()
    response, _ = add_rows("d", {"rows": rows(1)})
    assert response.status_code == 500 and "POWERBI_CLOUD" in answer(response)["error"]["message"]


# -- the function metadata ---------------------------------------------------------------------


def test_function_metadata_matches_the_readme() -> None:
    """Names, triggers, routes, methods, auth levels and bindings are what the README documents."""
    http_found = {}
    queue_found = {}  # every non-HTTP trigger
    for function in function_app.app.get_functions():
        bindings = json.loads(function.get_function_json())["bindings"]
        outputs = sorted(
            (b["type"], b.get("queueName", ""), b.get("connection", ""))
            for b in bindings
            if b["direction"] == "OUT" and b["type"] != "http"
        )
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        if trigger["type"] == "httpTrigger":
            http_found[function.get_function_name()] = (
                trigger["route"],
                trigger["methods"],
                trigger["authLevel"],
                outputs,
            )
        else:
            queue_found[function.get_function_name()] = (
                trigger["type"],
                trigger.get("queueName") or trigger.get("path"),
                trigger.get("connection"),
                trigger.get("source"),
            )
    queue = [("queue", "%ROWS_QUEUE%", "AzureWebJobsStorage")]
    assert http_found == {
        "add_rows": ("datasets/{dataset}/tables/{table}/rows", ["POST"], "FUNCTION", queue),
        "post_rows": ("rows", ["POST"], "FUNCTION", queue),
        "health": ("health", ["GET"], "FUNCTION", []),
        # doctor's checks with the app's identity: the master key only.
        "doctor": ("doctor", ["GET"], "ADMIN", []),
        # Power BI's surface: anonymous for the host, the function checks the bearer key.
        "powerbi": ("v1.0/myorg/{*path}", ["GET", "POST", "DELETE"], "ANONYMOUS", queue),
    }
    assert queue_found == {
        "ingest_queue": ("queueTrigger", "%ROWS_QUEUE%", "AzureWebJobsStorage", None),
        "ingest_blob": (
            "blobTrigger",
            "%INGEST_CONTAINER%/{name}",
            "AzureWebJobsStorage",
            "EventGrid",
        ),
        "blob_created": ("eventGridTrigger", None, None, None),
    }
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, (route, methods, _, _) in http_found.items():
        assert f"`{methods[0]} /api/{route}`" in readme, f"README does not document {name}"
    for name in queue_found:
        assert f"`{name}`" in readme, f"README does not document {name}"
    assert "`%ROWS_QUEUE%`" in readme and "`%INGEST_CONTAINER%`" in readme
