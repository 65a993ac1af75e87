"""Tokens from the real client libraries (azure-identity, MSAL) and the API's token checks.

No mocks: every token comes from the emulator's managed-identity endpoint, its Entra-style
client-credentials endpoint or its admin API, and is then presented to its Power BI API.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential

from tests.emulator.conftest import (
    CERT_CLIENT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTITY_HEADER,
    POWERBI_RESOURCE,
    TENANT,
    USER_ASSIGNED_ID,
    WORKSPACE_ID,
    EmulatorProcess,
)

POWERBI_SCOPE = POWERBI_RESOURCE + "/.default"
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: Variables that would send the client libraries to another identity source.
OTHER_IDENTITY_VARIABLES = (
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
    "IDENTITY_API_VERSION",
)


# -- helpers ----------------------------------------------------------------------------------


def tls_base(emulator: EmulatorProcess) -> str:
    """The emulator's https base URL (the session fixture always starts it with --tls)."""
    assert emulator.tls_base is not None and emulator.cert is not None
    return emulator.tls_base


def trusting_session(emulator: EmulatorProcess) -> requests.Session:
    """A session that trusts the emulator's self-signed certificate (and only the arguments
    given here: ``trust_env`` is off, since REQUESTS_CA_BUNDLE would override ``verify``)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(emulator.cert)
    return session


def get_datasets(emulator: EmulatorProcess, authorization: str | None) -> requests.Response:
    """GET the test workspace's datasets with the given Authorization header (or none). (A
    workspace, not My workspace: Power BI refuses service principals there, issue 17.)"""
    headers = {"Authorization": authorization} if authorization is not None else {}
    with requests.Session() as session:
        session.trust_env = False
        return session.get(
            f"{emulator.api}/groups/{WORKSPACE_ID}/datasets", headers=headers, timeout=30
        )


def assert_api_accepts(emulator: EmulatorProcess, token: str) -> None:
    """The Power BI API answers 200 to a request carrying ``token``."""
    response = get_datasets(emulator, f"Bearer {token}")
    assert response.status_code == 200, response.text


def assert_refused(response: requests.Response, status: int, code: str | None = None) -> None:
    """A refused API call: the status, the service's error shape and a WWW-Authenticate header."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def client_certificate_paths(emulator: EmulatorProcess) -> tuple[Path, Path]:
    """The certificate the session emulator registered for CERT_CLIENT_ID, and its key."""
    args = emulator.process.args
    assert isinstance(args, list)
    spec = str(args[args.index("--client-cert") + 1])
    client_id, _, cert = spec.partition(":")
    assert client_id == CERT_CLIENT_ID
    return Path(cert), Path(cert).with_name("sp-key.pem")


def confidential_app(
    emulator: EmulatorProcess, session: requests.Session, client_id: str, credential: Any
) -> msal.ConfidentialClientApplication:
    """An MSAL confidential client whose authority is the emulator's https tenant."""
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=f"{tls_base(emulator)}/{TENANT}",
        instance_discovery=False,
        http_client=session,
    )


def admin_token(emulator: EmulatorProcess, **body: Any) -> str:
    """A token from the emulator's admin API (``lifetime``, ``audience``, ...)."""
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(f"{emulator.base}/_emulator/token", json=body, timeout=30)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
def app_service_env(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment App Service gives an app, pointing at the emulator's /msi/token."""
    for name in [*OTHER_IDENTITY_VARIABLES, *(k for k in os.environ if k.startswith("AZURE_"))]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emulator.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    yield


# -- managed identity -------------------------------------------------------------------------


@pytest.mark.usefixtures("app_service_env")
def test_azure_identity_system_assigned_token_is_accepted(emulator: EmulatorProcess) -> None:
    """ManagedIdentityCredential() gets a Power BI token that the API accepts."""
    with ManagedIdentityCredential() as credential:
        token = credential.get_token(POWERBI_SCOPE)
    assert token.token and token.expires_on > time.time()
    assert_api_accepts(emulator, token.token)


@pytest.mark.usefixtures("app_service_env")
def test_azure_identity_user_assigned_token_is_accepted(emulator: EmulatorProcess) -> None:
    """ManagedIdentityCredential(client_id=...) gets a token for that identity, accepted."""
    with ManagedIdentityCredential(client_id=USER_ASSIGNED_ID) as credential:
        token = credential.get_token(POWERBI_SCOPE)
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["appid"] == USER_ASSIGNED_ID
    assert_api_accepts(emulator, token.token)


@pytest.mark.usefixtures("app_service_env")
def test_msal_managed_identity_client_token_is_accepted(emulator: EmulatorProcess) -> None:
    """msal.ManagedIdentityClient with a system-assigned identity gets an accepted token."""
    with requests.Session() as session:
        session.trust_env = False
        client = msal.ManagedIdentityClient(
            msal.SystemAssignedManagedIdentity(), http_client=session
        )
        result = client.acquire_token_for_client(resource=POWERBI_RESOURCE)
    assert "access_token" in result, result
    assert_api_accepts(emulator, result["access_token"])


def test_wrong_identity_header_is_refused(
    app_service_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong IDENTITY_HEADER makes azure-identity raise a ClientAuthenticationError."""
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-identity-header")
    with (
        ManagedIdentityCredential() as credential,
        pytest.raises(ClientAuthenticationError) as raised,
    ):
        credential.get_token(POWERBI_SCOPE)
    assert "X-IDENTITY-HEADER is missing or wrong" in str(raised.value)


@pytest.mark.usefixtures("app_service_env")
def test_unknown_user_assigned_identity_is_refused() -> None:
    """A client_id that is not assigned to the app gets no token."""
    unknown = "99999999-9999-9999-9999-999999999999"
    with (
        ManagedIdentityCredential(client_id=unknown) as credential,
        pytest.raises(ClientAuthenticationError) as raised,
    ):
        credential.get_token(POWERBI_SCOPE)
    assert "No user-assigned managed identity" in str(raised.value)


# -- client credentials (MSAL) ----------------------------------------------------------------


def test_msal_client_secret_token_is_accepted(emulator: EmulatorProcess) -> None:
    """A confidential client with its secret gets a Power BI token the API accepts."""
    with trusting_session(emulator) as session:
        app = confidential_app(emulator, session, CLIENT_ID, CLIENT_SECRET)
        result = app.acquire_token_for_client(scopes=[POWERBI_SCOPE])
    assert "access_token" in result, result
    assert_api_accepts(emulator, result["access_token"])


def test_msal_certificate_token_is_accepted(emulator: EmulatorProcess) -> None:
    """A confidential client signing an assertion with its certificate gets an accepted token."""
    cert, key = client_certificate_paths(emulator)
    credential = {"private_key": key.read_text(), "public_certificate": cert.read_text()}
    with trusting_session(emulator) as session:
        app = confidential_app(emulator, session, CERT_CLIENT_ID, credential)
        result = app.acquire_token_for_client(scopes=[POWERBI_SCOPE])
    assert "access_token" in result, result
    assert_api_accepts(emulator, result["access_token"])


def test_msal_wrong_secret_is_invalid_client(emulator: EmulatorProcess) -> None:
    """A wrong client secret gets error invalid_client and no access token."""
    with trusting_session(emulator) as session:
        app = confidential_app(emulator, session, CLIENT_ID, "not-the-secret")
        result = app.acquire_token_for_client(scopes=[POWERBI_SCOPE])
    assert result.get("error") == "invalid_client", result
    assert "access_token" not in result


def test_token_for_another_resource_is_refused(emulator: EmulatorProcess) -> None:
    """A token issued for Azure Storage is refused by the Power BI API with 403."""
    with trusting_session(emulator) as session:
        app = confidential_app(emulator, session, CLIENT_ID, CLIENT_SECRET)
        result = app.acquire_token_for_client(scopes=[STORAGE_SCOPE])
    assert "access_token" in result, result
    response = get_datasets(emulator, f"Bearer {result['access_token']}")
    assert_refused(response, 403)


# -- the API's token checks -------------------------------------------------------------------


def test_missing_authorization_is_401(emulator: EmulatorProcess) -> None:
    """A request without an Authorization header is a 401 in the service's error shape."""
    assert_refused(get_datasets(emulator, None), 401)


def test_basic_authorization_is_401(emulator: EmulatorProcess) -> None:
    """An Authorization header that is not a bearer token is a 401."""
    assert_refused(get_datasets(emulator, "Basic xyz"), 401)


def test_token_signed_with_another_key_is_403(emulator: EmulatorProcess) -> None:
    """A well-formed JWT with the right claims but signed with another key is a 403."""
    now = int(time.time())
    claims = {
        "aud": POWERBI_RESOURCE,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": now,
        "nbf": now - 60,
        "exp": now + 3600,
        "appid": CLIENT_ID,
        "oid": "forged",
        "sub": "forged",
        "tid": TENANT,
    }
    forged = jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256")
    assert_refused(get_datasets(emulator, f"Bearer {forged}"), 403)


def test_expired_token_is_403_token_expired(emulator: EmulatorProcess) -> None:
    """An expired token is a 403 TokenExpired with the service's message."""
    expired = admin_token(emulator, lifetime=-10)
    response = get_datasets(emulator, f"Bearer {expired}")
    assert_refused(response, 403, "TokenExpired")
    assert (
        response.json()["error"]["message"]
        == "Access token has expired, resubmit with a new access token"
    )


# -- http and https ---------------------------------------------------------------------------


def test_health_is_served_over_https(emulator: EmulatorProcess) -> None:
    """The https port serves the admin API with the emulator's certificate."""
    with trusting_session(emulator) as session:
        response = session.get(f"{tls_base(emulator)}/_emulator/health", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_discovery_and_token_endpoint_on_both_ports(emulator: EmulatorProcess, scheme: str) -> None:
    """OpenID discovery and the token endpoint answer on the http and the https port alike."""
    base = emulator.base if scheme == "http" else tls_base(emulator)
    with trusting_session(emulator) as session:
        discovery = session.get(
            f"{base}/{TENANT}/v2.0/.well-known/openid-configuration", timeout=30
        )
        assert discovery.status_code == 200, discovery.text
        token_endpoint = discovery.json()["token_endpoint"]
        assert token_endpoint == f"{base}/{TENANT}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": POWERBI_SCOPE,
        }
        answer = session.post(token_endpoint, data=form, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["token_type"] == "Bearer"
    assert_api_accepts(emulator, answer.json()["access_token"])
