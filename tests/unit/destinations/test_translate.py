"""Error translation: every upstream failure becomes one of the bundle's errors, in one place."""

from __future__ import annotations

import http.client
import json

import pytest
import requests
import urllib3.exceptions

from shared.destinations.powerbi import translate
from shared.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    PushError,
    TransientError,
    ValidationError,
)


def response(status: int, body: object = None, **headers: str) -> requests.Response:
    """A requests.Response as the transport would build it (no network)."""
    made = requests.Response()
    made.status_code = status
    made.reason = http.client.responses.get(status, "")
    made._content = b"" if body is None else json.dumps(body).encode()
    made.headers.update(headers)
    return made


def refused() -> requests.exceptions.ConnectionError:
    pool_error = urllib3.exceptions.MaxRetryError(
        None,
        "/",
        urllib3.exceptions.NewConnectionError(None, "Connection refused"),  # type: ignore[arg-type]
    )
    return requests.exceptions.ConnectionError(pool_error)


def reset() -> requests.exceptions.ConnectionError:
    cause = urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("closed")
    )
    return requests.exceptions.ConnectionError(cause)


@pytest.mark.parametrize(
    ("failure", "kind", "maybe_delivered"),
    [
        (refused(), TransientError, False),
        (requests.exceptions.ConnectTimeout(), TransientError, False),
        (reset(), TransientError, True),
        (requests.exceptions.ReadTimeout(), TransientError, True),
        (requests.exceptions.ChunkedEncodingError(), TransientError, True),
        (requests.exceptions.ContentDecodingError(), TransientError, True),
        (requests.exceptions.RetryError(), TransientError, True),
        (requests.exceptions.TooManyRedirects(), TransientError, True),
        (requests.exceptions.SSLError(), ConfigError, None),
        (requests.exceptions.InvalidURL(), ConfigError, None),
        (requests.exceptions.MissingSchema(), ConfigError, None),
    ],
)
def test_transport_failures(
    failure: requests.RequestException, kind: type[PushError], maybe_delivered: bool | None
) -> None:
    """Nothing sent (refused, connect timeout) is safe to re-send; a lost answer may have
    landed; TLS and URL problems are configuration."""
    error = translate(failure, "add rows")
    assert type(error) is kind
    if maybe_delivered is not None:
        assert isinstance(error, TransientError) and error.maybe_delivered is maybe_delivered


def test_every_requests_exception_is_translated() -> None:
    """Each exception class requests can raise maps to a PushError (none escapes untranslated)."""

    def subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    classes = {requests.RequestException} | subclasses(requests.RequestException)
    for cls in classes:
        if not cls.__module__.startswith("requests"):
            continue
        # JSONDecodeError needs its parse position; the others take no arguments.
        made = cls("bad", "doc", 0) if issubclass(cls, ValueError) else cls()
        error = translate(made, "call")  # type: ignore[arg-type]
        assert isinstance(error, PushError), cls


@pytest.mark.parametrize(
    ("status", "kind", "maybe_delivered"),
    [
        (400, ValidationError, None),
        (401, AuthError, None),
        (403, AuthError, None),
        (404, NotFoundError, None),
        (405, PermanentError, None),
        (408, TransientError, True),
        (409, PermanentError, None),
        (413, ValidationError, None),
        (415, PermanentError, None),
        (429, TransientError, False),
        (500, TransientError, True),
        (502, TransientError, True),
        (503, TransientError, True),
        (504, TransientError, True),
    ],
)
def test_statuses(status: int, kind: type[PushError], maybe_delivered: bool | None) -> None:
    """Each status maps to its class; 429 is a refusal, a 503 without Retry-After and other
    5xx are ambiguous (a 503 with Retry-After: next test)."""
    error = translate(response(status, {"error": {"code": "X", "message": "m"}}), "call")
    assert type(error) is kind and error.status == status and error.code == "X"
    if maybe_delivered is not None:
        assert isinstance(error, TransientError) and error.maybe_delivered is maybe_delivered


@pytest.mark.parametrize(("retry_after", "maybe_delivered"), [("5", False), (None, True)])
def test_a_503_is_a_refusal_only_with_retry_after(
    retry_after: str | None, maybe_delivered: bool
) -> None:
    """A 503 with Retry-After is the service refusing the request: nothing was stored, so Add
    Rows may be re-sent. Without one it may come from a front end after the request was
    processed: ambiguous, so Add Rows is not re-sent in process."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    error = translate(response(503, {"message": "busy"}, **headers), "add rows")
    assert isinstance(error, TransientError) and error.maybe_delivered is maybe_delivered


def test_expired_token_says_it_is_refreshed() -> None:
    """A TokenExpired answer keeps its code (the retry policy's cue for its one re-send) and
    says what happens next."""
    error = translate(response(403, {"error": {"code": "TokenExpired", "message": "m"}}), "x")
    assert isinstance(error, AuthError) and error.code == "TokenExpired"
    assert "a fresh one is fetched" in str(error)


def test_retry_after_request_id_and_details_are_kept() -> None:
    """The Retry-After, the RequestId and the service's details reach the error."""
    body = {
        "error": {
            "code": "BadRequest",
            "message": "Bad Request",
            "details": [{"message": "too long", "target": "rows[2].Name"}],
        }
    }
    error = translate(response(400, body, RequestId="abc"), "add rows")
    assert error.request_id == "abc" and "rows[2].Name: too long" in str(error)
    throttled = translate(response(429, {"message": "slow down"}, **{"Retry-After": "12"}), "x")
    assert isinstance(throttled, TransientError) and throttled.retry_after == 12.0
    assert "slow down" in str(throttled)


def test_non_json_and_empty_error_bodies() -> None:
    """An HTML or empty error body still gives a readable message."""
    html = requests.Response()
    html.status_code, html.reason, html._content = 502, "Bad Gateway", b"<html>oops</html>"
    assert "<html>oops</html>" in str(translate(html, "x"))
    assert "Service Unavailable" in str(translate(response(503), "x"))


def test_auth_errors_say_what_to_check() -> None:
    """401 points at the tenant setting, 403 at the workspace role."""
    assert "tenant settings" in str(translate(response(401), "x"))
    assert "Member or Contributor" in str(translate(response(403), "x"))
