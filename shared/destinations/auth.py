"""Token providers: where the bundle gets its bearer tokens for Power BI.

Three providers behind one small interface (:class:`TokenProvider`):

- :class:`ManagedIdentityTokenProvider`: ``azure-identity``'s ``ManagedIdentityCredential``,
  system-assigned or user-assigned by client id. The default, and the recommended one.
- :class:`ServicePrincipalTokenProvider`: ``msal.ConfidentialClientApplication`` with a client
  secret or a certificate.
- :class:`StaticTokenProvider`: a fixed token, for the local emulator only (settings refuse it
  for any non-loopback API).

One provider (and so one credential) per process, reused across invocations; tokens are cached
until 5 minutes before they expire (the same window azure-core uses, DEFAULT_REFRESH_WINDOW 300 s).
Library errors are translated here, and no token or secret ever reaches a message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import requests

from shared.errors import AuthError, ConfigError, TransientError
from shared.settings import Settings, clean_authority, is_loopback

#: Refresh a cached token when less than this many seconds are left.
REFRESH_WINDOW = 300.0


class TokenProvider(Protocol):
    """Gives a bearer token for the Power BI API, and forgets it when told it was refused."""

    def token(self) -> str: ...

    def invalidate(self) -> None: ...


#: After the identity endpoint failed, callers in the next this-many seconds get the same
#: error at once instead of each waiting out another attempt (azure-identity's own retries
#: take about 5 s against a refused connection): one attempt at a time, not a queue of them.
FAILURE_HOLD = 2.0
#: A token this close to expiry is not used, even while a refresh is failing.
EXPIRY_MARGIN = 60.0


class _CachedProvider:
    """Caches one token until ``REFRESH_WINDOW`` seconds before it expires; thread-safe.

    One caller at a time asks the identity endpoint. While a token that has not expired is
    cached, nobody waits for that: the others keep using it, and so does the refresher when
    its attempt fails. With no usable token, callers wait for the one attempt, and a failure
    is shared with the callers of the next ``FAILURE_HOLD`` seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held while fetching
        self._fetching = threading.Lock()  # one attempt at a time
        self._token: str | None = None
        self._expires_on = 0.0
        self._failure: TransientError | None = None
        self._failed_at = 0.0

    def _cached(self, now: float) -> tuple[str | None, bool]:
        """The token if it needs no refresh yet; else (a still-usable token or None, False)."""
        with self._lock:
            if self._token is not None and now < self._expires_on - REFRESH_WINDOW:
                return self._token, True
            if self._token is not None and now < self._expires_on - EXPIRY_MARGIN:
                return self._token, False
            return None, False

    def _held_failure(self, now: float) -> TransientError | None:
        with self._lock:
            if self._failure is not None and now < self._failed_at + FAILURE_HOLD:
                left = self._failed_at + FAILURE_HOLD - now
                return TransientError(
                    f"{self._failure} (tried {now - self._failed_at:.1f} s ago)", retry_after=left
                )
            return None

    def token(self) -> str:
        now = self._clock()
        token, fresh = self._cached(now)
        if fresh:
            assert token is not None
            return token
        if token is not None:  # usable while it is refreshed, by one caller, without waiting
            if self._held_failure(now) is not None or not self._fetching.acquire(blocking=False):
                return token
        else:
            self._fetching.acquire()
        try:
            token, fresh = self._cached(self._clock())
            if fresh:  # another caller fetched one while this one waited
                assert token is not None
                return token
            held = self._held_failure(self._clock())
            if held is not None:
                if token is not None:
                    return token
                raise held
            try:
                new, expires_on = self._acquire()
            except TransientError as error:
                with self._lock:
                    self._failure, self._failed_at = error, self._clock()
                if token is not None:
                    return token  # still valid: refresh again later
                raise
            with self._lock:
                self._token, self._expires_on, self._failure = new, expires_on, None
            return new
        finally:
            self._fetching.release()

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _acquire(self) -> tuple[str, float]:
        raise NotImplementedError


class ManagedIdentityTokenProvider(_CachedProvider):
    """Tokens from the app's managed identity (``client_id`` selects a user-assigned one)."""

    def __init__(
        self, scope: str, client_id: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        from azure.identity import ManagedIdentityCredential  # heavy: import when first used

        self._scope = scope
        self._client_id = client_id
        self._credential = ManagedIdentityCredential(client_id=client_id)

    def _acquire(self) -> tuple[str, float]:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
        from azure.identity import CredentialUnavailableError

        try:
            access = self._credential.get_token(self._scope)
        except CredentialUnavailableError as exc:
            # No identity endpoint here, or the endpoint refused this app's identity.
            raise ConfigError(
                "POWERBI_AUTH",
                f"the managed identity is not available: {_first_line(exc)}",
            ) from exc
        except ClientAuthenticationError as exc:
            which = f"user-assigned {self._client_id}" if self._client_id else "system-assigned"
            raise AuthError(
                f"the {which} managed identity could not get a token: {_first_line(exc)}"
            ) from exc
        except ServiceRequestError as exc:
            raise TransientError(f"managed identity endpoint unreachable: {exc}") from exc
        return access.token, float(access.expires_on)


class ServicePrincipalTokenProvider(_CachedProvider):
    """Tokens for an Entra app registration, with a client secret or a certificate (PEM file
    holding the private key and the certificate)."""

    def __init__(
        self,
        *,
        client_id: str,
        authority: str,
        scope: str,
        secret: str | None = None,
        certificate_path: str | None = None,
        ca_bundle: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        import msal

        session = requests.Session()
        if ca_bundle:
            # requests lets REQUESTS_CA_BUNDLE override session.verify unless trust_env is off.
            session.trust_env = False
            session.verify = ca_bundle
        credential: Any = secret if secret is not None else _certificate(certificate_path)
        self._scope = scope
        try:
            self._app = msal.ConfidentialClientApplication(
                client_id,
                client_credential=credential,
                authority=authority,
                http_client=session,
                # Instance discovery asks login.microsoftonline.com about the authority; a
                # local emulator's authority is not known there.
                instance_discovery=not is_loopback(authority),
            )
        except ValueError as exc:
            raise ConfigError("POWERBI_AUTHORITY_URL", f"authority not usable: {exc}") from exc
        except requests.RequestException as exc:
            raise TransientError(
                f"authority {authority} unreachable: {type(exc).__name__}"
            ) from exc

    def _acquire(self) -> tuple[str, float]:
        try:
            result = self._app.acquire_token_for_client(scopes=[self._scope])
        except requests.RequestException as exc:
            raise TransientError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if "access_token" not in result:
            raise AuthError(
                f"service principal sign-in failed: {result.get('error')}: "
                f"{_first_line(result.get('error_description', ''))}"
            )
        return str(result["access_token"]), self._clock() + float(result.get("expires_in", 0))


class StaticTokenProvider:
    """A fixed token (emulator only): never refreshed."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        """Nothing to refresh: the next call returns the same token."""


def make_token_provider(settings: Settings) -> TokenProvider:
    """The provider that ``settings.auth_mode`` asks for."""
    scope = f"{settings.resource}/.default"
    if settings.auth_mode == "static":
        assert settings.static_token is not None
        return StaticTokenProvider(settings.static_token)
    if settings.auth_mode == "service_principal":
        assert settings.client_id is not None and settings.authority is not None
        return ServicePrincipalTokenProvider(
            client_id=settings.client_id,
            authority=settings.authority,
            scope=scope,
            secret=settings.client_secret,
            certificate_path=settings.client_certificate_path,
            ca_bundle=settings.ca_bundle,
        )
    return ManagedIdentityTokenProvider(scope, settings.client_id)


def check_token_destination(url: str) -> None:
    """Refuse to send a bearer token anywhere but https (or a loopback emulator)."""
    if not clean_authority(url) or (not url.startswith("https://") and not is_loopback(url)):
        raise ConfigError("POWERBI_API_URL", "bearer tokens are only sent over https")


def _certificate(path: str | None) -> dict[str, str]:
    if path is None:
        raise ConfigError("POWERBI_CLIENT_CERTIFICATE_PATH", "is required without a secret")
    try:
        pem = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("POWERBI_CLIENT_CERTIFICATE_PATH", f"cannot read it: {exc}") from exc
    if "PRIVATE KEY-----" not in pem or "BEGIN CERTIFICATE" not in pem:
        raise ConfigError(
            "POWERBI_CLIENT_CERTIFICATE_PATH",
            "must be a PEM file with the private key and the certificate",
        )
    # MSAL computes the SHA-256 thumbprint from the public certificate (msal >= 1.35).
    return {"private_key": pem, "public_certificate": pem}


def _first_line(error: object) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""


__all__ = [
    "REFRESH_WINDOW",
    "ManagedIdentityTokenProvider",
    "ServicePrincipalTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "check_token_destination",
    "make_token_provider",
]
