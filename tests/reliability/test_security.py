"""Security: function keys on the deployed auth level, HMAC signatures, the BlobCreated
allow-list, bearer tokens only over https (or to a loopback emulator), and no secret in an
answer. (No secret in any log line is checked for every test by ``tests/conftest.py``.)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import azure.functions as func
import pytest
import requests
import urllib3

from functions import http
from shared import runtime
from shared.destinations.auth import StaticTokenProvider
from shared.destinations.powerbi import PowerBIClient
from shared.errors import ConfigError
from shared.settings import Settings
from shared.sources.blob_events import BLOB_CREATED, BlobEvents, Refused
from tests.azurite import KEY as AZURITE_KEY
from tests.azurite import Azurite
from tests.conftest import find_secrets
from tests.emulator.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTITY_HEADER,
    REPO,
    TENANT,
    WORKSPACE_ID,
    Api,
    EmulatorProcess,
)
from tests.integration.test_devhost import (
    PRODUCT_COLUMNS,
    ROWS,
    Devhost,
    app_environment,
    app_functions,
    start_devhost,
)

WEBHOOK_SECRET = "webhook-shared-secret"
DEVHOST_SECRET = "devhost-webhook-secret"
ALLOWED = "allowed.blob.core.windows.net"


def no_secret_in(text: str, *values: str) -> list[str]:
    """What secrets ``text`` reveals: the scanner's kinds, and any of ``values`` verbatim."""
    return find_secrets(text) + [f"the value {v[:6]}..." for v in values if v and v in text]


# -- function keys: the deployed auth level ----------------------------------------------------


@pytest.fixture(scope="module")
def metadata() -> dict[str, Any]:
    """The app's default HTTP auth level and every function's bindings, from a fresh
    interpreter (``get_functions()`` raises when called twice on one app, azure-functions 1.26)."""
    script = (
        "import json, function_app\n"
        "app = function_app.app\n"
        "print(json.dumps({'default': app.auth_level.name, 'functions': {\n"
        "    f.get_function_name(): json.loads(f.get_function_json())['bindings']\n"
        "    for f in app.get_functions()}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_every_http_function_needs_a_key(metadata: dict[str, Any]) -> None:
    """The app's default is FUNCTION and every HTTP trigger is FUNCTION, but for the Power BI
    surface: ANONYMOUS for the host, because a drop-in sender can send only a bearer token,
    which the function checks against FRONTDOOR_KEYS itself (closed when none is set:
    tests/unit/sources/test_frontdoor.py, tests/integration/test_frontdoor.py); and doctor,
    ADMIN: the master key only, since its report names the workspace, identity and storage."""
    assert metadata["default"] == "FUNCTION"
    levels = {
        name: binding.get("authLevel")
        for name, bindings in metadata["functions"].items()
        for binding in bindings
        if binding["type"] == "httpTrigger"
    }
    assert levels == {
        "add_rows": "FUNCTION",
        "post_rows": "FUNCTION",
        "health": "FUNCTION",
        "doctor": "ADMIN",
        "powerbi": "ANONYMOUS",
    }


# -- HMAC signatures, over real HTTP through devhost --------------------------------------------


def sign(body: bytes, secret: str = DEVHOST_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def signed_host(
    emulator: EmulatorProcess, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Devhost]:
    """devhost with WEBHOOK_SECRET; only the HTTP functions run. Its own output (every line it
    printed) must not carry a secret or a signature either."""
    settings: Path = tmp_path_factory.mktemp("security") / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    env = app_environment(emulator, azurite, f"rows{uuid.uuid4().hex[:8]}")
    env["WEBHOOK_SECRET"] = DEVHOST_SECRET
    for name, trigger in app_functions().items():
        if trigger["type"] != "httpTrigger":
            env[f"AzureWebJobs.{name}.Disabled"] = "true"
    host = start_devhost(env, settings)
    yield host
    host.stop()
    # Every line is read once devhost's last one is (it prints it after everything it logged).
    deadline = time.monotonic() + 10
    while "devhost: stopped" not in host.output:
        assert time.monotonic() < deadline, "devhost's last line never came:\n" + "\n".join(
            host.output[-20:]
        )
        time.sleep(0.05)
    leaks = [line for line in host.output if no_secret_in(line, DEVHOST_SECRET)]
    assert leaks == [], "devhost printed secrets:\n" + "\n".join(leaks)


@pytest.fixture
def dataset(api: Api) -> tuple[str, str]:
    """A fresh SalesMarketing-shaped dataset in the workspace: (name, id)."""
    name = f"Secure-{uuid.uuid4().hex[:8]}"
    return name, api.create_dataset(
        [{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name
    )


def post(host: Devhost, path: str, body: bytes, signature: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Signature-256"] = signature
    with requests.Session() as session:
        session.trust_env = False
        return session.post(f"{host.base}/api/{path}", data=body, headers=headers, timeout=60)


def body_of(*rows: dict[str, Any]) -> bytes:
    return json.dumps({"rows": list(rows)}).encode()


OTHER_BODY = body_of({**ROWS[0], "ProductID": 666})


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=" + "0" * 64,
        sign(OTHER_BODY),  # a right signature, of a different body
        sign(body_of(ROWS[0]), "not-the-shared-secret"),  # the right body, another secret
        sign(body_of(ROWS[0]))[len("sha256=") :],  # the right hex without its prefix
        "sha1=" + hmac.new(DEVHOST_SECRET.encode(), body_of(ROWS[0]), "sha1").hexdigest(),
        sign(body_of(ROWS[0])) + "00",
    ],
    ids=[
        "missing",
        "empty",
        "zeros",
        "other-body",
        "other-secret",
        "no-prefix",
        "sha1",
        "extended",
    ],
)
def test_wrong_signature_is_401_and_nothing_is_pushed(
    signed_host: Devhost, api: Api, dataset: tuple[str, str], signature: str | None
) -> None:
    """Without the HMAC of the exact body under the shared secret: 401, no row in Power BI,
    and neither the secret nor a signature in the answer."""
    name, dataset_id = dataset
    response = post(
        signed_host, f"datasets/{name}/tables/Product/rows", body_of(ROWS[0]), signature
    )
    assert response.status_code == 401, response.text
    assert no_secret_in(response.text, DEVHOST_SECRET) == []
    assert api.stored_rows(dataset_id, "Product") == []


def test_replayed_signature_with_a_modified_body_is_401(
    signed_host: Devhost, api: Api, dataset: tuple[str, str]
) -> None:
    """A valid signature is accepted once for its body; replayed with a changed body (a value
    changed, a row added, a byte appended), on either route, it is refused and only the
    original rows are stored."""
    name, dataset_id = dataset
    route = f"datasets/{name}/tables/Product/rows"
    original = body_of(ROWS[0])
    signature = sign(original)
    accepted = post(signed_host, route, original, signature)
    assert accepted.status_code == 200, accepted.text
    tampered = [
        body_of({**ROWS[0], "ProductID": 999}),
        body_of(ROWS[0], ROWS[1]),
        original + b" ",
    ]
    for body in tampered:
        response = post(signed_host, route, body, signature)
        assert response.status_code == 401, (body, response.text)
        assert no_secret_in(response.text, DEVHOST_SECRET) == []
    envelope = json.dumps({"dataset": name, "table": "Product", "rows": [ROWS[1]]}).encode()
    assert post(signed_host, "rows", envelope, signature).status_code == 401
    assert [r["ProductID"] for r in api.stored_rows(dataset_id, "Product")] == [1]


# -- the BlobCreated allow-list -----------------------------------------------------------------


@dataclass
class Listener:
    """Loopback TCP listeners (IPv4 and, when possible, IPv6) that record every connection."""

    port: int
    port6: int | None
    connections: list[str] = field(default_factory=list)

    def settled(self) -> list[str]:
        """Every connection made before this call, with none still to be recorded.

        A marker connection is made to each listener and waited for (bounded): a listening
        socket hands out connections first in, first out, so once its marker is recorded,
        every connection made before it has been recorded too. The markers are left out."""
        markers: list[str] = []
        clients: list[socket.socket] = []
        addresses = [(socket.AF_INET, ("127.0.0.1", self.port))]
        if self.port6 is not None:
            addresses.append((socket.AF_INET6, ("::1", self.port6)))
        try:
            for family, address in addresses:
                client = socket.socket(family)
                clients.append(client)
                client.connect(address)
                markers.append(str(client.getsockname()))
            deadline = time.monotonic() + 10
            while not set(markers) <= set(self.connections):
                assert time.monotonic() < deadline, "the listener never saw its marker"
                time.sleep(0.01)
        finally:
            for client in clients:
                client.close()
        return [c for c in self.connections if c not in markers]


@contextlib.contextmanager
def listening() -> Iterator[Listener]:
    sockets: list[socket.socket] = []
    four = socket.socket(socket.AF_INET)
    four.bind(("127.0.0.1", 0))
    sockets.append(four)
    port6 = None
    with contextlib.suppress(OSError):
        six = socket.socket(socket.AF_INET6)
        six.bind(("::1", 0))
        sockets.append(six)
        port6 = six.getsockname()[1]
    listener = Listener(four.getsockname()[1], port6)
    stop = threading.Event()

    def accept(server: socket.socket) -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            listener.connections.append(str(peer))
            conn.close()

    # Listening before the threads start: a thread not yet scheduled on a loaded machine left
    # a bound socket that refused connections (a flake seen once in a full run).
    for server in sockets:
        server.listen()
    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in sockets]
    for thread in threads:
        thread.start()
    try:
        yield listener
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=2)
        for server in sockets:
            server.close()


@pytest.fixture
def trap() -> Iterator[Listener]:
    """A host:port that is NOT on the allow-list."""
    with listening() as listener:
        yield listener


@pytest.fixture
def allowed_account() -> Iterator[Listener]:
    """A loopback host:port that IS on the allow-list (like Azurite locally)."""
    with listening() as listener:
        yield listener


class RecordingIngest:
    """Stands in for BlobIngest: records each call, then makes the first request the real one
    would (read the blob's properties, anonymously, one try), so a listener sees it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def handle(self, url: str) -> str:
        from azure.storage.blob import BlobClient

        self.calls.append(url)
        with contextlib.suppress(Exception):
            BlobClient.from_blob_url(
                url, retry_total=0, connection_timeout=2, read_timeout=2
            ).get_blob_properties()
        return "ingested"


def events_for(allowed_port: int) -> tuple[BlobEvents, RecordingIngest, list[str]]:
    """A handler whose allow-list (parsed by Settings, as deployed) is the production-like
    host and the loopback account; the blob ingester and the client factory only record."""
    hosts = Settings.from_env(
        {"BLOB_ALLOWED_HOSTS": f" Allowed.Blob.Core.Windows.Net , 127.0.0.1:{allowed_port}"}
    ).blob_allowed_hosts
    ingest = RecordingIngest()
    opened: list[str] = []

    def client_for(url: str) -> Any:
        opened.append(url)
        return url

    return BlobEvents(cast(Any, lambda: ingest), hosts, client_for), ingest, opened


#: (event type, api, URL template): {trap}/{trap6} are not allowed, {ok} is the allowed account.
REFUSED_EVENTS = {
    "loopback-ip": (BLOB_CREATED, "PutBlob", "http://127.0.0.1:{trap}/devstoreaccount1/c/b.csv"),
    "localhost": (BLOB_CREATED, "PutBlob", "http://localhost:{trap}/devstoreaccount1/c/b.csv"),
    "ipv6-loopback": (BLOB_CREATED, "PutBlob", "http://[::1]:{trap6}/devstoreaccount1/c/b.csv"),
    "uppercase-host": (BLOB_CREATED, "PutBlob", "HTTP://LOCALHOST:{trap}/devstoreaccount1/c/b"),
    "userinfo-allowed-host": (BLOB_CREATED, "PutBlob", f"https://{ALLOWED}@127.0.0.1:{{trap}}/c/b"),
    "userinfo-uppercase": (
        BLOB_CREATED,
        "PutBlob",
        f"https://{ALLOWED.upper()}@127.0.0.1:{{trap}}/c/b",
    ),
    "userinfo-allowed-account": (
        BLOB_CREATED,
        "PutBlob",
        "http://127.0.0.1:{ok}@127.0.0.1:{trap}/devstoreaccount1/c/b",
    ),
    # urlsplit reads the host after the "@"; urllib3 (and so the storage SDK) stops the
    # authority at the backslash and connects to the host before it.
    "backslash-userinfo": (BLOB_CREATED, "PutBlob", f"https://127.0.0.1:{{trap}}\\@{ALLOWED}/c/b"),
    "backslash-userinfo-account": (
        BLOB_CREATED,
        "PutBlob",
        "http://127.0.0.1:{trap}\\@127.0.0.1:{ok}/devstoreaccount1/c/b",
    ),
    "fragment-userinfo": (BLOB_CREATED, "PutBlob", f"https://127.0.0.1:{{trap}}#@{ALLOWED}/c/b"),
    "allowed-host-suffix": (BLOB_CREATED, "PutBlob", f"https://{ALLOWED}.evil:{{trap}}/c/b"),
    "subdomain-of-allowed": (BLOB_CREATED, "PutBlob", f"https://x.{ALLOWED}/c/b"),
    "other-port-of-allowed": (BLOB_CREATED, "PutBlob", "http://127.0.0.1:{trap}/acct/c/b"),
    "http-to-allowed-host": (BLOB_CREATED, "PutBlob", f"http://{ALLOWED}/c/b"),
    "not-blob-created": (
        "Microsoft.Storage.BlobDeleted",
        "DeleteBlob",
        "http://127.0.0.1:{ok}/devstoreaccount1/c/b.csv",
    ),
    "incomplete-blob": (BLOB_CREATED, "PutBlock", "http://127.0.0.1:{ok}/devstoreaccount1/c/b"),
    "no-blob-name": (BLOB_CREATED, "PutBlob", "http://127.0.0.1:{ok}/devstoreaccount1"),
}


@pytest.mark.parametrize(
    ("event_type", "api_name", "template"), REFUSED_EVENTS.values(), ids=REFUSED_EVENTS.keys()
)
def test_blob_created_never_requests_a_url_off_the_allow_list(
    trap: Listener,
    allowed_account: Listener,
    caplog: pytest.LogCaptureFixture,
    event_type: str,
    api_name: str,
    template: str,
) -> None:
    """Each event is refused and logged; no blob client is opened, the ingester is never
    called, and neither listener receives a connection."""
    if "{trap6}" in template and trap.port6 is None:
        pytest.skip("no IPv6 loopback here")
    url = template.format(trap=trap.port, trap6=trap.port6, ok=allowed_account.port)
    events, ingest, opened = events_for(allowed_account.port)
    outcome = events.handle(event_type, {"api": api_name, "url": url})
    # Not a pause: each listener records a marker connection made now, so any connection the
    # call made (before it) is on record.
    trapped, reached = trap.settled(), allowed_account.settled()
    problems = [
        *([] if isinstance(outcome, Refused) else ["the event was accepted"]),
        *([f"a blob client was opened for {opened}"] if opened else []),
        *([f"the ingester was called with {ingest.calls}"] if ingest.calls else []),
        *([f"the trap listener got {trapped}"] if trapped else []),
        *([f"the allowed listener got {reached}"] if reached else []),
    ]
    assert problems == [], f"{url!r}: " + "; ".join(problems)
    assert any("BlobCreated event refused" in r.getMessage() for r in caplog.records)


def test_blob_created_on_the_allow_list_is_ingested(
    trap: Listener, allowed_account: Listener
) -> None:
    """The control: an allowed account's blob goes to the ingester, whose first request does
    reach the allowed listener (so the refusals above are not vacuous)."""
    url = f"http://127.0.0.1:{allowed_account.port}/devstoreaccount1/c/b.csv"
    events, ingest, opened = events_for(allowed_account.port)
    outcome: Any = events.handle(BLOB_CREATED, {"api": "PutBlockList", "url": url})
    assert outcome == "ingested"
    assert opened == ingest.calls == [url]
    assert allowed_account.settled() and trap.settled() == []


# -- bearer tokens: https only, except to a loopback emulator ----------------------------------


class CountingTokens:
    def __init__(self) -> None:
        self.asked = 0

    def token(self) -> str:
        self.asked += 1
        return "counted-token"

    def invalidate(self) -> None:
        pass


class RecordingAdapter(requests.adapters.BaseAdapter):
    """Sends nothing: records the host each request would go to and whether it had a token."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str | None, bool]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(
            (urllib3.util.parse_url(request.url or "").host, "Authorization" in request.headers)
        )
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"value": []}'
        response.request = request
        return response

    def close(self) -> None:
        pass


PLAIN_HTTP_ELSEWHERE = [
    "http://10.1.2.3",
    "http://api.powerbi.com",
    "HTTP://10.1.2.3:80",
    "http://127.0.0.1@10.1.2.3",  # userinfo: the host is 10.1.2.3
    "http://localhost.example.com",
    "http://127.0.0.1.nip.io:5300",
    "http://[::ffff:10.1.2.3]",
    # urlsplit's host is 127.0.0.1; requests/urllib3 connect to 10.1.2.3
    "http://10.1.2.3\\@127.0.0.1:5300",
]
LOOPBACK = [
    "http://127.0.0.1:5300",
    "http://localhost:5300",
    "http://[::1]:5300",
    "http://127.0.0.9",
]


def test_client_refuses_a_bearer_token_over_plain_http() -> None:
    """The issue's own case: PowerBIClient("http://10.1.2.3", ...) raises ConfigError."""
    with pytest.raises(ConfigError) as caught:
        PowerBIClient("http://10.1.2.3", StaticTokenProvider("t"))
    assert caught.value.setting == "POWERBI_API_URL"


@pytest.mark.parametrize("url", PLAIN_HTTP_ELSEWHERE)
def test_client_sends_no_token_over_plain_http_to_another_host(url: str) -> None:
    """Refused when built, before a token is asked for or a request made. Should a URL get
    through, the test shows where the token would have gone."""
    tokens = CountingTokens()
    adapter = RecordingAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        client = PowerBIClient(url, tokens, session=session)
    except ConfigError as exc:
        assert exc.setting == "POWERBI_API_URL"
        assert tokens.asked == 0 and adapter.sent == []
        return
    with contextlib.suppress(Exception):
        client.ping()
    pytest.fail(
        f"PowerBIClient accepted {url!r}; requests sent (host, with a bearer token): {adapter.sent}"
    )


@pytest.mark.parametrize("url", PLAIN_HTTP_ELSEWHERE)
@pytest.mark.parametrize("auth", ["managed_identity", "static"])
def test_settings_refuse_plain_http_to_another_host(url: str, auth: str) -> None:
    """POWERBI_API_URL over plain http to a non-loopback host is a ConfigError naming it."""
    env = {"POWERBI_API_URL": url, "POWERBI_AUTH": auth, "POWERBI_STATIC_TOKEN": "t"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == "POWERBI_API_URL"
    assert "POWERBI_API_URL" in str(caught.value)


@pytest.mark.parametrize("url", LOOPBACK)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    """The local emulator: plain http to a loopback address is fine, static tokens too."""
    settings = Settings.from_env(
        {"POWERBI_API_URL": url, "POWERBI_AUTH": "static", "POWERBI_STATIC_TOKEN": "t"}
    )
    assert settings.api_root == url
    PowerBIClient(url, StaticTokenProvider("t"))


def test_static_tokens_are_for_loopback_only() -> None:
    """A static token is refused for a real (https) Power BI, naming POWERBI_AUTH."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "POWERBI_API_URL": "https://api.powerbi.com",
                "POWERBI_AUTH": "static",
                "POWERBI_STATIC_TOKEN": "t",
            }
        )
    assert caught.value.setting == "POWERBI_AUTH"


# -- answers: health and errors reveal no secret -----------------------------------------------


@pytest.fixture
def app_env(
    api: Api, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """App settings pointing at the emulator and Azurite (the connection string holds the
    account key), with a webhook secret; each test adds its Power BI identity."""
    for key in [
        k
        for k in os.environ
        if k.startswith(("POWERBI_", "IDENTITY_", "MSI_", "HTTP_", "WEBHOOK_", "DEADLETTER_"))
    ]:
        monkeypatch.delenv(key)
    values = {
        "POWERBI_API_URL": api.emulator.base,
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        "IDENTITY_ENDPOINT": f"{api.emulator.base}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "AzureWebJobsStorage": azurite.connection_string,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ALLOWED_TARGETS": "*/*",  # datasets made in the emulator, without definitions
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield values
    runtime.reset()


def health() -> func.HttpResponse:
    request = func.HttpRequest("GET", "http://localhost/api/health", headers={}, body=b"")
    return cast(func.HttpResponse, http.health(request))


def answer_text(response: func.HttpResponse) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{headers}\n{response.get_body().decode()}"


def service_principal(
    emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    assert emulator.tls_base and emulator.cert
    for key, value in {
        "POWERBI_AUTH": "service_principal",
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_TENANT_ID": TENANT,
        "POWERBI_CLIENT_SECRET": secret,
        "POWERBI_AUTHORITY_URL": f"{emulator.tls_base}/{TENANT}",
        "POWERBI_CA_BUNDLE": str(emulator.cert),
    }.items():
        monkeypatch.setenv(key, value)
    runtime.reset()


def test_health_reveals_no_secret(
    app_env: dict[str, str], emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Healthy, with a service principal's client secret, a webhook secret and a storage
    account key configured: the answer says they are set, and shows none of them."""
    service_principal(emulator, monkeypatch, CLIENT_SECRET)
    response = health()
    body = json.loads(response.get_body())
    assert response.status_code == 200, body
    assert body["settings"]["client_secret"] == "set"
    assert body["settings"]["webhook_signature"] == "required"
    secrets = (CLIENT_SECRET, WEBHOOK_SECRET, AZURITE_KEY, IDENTITY_HEADER, "AccountKey")
    assert no_secret_in(answer_text(response), *secrets) == []


def test_degraded_health_reveals_no_secret(
    app_env: dict[str, str], emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both checks failing (a client secret the authority refuses; a storage account, key
    included, that does not answer): 503 naming what is down, and still no secret."""
    service_principal(emulator, monkeypatch, "emulator-client-secret")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    monkeypatch.setenv(
        "AzureWebJobsStorage",
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{dead}/devstoreaccount1;",
    )
    runtime.reset()
    response = health()
    body = json.loads(response.get_body())
    assert response.status_code == 503, body
    assert not body["powerbi"]["reachable"] and not body["storage"]["reachable"]
    assert "invalid_client" in body["powerbi"]["detail"]
    secrets = ("emulator-client-secret", WEBHOOK_SECRET, AZURITE_KEY, "AccountKey")
    assert no_secret_in(answer_text(response), *secrets) == []


def forged_jwt() -> str:
    """A well-formed JWT for the Power BI audience, signed with a key the emulator does not
    know."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    unsigned = (
        part({"alg": "HS256", "typ": "JWT"})
        + "."
        + part(
            {
                "aud": "https://analysis.windows.net/powerbi/api",
                "iss": "https://sts.windows.net/forged/",
                "sub": "forged-user",
                "iat": now,
                "exp": now + 3600,
            }
        )
    )
    signature = hmac.new(b"not-the-emulator-key", unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.parametrize("kind", ["forged", "expired", "opaque"])
def test_error_answers_never_echo_the_token(
    api: Api, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Power BI refuses the configured token: the push answers 502 and health 503, and
    neither answer carries the token."""
    if kind == "forged":
        token = forged_jwt()
    elif kind == "expired":
        token = api.session.post(
            f"{api.emulator.base}/_emulator/token", json={"lifetime": -3600}, timeout=10
        ).json()["access_token"]
    else:
        token = f"opaque-token-{uuid.uuid4().hex}"
    name = f"Secure-{uuid.uuid4().hex[:8]}"
    api.create_dataset([{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name)
    monkeypatch.delenv("WEBHOOK_SECRET")
    monkeypatch.setenv("POWERBI_AUTH", "static")
    monkeypatch.setenv("POWERBI_STATIC_TOKEN", token)
    runtime.reset()

    class Out(func.Out[list[str]]):
        def set(self, val: list[str]) -> None:
            raise AssertionError("nothing is queued in sync mode")

        def get(self) -> list[str]:
            raise AssertionError("nothing is queued in sync mode")

    request = func.HttpRequest(
        "POST",
        f"http://localhost/api/datasets/{name}/tables/Product/rows",
        headers={"Content-Type": "application/json"},
        route_params={"dataset": name, "table": "Product"},
        body=body_of(ROWS[0]),
    )
    pushed = http.add_rows(request, Out())
    assert pushed.status_code == 502, pushed.get_body()
    assert no_secret_in(answer_text(pushed), token) == []
    probed = health()
    assert probed.status_code == 503 and not json.loads(probed.get_body())["powerbi"]["reachable"]
    assert no_secret_in(answer_text(probed), token) == []
