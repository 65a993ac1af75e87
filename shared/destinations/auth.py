"""Token providers: where the bundle gets its bearer tokens for Power BI.

Three providers behind one small interface (:class:`TokenProvider`):

- :class:`ManagedIdentityTokenProvider`: ``azure-identity``'s ``ManagedIdentityCredential``,
  system-assigned or user-assigned by client id. The default, and the recommended one.
- :class:`ServicePrincipalTokenProvider`: ``msal.ConfidentialClientApplication`` with a client
  secret or a certificate.
- :class:`StaticTokenProvider`: a fixed token, for the local emulator only (settings refuse it
  for any non-loopback API).

What the libraries already do, and so this module does not:

- ``ManagedIdentityCredential`` (azure-identity >= 1.27) hands every request to an
  ``msal.ManagedIdentityClient``, whose in-memory token cache (one per credential) answers
  until 5 minutes before a token expires, and from its ``refresh_on`` (half the lifetime of a
  token of 2 h or more) tries a refresh first, falling back on the cached token if it fails.
- ``msal.ConfidentialClientApplication.acquire_token_for_client`` (msal >= 1.23) does the
  same with the application's token cache (expiry minus 5 minutes, ``refresh_on`` when Entra
  sends ``refresh_in``).

So one provider (one credential or application) per process, reused, is all the caching
needed. What the libraries leave to us, and is here:

- **A refresh that skips their caches.** After Power BI refuses a token (403/401
  ``TokenExpired``: revoked, or expired by a clock skew), :meth:`TokenProvider.invalidate`
  makes the next :meth:`TokenProvider.token` fetch a new one. Their caches would otherwise
  hand the refused token back until it nears expiry. Each library's own way is used: for the
  managed identity a claims challenge (``get_token_info(scope, options={"claims": ...})``:
  MSAL's managed-identity client (msal >= 1.31) does not answer a request with claims from
  its cache, and the credential passes the claims on to it, as azure-identity 1.27, our
  minimum, does: Azure/azure-sdk-for-python#44815; MSAL does not send the claims to an App
  Service identity endpoint, whose request stays an ordinary one, and what that endpoint
  answers is its own affair);
  for the service principal ``remove_tokens_for_client()`` (MSAL's documented way to drop an
  app's tokens; ``acquire_token_for_client`` refuses ``force_refresh``).
- **One attempt at a time, and a failure shared for** ``FAILURE_HOLD`` **seconds.** Neither
  library shares one request between concurrent callers or remembers a failure: with the
  identity endpoint down, every caller would make and wait out its own attempt (about 5 s of
  azure-core retries against a refused connection). Here one caller asks; the callers of the
  next 2 s get its error at once. Likewise a refresh that failed while the library still had
  a usable token (it hands that token back, with its ``refresh_on`` already past) is not
  tried again by every caller: the token is given for the next 2 s without asking.
- **No waiting behind a slow request while a good token is known**: a caller that finds
  another one inside the library takes the last token given, if it was not refused and is
  more than ``EXPIRY_MARGIN`` s from expiry; so does a caller whose request failed (the
  libraries give a token up 5 minutes before it expires, this module 1 minute before).
- **Errors in one place**: azure-identity's and MSAL's exceptions and error answers become
  :mod:`shared.errors`, and no token or secret ever reaches a message.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import requests

from shared.errors import AuthError, ConfigError, TransientError
from shared.settings import Settings, clean_authority, is_loopback

if TYPE_CHECKING:
    from azure.core.credentials import SupportsTokenInfo


class TokenProvider(Protocol):
    """Gives a bearer token for the Power BI API, and forgets it when told it was refused."""

    def token(self) -> str: ...

    def invalidate(self) -> None: ...


#: After a token request failed, callers in the next this-many seconds get the same error at
#: once instead of each waiting out another attempt (azure-identity's own retries take about
#: 5 s against a refused connection): one attempt at a time, not a queue of them.
FAILURE_HOLD = 2.0
#: A token this close to expiry is not used, even while a refresh is failing.
EXPIRY_MARGIN = 60.0


@dataclass(frozen=True)
class Fetched:
    """What a library answered: the token, when it expires (Unix seconds), and whether it is a
    cached token past its ``refresh_on`` (the library's refresh failed and it fell back)."""

    token: str
    expires_on: float
    stale: bool = False


class _LibraryProvider:
    """Around a library's own cache: a refresh that skips it, one request at a time, failures
    shared for ``FAILURE_HOLD`` seconds (the module docstring says why). Thread-safe.

    Subclasses implement :meth:`_fetch`, the one call into their library.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held while fetching
        self._asking = threading.Lock()  # one request into the library at a time
        self._refusals = 0  # invalidate() calls so far
        self._answered = 0  # of which a fetch that skipped the cache has answered
        self._last: Fetched | None = None
        self._last_at = 0.0
        self._failure: TransientError | None = None
        self._failed_at = 0.0

    def token(self) -> str:
        """A token: the library's cached one, or after :meth:`invalidate` one fetched anew."""
        if not self._asking.acquire(blocking=False):
            known = self._usable(self._clock())
            if known is not None:  # someone is inside the library: no need to queue for it
                return known
            self._asking.acquire()
        try:
            return self._token_once()
        finally:
            self._asking.release()

    def invalidate(self) -> None:
        """The last token was refused: the next :meth:`token` skips the library's cache."""
        with self._lock:
            self._refusals += 1
            self._last = None

    def _usable(self, now: float) -> str | None:
        """The last token given, if it was not refused and is not about to expire."""
        with self._lock:
            last = self._last
            if last is not None and now < last.expires_on - EXPIRY_MARGIN:
                return last.token
            return None

    def _token_once(self) -> str:
        now = self._clock()
        with self._lock:
            refusals = self._refusals
            fresh = refusals > self._answered
            last, last_at = self._last, self._last_at
            failure, failed_at = self._failure, self._failed_at
        if failure is not None and now < failed_at + FAILURE_HOLD:
            known = self._usable(now)
            if known is not None:
                return known
            raise TransientError(
                f"{failure} (tried {now - failed_at:.1f} s ago)",
                retry_after=failed_at + FAILURE_HOLD - now,
            )
        if not fresh and last is not None and last.stale and now < last_at + FAILURE_HOLD:
            return last.token  # its refresh failed a moment ago: not again for every caller
        try:
            got = self._fetch(fresh=fresh)
        except TransientError as error:
            with self._lock:
                self._failure, self._failed_at = error, self._clock()
            known = self._usable(now)
            if known is not None:
                return known  # still valid: refresh again later
            raise
        with self._lock:
            self._failure = None
            self._last, self._last_at = got, self._clock()
            if fresh:
                self._answered = refusals
        return got.token

    def _fetch(self, *, fresh: bool) -> Fetched:
        """Ask the library for a token; ``fresh``: not from its cache."""
        raise NotImplementedError


def claims_challenge(now: float) -> str:
    """A claims challenge asking for a token issued from ``now`` on: the shape a resource
    sends when it revoked a token (Continuous Access Evaluation,
    https://learn.microsoft.com/entra/identity-platform/claims-challenge)."""
    return json.dumps({"access_token": {"nbf": {"essential": True, "value": str(int(now))}}})


class ManagedIdentityTokenProvider(_LibraryProvider):
    """Tokens from the app's managed identity (``client_id`` selects a user-assigned one).

    ``credential`` is the process's ``ManagedIdentityCredential`` for that identity when one
    is shared with other clients (storage); without it the provider makes its own.
    """

    def __init__(
        self,
        scope: str,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
        *,
        credential: SupportsTokenInfo | None = None,
    ) -> None:
        super().__init__(clock)
        self._scope = scope
        self._client_id = client_id
        if credential is None:
            from azure.identity import ManagedIdentityCredential  # heavy: import when used

            credential = ManagedIdentityCredential(client_id=client_id)
        self._credential = credential

    def _fetch(self, *, fresh: bool) -> Fetched:
        from azure.core.credentials import TokenRequestOptions
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.identity import CredentialUnavailableError

        options: TokenRequestOptions = {}
        if fresh:  # MSAL's managed-identity client never answers a claims request from cache
            options["claims"] = claims_challenge(self._clock())
        try:
            info = self._credential.get_token_info(self._scope, options=options)
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
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientError(
                f"managed identity endpoint unreachable: {_first_line(exc)}"
            ) from exc
        stale = info.refresh_on is not None and info.refresh_on <= self._clock()
        return Fetched(info.token, float(info.expires_on), stale)


class ServicePrincipalTokenProvider(_LibraryProvider):
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

    def _fetch(self, *, fresh: bool) -> Fetched:
        if fresh:  # MSAL's documented way to forget this app's tokens (no force_refresh here)
            self._app.remove_tokens_for_client()
        try:
            result = self._app.acquire_token_for_client(scopes=[self._scope])
        except requests.RequestException as exc:
            raise TransientError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if "access_token" not in result:
            raise AuthError(
                f"service principal sign-in failed: {result.get('error')}: "
                f"{_first_line(result.get('error_description', ''))}"
            )
        now = self._clock()
        refresh_on = result.get("refresh_on")
        stale = (
            result.get("token_source") == "cache"
            and refresh_on is not None
            and float(refresh_on) <= now
        )
        return Fetched(str(result["access_token"]), now + float(result.get("expires_in", 0)), stale)


class StaticTokenProvider:
    """A fixed token (emulator only): never refreshed."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        """Nothing to refresh: the next call returns the same token."""


def make_token_provider(
    settings: Settings,
    managed_identity: Callable[[str | None], SupportsTokenInfo] | None = None,
) -> TokenProvider:
    """The provider that ``settings.auth_mode`` asks for; ``managed_identity(client_id)`` gives
    the process's shared credential for an identity, when there is one."""
    return token_provider_for(
        settings.auth_mode,
        f"{settings.resource}/.default",
        settings.client_id,
        settings.authority,
        settings,
        managed_identity,
    )


def token_provider_for(
    auth_mode: str,
    scope: str,
    client_id: str | None,
    authority: str | None,
    settings: Settings,
    managed_identity: Callable[[str | None], SupportsTokenInfo] | None = None,
) -> TokenProvider:
    """A provider of tokens for ``scope`` as ``auth_mode`` says (``static``: the settings'
    static token; ``service_principal``: ``client_id`` at ``authority`` with the settings'
    secret or certificate; else the managed identity ``client_id``, None for the system one):
    one rule for every destination (Power BI, Eventhouse)."""
    if auth_mode == "static":
        assert settings.static_token is not None  # settings refuse static without it
        return StaticTokenProvider(settings.static_token)
    if auth_mode == "service_principal":
        assert client_id is not None and authority is not None
        return ServicePrincipalTokenProvider(
            client_id=client_id,
            authority=authority,
            scope=scope,
            secret=settings.client_secret,
            certificate_path=settings.client_certificate_path,
            ca_bundle=settings.ca_bundle,
        )
    credential = managed_identity(client_id) if managed_identity else None
    return ManagedIdentityTokenProvider(scope, client_id, credential=credential)


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
    "EXPIRY_MARGIN",
    "FAILURE_HOLD",
    "ManagedIdentityTokenProvider",
    "ServicePrincipalTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "check_token_destination",
    "make_token_provider",
]
