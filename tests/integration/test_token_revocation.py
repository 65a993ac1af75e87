"""Tokens revoked mid-run: the next Add Rows gets a token the real library fetched anew.

The emulator revokes every token issued so far (``POST /_emulator/tokens/revoke``); Power BI's
answer to such a token is 403 ``TokenExpired``, after which the client drops its token and
retries once. With azure-identity's ``ManagedIdentityCredential`` and MSAL's
``ConfidentialClientApplication`` as they are, the retry must not be served the refused token
from their caches. Own emulator: revoking tokens in the session's one would refuse the other
tests' tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.contracts import Target
from shared.destinations.auth import (
    ManagedIdentityTokenProvider,
    ServicePrincipalTokenProvider,
    TokenProvider,
)
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import Ingestor
from shared.engine.retry import RetryPolicy
from tests.emulator.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    IDENTITY_HEADER,
    POWERBI_RESOURCE,
    TENANT,
    WORKSPACE_ID,
    EmulatorProcess,
    start_emulator,
)
from tests.seed import definition, product

SCOPE = POWERBI_RESOURCE + "/.default"
FAST = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)
#: Variables that would send azure-identity to another identity source than App Service's.
OTHER_IDENTITY_VARIABLES = (
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
)


@pytest.fixture(scope="module")
def revocable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """An emulator of this module's own, with TLS for MSAL's authority."""
    tmp = tmp_path_factory.mktemp("revocation")
    process = start_emulator("--tls", "--tls-dir", str(tmp / "tls"), tmp=tmp)
    yield process
    process.stop()


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def revoke(emulator: EmulatorProcess) -> None:
    """Revoke every token the emulator has issued so far."""
    with _session() as session:
        response = session.post(f"{emulator.base}/_emulator/tokens/revoke", timeout=10)
    assert response.status_code == 200, response.text


def stored_ids(emulator: EmulatorProcess, dataset_id: str) -> list[int]:
    """The ProductIDs stored in the dataset's Product table, read back from the emulator."""
    url = f"{emulator.base}/_emulator/datasets/{dataset_id}/tables/Product/rows"
    with _session() as session:
        body = session.get(url, timeout=30).json()
    return [int(row["ProductID"]) for row in body["rows"]]


def api_status(emulator: EmulatorProcess, token: str) -> tuple[int, str | None]:
    """What the Power BI API answers to a Get Datasets call carrying ``token`` (in the test
    workspace: Power BI refuses service principals on My workspace): the status and the error
    code, if any."""
    with _session() as session:
        response = session.get(
            f"{emulator.api}/groups/{WORKSPACE_ID}/datasets",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    error = response.json().get("error") if not response.ok else None
    return response.status_code, error["code"] if error else None


def push_across_a_revocation(emulator: EmulatorProcess, tokens: TokenProvider) -> None:
    """Push 5 rows, revoke every token, push 7 more through the same ingestor: all 12 rows are
    stored once, and the second push went with a token issued after the revocation."""
    name = f"Revoked-{uuid.uuid4().hex[:8]}"
    ingestor = Ingestor(
        PowerBIClient(emulator.base, tokens, retry=FAST),
        definitions={name: definition(name)},
        retry=FAST,
        # A workspace: Power BI refuses service principals on My workspace (issue 17).
        default_workspace=WORKSPACE_ID,
    )
    target = Target(name, "Product")
    first = ingestor.push(target, [product(i) for i in range(5)])
    assert (first.sent, first.dead_lettered) == (5, 0)
    before = tokens.token()
    assert api_status(emulator, before) == (200, None)

    revoke(emulator)
    assert api_status(emulator, before) == (403, "TokenExpired"), "the token was not revoked"
    second = ingestor.push(target, [product(i) for i in range(5, 12)])

    assert (second.sent, second.rejected, second.dead_lettered) == (7, 0, 0), second.to_json()
    after = tokens.token()
    assert after != before
    assert api_status(emulator, after) == (200, None)
    assert first.dataset_id is not None
    assert sorted(stored_ids(emulator, first.dataset_id)) == list(range(12))


def test_managed_identity_gets_a_new_token_after_revocation(
    revocable: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azure-identity's ManagedIdentityCredential against the emulator's App Service identity
    endpoint: after the revocation the retried Add Rows carries a new token, no row lost."""
    for name in OTHER_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{revocable.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    push_across_a_revocation(revocable, ManagedIdentityTokenProvider(SCOPE))


def test_service_principal_gets_a_new_token_after_revocation(
    revocable: EmulatorProcess,
) -> None:
    """MSAL's ConfidentialClientApplication (client secret) against the emulator's https
    authority: after the revocation the retried Add Rows carries a new token, no row lost."""
    assert revocable.tls_base is not None and revocable.cert is not None
    provider = ServicePrincipalTokenProvider(
        client_id=CLIENT_ID,
        authority=f"{revocable.tls_base}/{TENANT}",
        scope=SCOPE,
        secret=CLIENT_SECRET,
        ca_bundle=str(Path(revocable.cert)),
    )
    push_across_a_revocation(revocable, provider)
