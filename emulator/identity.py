"""Tokens: what the emulator issues (Entra-style JWTs) and how its API checks them.

Three ways to get a token, each served so that the real client libraries work unchanged:
- the App Service managed-identity endpoint (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``), used by
  ``azure-identity``'s ``ManagedIdentityCredential`` and ``msal.ManagedIdentityClient``;
- an Entra-style client-credentials token endpoint with OpenID discovery, used by
  ``msal.ConfidentialClientApplication`` with a client secret or a certificate;
- an emulator-only admin call, for tests (any lifetime, including already expired).

Tokens are HS256 JWTs signed with the emulator's own key; the API accepts only those, only with
the Power BI audience, and only until they expire or are revoked: :meth:`TokenIssuer.revoke`
(the admin call ``POST /_emulator/tokens/revoke``) makes every token issued so far answer as
an expired one does (403 ``TokenExpired``), while tokens issued after it work, as when an
administrator revokes an identity's sessions mid-run.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

POWERBI_RESOURCE = "https://analysis.windows.net/powerbi/api"
DEFAULT_TENANT = "00000000-0000-0000-0000-00000000e1e1"
DEFAULT_TOKEN_LIFETIME = 3600
#: The claim that carries a token's generation: tokens of a generation before the issuer's
#: current one were revoked. Not an Entra claim; clients never read it.
GENERATION_CLAIM = "xms_emulator_gen"


class TokenRejected(Exception):
    """A bearer token the API refuses. ``status`` and ``code`` follow the service."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClientApp:
    """A registered Entra application (service principal) with a secret and/or certificate."""

    client_id: str
    secret: str | None = None
    certificate_pem: bytes | None = None

    def public_key(self) -> PublicKeyTypes | None:
        if self.certificate_pem is None:
            return None
        return x509.load_pem_x509_certificate(self.certificate_pem).public_key()


@dataclass
class IdentityConfig:
    """Who may get tokens. Defaults suit local development; secrets here are not real ones."""

    tenant_id: str = DEFAULT_TENANT
    identity_header: str = "emulator-identity-header"
    system_principal_id: str = "00000000-0000-0000-0000-0000000051a1"
    user_assigned: dict[str, str] = field(default_factory=dict)  # client id -> principal id
    clients: dict[str, ClientApp] = field(default_factory=dict)
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME


class TokenIssuer:
    """Signs and verifies the emulator's tokens."""

    def __init__(self, config: IdentityConfig, signing_key: bytes | None = None) -> None:
        self.config = config
        self.signing_key = signing_key or secrets.token_bytes(32)
        self.issuer = f"https://sts.windows.net/{config.tenant_id}/"
        #: Tokens carry the generation they were issued in; :meth:`revoke` starts a new one.
        self.generation = 0

    def revoke(self) -> int:
        """Revoke every token issued so far (the API answers them 403 ``TokenExpired``); tokens
        issued from now on are accepted. Returns the new generation. (Generations live as long
        as the emulator process: a restarted emulator accepts its earlier tokens again.)"""
        self.generation += 1
        return self.generation

    def issue(
        self,
        *,
        audience: str,
        subject: str,
        app_id: str,
        identity_type: str = "app",
        lifetime: int | None = None,
    ) -> tuple[str, int]:
        """Return ``(jwt, expires_on)``; ``expires_on`` is in Unix seconds."""
        now = int(time.time())
        expires_on = now + (self.config.token_lifetime if lifetime is None else lifetime)
        claims = {
            "aud": audience,
            "iss": self.issuer,
            "iat": now,
            "nbf": now - 300,
            "exp": expires_on,
            "appid": app_id,
            "oid": subject,
            "sub": subject,
            "tid": self.config.tenant_id,
            "idtyp": identity_type,
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
            GENERATION_CLAIM: self.generation,
        }
        return jwt.encode(claims, self.signing_key, algorithm="HS256"), expires_on

    def verify(
        self, authorization: str | None, audiences: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Check an ``Authorization`` header; return the claims or raise :class:`TokenRejected`.

        ``audiences``: the ``aud`` values accepted (default: Power BI's); the Kusto surface
        (emulator/kusto.py) passes its own and renders the refusal in Kusto's shape."""
        if not authorization:
            raise TokenRejected(
                401, "PowerBINotAuthorizedException", "The request has no Authorization header."
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRejected(
                401,
                "PowerBINotAuthorizedException",
                "The Authorization header must be 'Bearer <access token>'.",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token.strip(),
                self.signing_key,
                algorithms=["HS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "aud", "iss"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected(
                403, "TokenExpired", "Access token has expired, resubmit with a new access token"
            ) from None
        except jwt.PyJWTError:
            raise TokenRejected(
                403,
                "PowerBINotAuthorizedException",
                "The access token was not issued by this service or is malformed.",
            ) from None
        if claims.get(GENERATION_CLAIM, 0) < self.generation:
            # Revoked: Power BI answers a token it no longer accepts as it answers an expired one.
            raise TokenRejected(
                403, "TokenExpired", "Access token has expired, resubmit with a new access token"
            )
        audience = claims.get("aud")
        accepted = (POWERBI_RESOURCE, POWERBI_RESOURCE + "/") if audiences is None else audiences
        if audience not in accepted:
            raise TokenRejected(
                403,
                "PowerBINotAuthorizedException",
                "The access token's audience is not "
                f"{POWERBI_RESOURCE if audiences is None else ' or '.join(sorted(accepted))}.",
            )
        return claims

    # -- managed identity -------------------------------------------------------------------

    def managed_identity_principal(
        self, header: str | None, client_id: str | None
    ) -> tuple[str, str]:
        """Return ``(principal id, client id)`` for an App Service token request, or raise."""
        expected = self.config.identity_header
        if header is None or not hmac.compare_digest(header.encode(), expected.encode()):
            raise TokenRejected(401, "Unauthorized", "X-IDENTITY-HEADER is missing or wrong.")
        if client_id:
            principal = self.config.user_assigned.get(client_id)
            if principal is None:
                raise TokenRejected(
                    400,
                    "BadRequest",
                    "No user-assigned managed identity with that client_id is assigned to this "
                    "app.",
                )
            return principal, client_id
        return self.config.system_principal_id, self.config.system_principal_id

    # -- client credentials -----------------------------------------------------------------

    def authenticate_client(self, form: dict[str, str], token_endpoint: str) -> ClientApp:
        """Check a client-credentials form (secret or JWT assertion); return the client."""
        client_id = form.get("client_id", "")
        app = self.config.clients.get(client_id)
        if app is None:
            raise TokenRejected(
                400, "unauthorized_client", f"AADSTS700016: Application '{client_id}' not found."
            )
        if "client_secret" in form:
            if app.secret is None or not hmac.compare_digest(
                form["client_secret"].encode(), app.secret.encode()
            ):
                raise TokenRejected(
                    401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
                )
            return app
        assertion = form.get("client_assertion")
        if assertion and form.get("client_assertion_type", "").endswith("jwt-bearer"):
            key = app.public_key()
            if key is None:
                raise TokenRejected(
                    401, "invalid_client", "AADSTS700027: No certificate is registered."
                )
            try:
                claims = jwt.decode(
                    assertion,
                    key,  # type: ignore[arg-type]
                    algorithms=["RS256", "PS256"],
                    audience=token_endpoint,
                    options={"require": ["exp", "aud", "iss", "sub"]},
                )
            except jwt.PyJWTError as exc:
                raise TokenRejected(
                    401, "invalid_client", f"AADSTS700027: Client assertion is invalid: {exc}."
                ) from None
            if claims.get("iss") != client_id or claims.get("sub") != client_id:
                raise TokenRejected(
                    401, "invalid_client", "AADSTS700027: Assertion issuer/subject mismatch."
                )
            return app
        raise TokenRejected(
            401, "invalid_client", "AADSTS7000216: client_secret or client_assertion is required."
        )
