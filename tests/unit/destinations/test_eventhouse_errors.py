"""The Kusto clients' exceptions, built as the clients build them (azure-kusto-data 6.0.4
client_base._handle_http_error and client._execute), translated into shared.errors in one place
(shared.destinations.eventhouse.translate); and a real connection refused through the client."""

from __future__ import annotations

import socket

import pytest
import requests
import urllib3
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.kusto.data.exceptions import (
    KustoApiError,
    KustoAuthenticationError,
    KustoBlobError,
    KustoNetworkError,
    KustoServiceError,
    KustoThrottlingError,
)

from shared.destinations.auth import StaticTokenProvider
from shared.destinations.eventhouse import EventhouseClient, encode_rows, translate
from shared.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    TransientError,
    ValidationError,
)

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.secret-token-body.sig"


def response(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer.headers.update({"x-ms-activity-id": "activity-1"} | (headers or {}))
    return answer


def api_error(status: int, code: str, permanent: bool | None, message: str = "m") -> KustoApiError:
    """What the client raises for a JSON error body (the documented OneApi shape)."""
    error: dict[str, object] = {"code": code, "message": message, "@message": f"{code} details"}
    if permanent is not None:
        error["@permanent"] = permanent
    return KustoApiError({"error": error}, http_response=response(status))


def test_throttling_is_transient_and_never_delivered() -> None:
    exc = KustoThrottlingError("The request was throttled by the server.", response(429))
    error = translate(exc, "ingest")
    assert type(error) is TransientError
    assert error.status == 429 and not error.maybe_delivered and error.retry_after is None
    assert error.request_id == "activity-1"


def test_throttling_with_a_retry_after_keeps_it() -> None:
    exc = KustoThrottlingError("throttled", response(429, {"Retry-After": "7"}))
    error = translate(exc, "ingest")
    assert isinstance(error, TransientError) and error.retry_after == 7


@pytest.mark.parametrize(
    ("status", "code", "permanent", "kind"),
    [
        (400, "BadRequest_TableNotExist", True, NotFoundError),
        (400, "BadRequest_DatabaseNotExist", True, NotFoundError),
        (400, "BadRequest_MappingReferenceWasNotFound", True, NotFoundError),
        (400, "General_BadRequest", True, ValidationError),
        (413, "PayloadTooLarge", True, ValidationError),
        (403, "Forbidden", True, AuthError),
        (401, "Unauthorized", True, AuthError),
        (400, "General_InternalServerError", False, TransientError),  # the SDK's transient mock
        (500, "InternalServiceError", None, TransientError),
        (503, "ServiceUnavailable", False, TransientError),
        (409, "Conflict", True, PermanentError),
    ],
)
def test_api_errors_by_status_code_and_permanence(
    status: int, code: str, permanent: bool | None, kind: type[Exception]
) -> None:
    error = translate(api_error(status, code, permanent, "Request is invalid"), "run .x")
    assert type(error) is kind
    assert error.status == status and error.code == code
    assert "Request is invalid" in str(error) and f"{code} details" in str(error)


def test_a_server_error_may_have_stored_the_rows() -> None:
    error = translate(api_error(500, "InternalServiceError", None), "ingest")
    assert isinstance(error, TransientError) and error.maybe_delivered
    error = translate(api_error(400, "General_InternalServerError", False), "ingest")
    assert isinstance(error, TransientError) and not error.maybe_delivered


def test_streaming_off_is_permanent_and_says_so() -> None:
    """The client's own message for a 404 on /v1/rest/ingest (client_base.py)."""
    exc = KustoServiceError(
        "The ingestion endpoint does not exist. Please enable streaming ingestion on your cluster.",
        response(404),
    )
    error = translate(exc, "ingest")
    assert type(error) is PermanentError and "streaming ingestion is off" in str(error)
    policy = translate(
        api_error(400, "BadRequest_StreamingIngestionPolicyNotEnabled", True), "ingest"
    )
    assert type(policy) is PermanentError and "streaming ingestion is off" in str(policy)


def test_401_without_a_body() -> None:
    error = translate(KustoServiceError("401. Missing adequate access rights.", response(401)), "q")
    assert type(error) is AuthError and error.status == 401


def test_a_token_provider_error_comes_through_unchanged() -> None:
    inner = ConfigError("POWERBI_AUTH", "the managed identity is not available")
    assert translate(KustoAuthenticationError("TokenProvider", inner), "q") is inner
    other = translate(KustoAuthenticationError("TokenProvider", RuntimeError("no")), "q")
    assert type(other) is AuthError


def test_network_errors_say_whether_the_request_may_have_landed() -> None:
    refused = requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/",
            urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        )
    )
    try:
        raise KustoNetworkError("http://127.0.0.1:1/v1/rest/ingest/db/T") from refused
    except KustoNetworkError as exc:
        error = translate(exc, "ingest")
    assert isinstance(error, TransientError) and not error.maybe_delivered
    try:
        raise KustoNetworkError(
            "http://x/v1/rest/ingest/db/T"
        ) from requests.exceptions.ReadTimeout()
    except KustoNetworkError as exc:
        error = translate(exc, "ingest")
    assert isinstance(error, TransientError) and error.maybe_delivered


def test_upload_failures_of_queued_ingestion_store_nothing() -> None:
    sas = "http://127.0.0.1:10000/devstoreaccount1/c/b?sv=2022&sig=SECRETSIGNATURE"
    down = translate(KustoBlobError(ServiceRequestError(f"cannot reach {sas}")), "queue")
    assert isinstance(down, TransientError) and not down.maybe_delivered
    refused = HttpResponseError(message=f"AuthorizationFailure {sas}")
    refused.status_code = 403
    error = translate(KustoBlobError(refused), "queue")
    assert isinstance(error, AuthError)
    for each in (down, refused, error):
        assert "SECRETSIGNATURE" not in str(translate(each, "x"))


def test_no_token_in_any_message() -> None:
    exc = KustoServiceError(f"echoed header Authorization: Bearer {TOKEN}", response(400))
    assert TOKEN not in str(translate(exc, "q"))
    assert "secret-token-body" not in str(translate(exc, "q"))


def test_a_refused_connection_through_the_real_client() -> None:
    """No mock: the client against a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        EventhouseClient(
            uri=f"http://127.0.0.1:{port}",
            ingest_uri=f"http://127.0.0.1:{port}",
            tokens=StaticTokenProvider(TOKEN),
            database="Sales",
        ) as client,
        pytest.raises(TransientError) as caught,
    ):
        client.count("Product")
    assert not caught.value.maybe_delivered
    assert TOKEN not in str(caught.value)


def test_tokens_only_over_https_or_loopback() -> None:
    with pytest.raises(ConfigError) as caught:
        EventhouseClient(
            uri="http://help.kusto.windows.net",
            ingest_uri="https://ingest-help.kusto.windows.net",
            tokens=StaticTokenProvider(TOKEN),
        )
    assert caught.value.setting == "EVENTHOUSE_URI"


def test_no_database_is_named() -> None:
    with (
        EventhouseClient(
            uri="http://127.0.0.1:9",
            ingest_uri="http://127.0.0.1:9",
            tokens=StaticTokenProvider("t"),
        ) as client,
        pytest.raises(ConfigError) as caught,
    ):
        client.count("T")
    assert caught.value.setting == "EVENTHOUSE_DATABASE"


def test_rows_are_json_lines() -> None:
    body, count = encode_rows([{"a": 1, "b": "x"}, {"a": None, "b": "é"}])
    assert count == 2
    assert body == '{"a":1,"b":"x"}\n{"a":null,"b":"é"}\n'.encode()
