"""The Power BI client and token providers against the emulator, with the real libraries."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from shared.contracts import Target
from shared.destinations.auth import (
    ManagedIdentityTokenProvider,
    ServicePrincipalTokenProvider,
    StaticTokenProvider,
)
from shared.destinations.powerbi import PowerBIClient
from shared.engine.batching import pack
from shared.engine.ingest import Ingestor
from shared.engine.retry import RetryPolicy
from shared.engine.schema import load_definitions
from shared.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    PushError,
    TransientError,
    ValidationError,
)
from tests.emulator.conftest import (
    CERT_CLIENT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTITY_HEADER,
    POWERBI_RESOURCE,
    REPO,
    TENANT,
    USER_ASSIGNED_ID,
    WORKSPACE_ID,
    WORKSPACE_NAME,
    Api,
    EmulatorProcess,
)

SCOPE = POWERBI_RESOURCE + "/.default"
NO_WAIT = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)


def client_for(api: Api, **kwargs: Any) -> PowerBIClient:
    return PowerBIClient(api.emulator.base, StaticTokenProvider(api.token), **kwargs)


def seed_definition() -> dict[str, Any]:
    return load_definitions(REPO / "datasets")["SalesMarketing"].body


def product_rows(count: int) -> list[tuple[int, dict[str, Any]]]:
    return [
        (
            i,
            {
                "ProductID": i,
                "Manufacturer": "Contoso",
                "Category": "Components",
                "Segment": "Mid",
                "Product": f"Part {i}",
                "IsCompete": i % 2 == 0,
            },
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("use_workspace", [False, True], ids=["my-workspace", "workspace"])
def test_seed_steps_create_find_add_rows_list_groups(api: Api, use_workspace: bool) -> None:
    """The seed's steps through the real client: create SalesMarketing, find it, add rows."""
    client = client_for(api)
    # GIVEN the workspace found by name with Get Groups (step: list groups)
    workspace = client.group_id(WORKSPACE_NAME) if use_workspace else None
    assert workspace == (WORKSPACE_ID if use_workspace else None)
    # WHEN the dataset is created from datasets/SalesMarketing.json
    created = client.create_dataset(seed_definition(), workspace)
    # THEN Get Datasets finds it, with its table
    found = [d for d in client.get_datasets(workspace) if d["id"] == created["id"]]
    assert found and found[0]["name"] == "SalesMarketing" and found[0]["addRowsAPIEnabled"]
    tables = client.get_tables(created["id"], workspace)
    assert [t["name"] for t in tables] == ["Product"]
    # AND 25,000 rows arrive as three POSTs, all of them readable back in order
    batches = list(pack(product_rows(25_000)))
    assert [b.count for b in batches] == [10_000, 10_000, 5_000]
    for batch in batches:
        client.post_rows(created["id"], "Product", batch.body, workspace)
    stored = api.stored_rows(created["id"], "Product")
    assert [r["ProductID"] for r in stored] == list(range(25_000))
    assert api.state(created["id"])["counters"]["posts_accepted"] == 3


def test_managed_identity_tokens_are_accepted(
    api: Api, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """System- and user-assigned managed identities (azure-identity) push through the client."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emulator.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(name, raising=False)
    # In a workspace: Power BI refuses service principals on My workspace (issue 17).
    dataset = api.create_dataset(seed_definition()["tables"], group=WORKSPACE_ID)
    for client_id in (None, USER_ASSIGNED_ID):
        provider = ManagedIdentityTokenProvider(SCOPE, client_id)
        client = PowerBIClient(emulator.base, provider)
        (batch,) = pack(product_rows(3))
        client.post_rows(dataset, "Product", batch.body, WORKSPACE_ID)
        assert provider.token() == provider.token(), "the token is cached, not fetched twice"
    assert len(api.stored_rows(dataset, "Product")) == 6


def test_refused_managed_identity_is_a_permanent_error(
    emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused managed identity is a permanent error that does not repeat the header."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emulator.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header-value")
    with pytest.raises(PermanentError) as caught:
        ManagedIdentityTokenProvider(SCOPE).token()
    assert "X-IDENTITY-HEADER" in str(caught.value)
    assert "not-the-header-value" not in str(caught.value)


def test_service_principal_secret_and_certificate(
    api: Api, emulator: EmulatorProcess, tmp_path: Path
) -> None:
    """MSAL client credentials, with a secret and with a certificate, push through the client."""
    assert emulator.tls_base and emulator.cert
    authority = f"{emulator.tls_base}/{TENANT}"
    cert_arg = next(a for a in emulator.process.args if str(a).startswith(CERT_CLIENT_ID))
    cert_path = Path(str(cert_arg).split(":", 1)[1])
    pem = tmp_path / "sp.pem"
    pem.write_text(cert_path.with_name("sp-key.pem").read_text() + cert_path.read_text())
    providers = [
        ServicePrincipalTokenProvider(
            client_id=CLIENT_ID,
            authority=authority,
            scope=SCOPE,
            secret=CLIENT_SECRET,
            ca_bundle=str(emulator.cert),
        ),
        ServicePrincipalTokenProvider(
            client_id=CERT_CLIENT_ID,
            authority=authority,
            scope=SCOPE,
            certificate_path=str(pem),
            ca_bundle=str(emulator.cert),
        ),
    ]
    for provider in providers:
        client = PowerBIClient(emulator.base, provider)
        assert any(g["id"] == WORKSPACE_ID for g in client.get_groups())


def test_wrong_secret_is_an_auth_error_without_the_secret(emulator: EmulatorProcess) -> None:
    """A refused client secret is an AuthError whose text does not repeat the secret."""
    assert emulator.tls_base and emulator.cert
    provider = ServicePrincipalTokenProvider(
        client_id=CLIENT_ID,
        authority=f"{emulator.tls_base}/{TENANT}",
        scope=SCOPE,
        secret="wrong-secret-value",
        ca_bundle=str(emulator.cert),
    )
    with pytest.raises(AuthError) as caught:
        provider.token()
    assert "invalid_client" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)


class ExpiringOnce:
    """A token provider whose first token has already expired; counts invalidations."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.invalidated = 0
        mint = f"{api.emulator.base}/_emulator/token"
        self.expired = api.session.post(mint, json={"lifetime": -10}).json()["access_token"]

    def token(self) -> str:
        return self.expired if self.invalidated == 0 else self.api.token

    def invalidate(self) -> None:
        self.invalidated += 1


def test_expired_token_is_dropped_and_the_call_retried_once(api: Api) -> None:
    """A 403 TokenExpired drops the cached token; the retry policy sends the call once more,
    with a fresh token: for a lookup, and for Add Rows (the rows land once)."""
    dataset = api.create_dataset(seed_definition()["tables"])
    provider = ExpiringOnce(api)
    client = PowerBIClient(api.emulator.base, provider)
    assert dataset in [d["id"] for d in client.get_datasets()]
    assert provider.invalidated == 1

    ingestor = Ingestor(client, retry=client.retry)
    ingestor.resolve(Target(dataset, "Product"))  # looked up while the token was good
    provider.invalidated = 0  # ... and now the cached token has expired
    result = ingestor.push(Target(dataset, "Product"), [row for _, row in product_rows(2)])
    assert provider.invalidated == 1
    assert result.sent == 2 and result.retries == 1
    assert len(api.stored_rows(dataset, "Product")) == 2


def test_add_rows_itself_is_sent_once_on_an_expired_token(api: Api) -> None:
    """post_rows alone does not re-send (the policy does): it drops the token and raises."""
    dataset = api.create_dataset(seed_definition()["tables"])
    provider = ExpiringOnce(api)
    (batch,) = pack(product_rows(2))
    with pytest.raises(AuthError) as caught:
        PowerBIClient(api.emulator.base, provider).post_rows(dataset, "Product", batch.body)
    assert caught.value.code == "TokenExpired" and provider.invalidated == 1
    assert api.stored_rows(dataset, "Product") == []


def test_service_errors_are_translated(api: Api) -> None:
    """404, 400 (with details) and 403 map to NotFound, Validation and Auth errors."""
    client = client_for(api)
    dataset = api.create_dataset(seed_definition()["tables"])
    with pytest.raises(NotFoundError) as missing:
        client.post_rows("00000000-0000-0000-0000-000000000000", "Product", b'{"rows":[]}')
    assert missing.value.status == 404 and missing.value.code == "PowerBIEntityNotFound"
    assert missing.value.request_id
    bad = json.dumps({"rows": [{"ProductID": 2**63 - 1}]}).encode()
    with pytest.raises(ValidationError) as invalid:
        client.post_rows(dataset, "Product", bad)
    assert "rows[0].ProductID" in str(invalid.value)
    foreign = api.session.post(
        f"{api.emulator.base}/_emulator/token", json={"audience": "https://storage.azure.com"}
    ).json()["access_token"]
    with pytest.raises(AuthError) as refused:
        PowerBIClient(api.emulator.base, StaticTokenProvider(foreign)).get_datasets()
    assert refused.value.status == 403
    assert foreign not in str(refused.value) and api.token not in str(missing.value)


def test_throttles_and_lost_answers_are_transient_and_say_if_rows_may_have_landed(
    api: Api,
) -> None:
    """429/503 are transient and not delivered; a lost answer may have been delivered."""
    client = client_for(api)
    dataset = api.create_dataset(seed_definition()["tables"])
    (batch,) = pack(product_rows(1))
    api.set_faults(script=["throttle", "error_503", "drop", "accept_then_fail"], retry_after=7)
    outcomes: list[TransientError] = []
    for _ in range(4):
        with pytest.raises(TransientError) as caught:
            client.post_rows(dataset, "Product", batch.body)
        outcomes.append(caught.value)
    assert [(e.status, e.retry_after, e.maybe_delivered) for e in outcomes[:2]] == [
        (429, 7.0, False),
        (503, 7.0, False),
    ]
    assert outcomes[2].maybe_delivered and outcomes[3].maybe_delivered
    # The emulator stored the accept-then-fail rows only: the client was right to say "maybe".
    assert len(api.stored_rows(dataset, "Product")) == 1


def test_connection_refused_is_transient_and_not_delivered() -> None:
    """Nothing listening: a transient error that certainly delivered nothing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = PowerBIClient(f"http://127.0.0.1:{port}", StaticTokenProvider("t"), retry=NO_WAIT)
    with pytest.raises(TransientError) as caught:
        client.post_rows("d", "t", b'{"rows":[]}')
    assert caught.value.maybe_delivered is False


def test_idempotent_calls_are_retried_through_server_errors(api: Api) -> None:
    """Get calls ride out 500/503 bursts with the retry policy; Add Rows is sent once."""
    client = client_for(api, retry=NO_WAIT)
    api.set_faults(script=["error_500", "error_503", "ok"], retry_after=0, all_operations=True)
    assert isinstance(client.get_datasets(), list)
    api.set_faults(script=["error_500", "ok"], all_operations=True)
    dataset = api.create_dataset(seed_definition()["tables"])
    (batch,) = pack(product_rows(1))
    with pytest.raises(TransientError):
        client.post_rows(dataset, "Product", batch.body)
    assert api.stored_rows(dataset, "Product") == []


def test_tokens_only_go_to_https_or_loopback() -> None:
    """A client for a plain-http, non-loopback API is refused before any request."""
    with pytest.raises(ConfigError):
        PowerBIClient("http://api.example.com", StaticTokenProvider("t"))
    PowerBIClient("https://api.powerbi.com", StaticTokenProvider("t"))


def test_every_push_error_carries_a_readable_message(api: Api) -> None:
    """Errors print their status, code and request id, for support."""
    client = client_for(api)
    with pytest.raises(PushError) as caught:
        client.get_dataset("00000000-0000-0000-0000-000000000000")
    text = str(caught.value)
    assert "404" in text and "PowerBIEntityNotFound" in text and "request_id=" in text
    assert isinstance(caught.value, NotFoundError)
