"""The Eventhouse destination: rows into a KQL database (Fabric Eventhouse or Azure Data
Explorer) through Microsoft's maintained clients (azure-kusto-data, azure-kusto-ingest 6.x).

- Commands and queries: ``KustoClient`` against the cluster (``EVENTHOUSE_URI``).
- Batches of rows: ``ManagedStreamingIngestClient``, JSON lines with the table's pre-created
  mapping. It streams a batch whose gzip-compressed body is at most 4 MiB
  (``MAX_STREAMING_SIZE_IN_BYTES``; the streaming limit is "4 MB",
  https://learn.microsoft.com/azure/data-explorer/ingest-data-streaming), and hands anything
  larger, throttled (429) or refused as not permanent to queued ingestion (the 429 fallback
  since 6.0.1, Azure/azure-kusto-python#600, #618).
- Large files: ``QueuedIngestClient`` (the managed client's own), which uploads the gzipped file
  to the storage ``.get ingestion resources`` names and queues a message; the service ingests it
  later (batching policy: 5 minutes, 500 items or 1 GB by default,
  https://learn.microsoft.com/kusto/management/batching-policy).

Tokens: the bundle's own :class:`~shared.destinations.auth.TokenProvider` (managed identity,
service principal or static) through ``with_token_provider``, so one credential per identity is
shared with Power BI and storage, a refused token is dropped (:meth:`TokenProvider.invalidate`)
and token errors are the bundle's. Tokens go only to https or loopback
(:func:`~shared.destinations.auth.check_token_destination`); the released 6.0.4 skips its
trusted-endpoint check for token providers (notes: Azure/azure-kusto-python#644), so ours is the
check that runs.

Errors: every exception of the clients and of storage becomes one of ``shared.errors`` in
:func:`translate`, the one place that does; messages never carry a token or a SAS signature.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from os import PathLike
from typing import IO, TYPE_CHECKING, Any, Final

import msgspec

from shared.destinations.auth import (
    TokenProvider,
    check_token_destination,
    token_provider_for,
)
from shared.destinations.kusto_schema import (
    MAPPING_NAME,
    KustoTable,
    compare_columns,
    kusto_table,
    quote_name,
)
from shared.engine.retry import parse_retry_after
from shared.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    PushError,
    TransientError,
    ValidationError,
)
from shared.settings import EventhouseSettings, Settings

if TYPE_CHECKING:
    from azure.core.credentials import SupportsTokenInfo
    from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
    from azure.kusto.ingest import IngestionProperties, ManagedStreamingIngestClient

    from shared.engine.schema import DatasetDefinition

log = logging.getLogger(__name__)

#: gzip level of the rows sent (see :meth:`EventhouseClient.ingest`).
GZIP_LEVEL: Final = 1

#: The token audience: the clients' own default when the cluster's /v1/rest/auth/metadata has
#: none (azure-kusto-data _cloud_settings.DEFAULT_KUSTO_SERVICE_RESOURCE_ID); ADX and Fabric
#: Eventhouse both accept it (https://learn.microsoft.com/kusto/api/rest/authenticate-with-msal).
KUSTO_SCOPE: Final = "https://kusto.kusto.windows.net/.default"

#: Error codes of an identity the service refused (Kusto's 401/403 answers).
_AUTH_CODES: Final = frozenset({"Unauthorized", "Forbidden", "Unauthenticated"})
#: Codes of a missing table, database or mapping ("kusto-data-client-errors": TableNotExist,
#: DatabaseNotExist, MappingReferenceWasNotFound; all permanent).
_NOT_FOUND = re.compile(r"NotExist|NotFound|MappingReferenceWasNotFound", re.IGNORECASE)
#: The answers of a cluster or table where streaming ingestion is off: 404 on
#: /v1/rest/ingest (the cluster capability; the client says "Please enable streaming
#: ingestion on your cluster", Azure/azure-kusto-python#187), and the policy's subcode
#: ``BadRequest_StreamingIngestionPolicyNotEnabled``.
_STREAMING_OFF = re.compile(
    r"StreamingIngestionPolicyNotEnabled|StreamingIngestionDisabled|enable streaming ingestion",
    re.IGNORECASE,
)
#: Secrets that may appear in a library's message: a SAS signature in a storage URL, a bearer
#: token.
_SECRETS = re.compile(r"(sig=)[^&\s'\"]+|(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def _scrub(text: str, limit: int = 400) -> str:
    """``text`` without secrets, on one line, at most ``limit`` characters."""
    clean = _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "REDACTED", text)
    return " ".join(clean.split())[:limit]


# --- errors -----------------------------------------------------------------------------------


def translate(exc: BaseException, what: str) -> PushError:
    """Map an exception of the Kusto clients (or of the storage they use) to the bundle's
    hierarchy: the one place that does. ``what`` names the call for the message.

    - ``KustoThrottlingError`` (HTTP 429) -> :class:`TransientError` (``retry_after`` from a
      ``Retry-After`` header if the service sent one; the docs promise none).
    - ``KustoApiError`` / ``KustoServiceError`` by status, code and ``@permanent``: 401/403 ->
      :class:`AuthError`; a missing table, database or mapping -> :class:`NotFoundError`; 400 and
      413 -> :class:`ValidationError`; 5xx and ``@permanent: false`` -> :class:`TransientError`;
      anything else permanent -> :class:`PermanentError`.
    - ``KustoNetworkError`` (connection or read failure) -> :class:`TransientError`, with
      ``maybe_delivered`` unless the connection never opened (as for Power BI).
    - ``KustoAuthenticationError`` -> the token provider's own error, or :class:`AuthError`.
    - An untrusted host -> :class:`ConfigError` naming ``EVENTHOUSE_URI``.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.kusto.data.exceptions import (
        KustoApiError,
        KustoAuthenticationError,
        KustoBlobError,
        KustoClientInvalidConnectionStringException,
        KustoError,
        KustoMultiApiError,
        KustoNetworkError,
        KustoServiceError,
        KustoThrottlingError,
    )

    if isinstance(exc, PushError):
        return exc
    if isinstance(exc, KustoAuthenticationError):
        inner = exc.exception
        if isinstance(inner, PushError):
            return inner
        return AuthError(f"{what}: no token ({type(inner).__name__}: {_scrub(str(inner))})")
    if isinstance(exc, KustoThrottlingError):
        response = _response_of(exc)
        retry_after = (
            parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
        )
        return TransientError(
            f"{what}: Kusto throttled the request (429 TooManyRequests)",
            retry_after=retry_after,
            maybe_delivered=False,
            status=429,
            code="TooManyRequests",
            request_id=_activity_id(response),
        )
    if isinstance(exc, KustoNetworkError):
        cause = exc.__cause__
        never = cause is not None and _never_connected(cause)
        name = type(cause).__name__ if cause is not None else "network error"
        if never:
            return TransientError(f"{what}: could not connect ({name})", maybe_delivered=False)
        return TransientError(
            f"{what}: no complete answer ({name}); the request may have been processed",
            maybe_delivered=True,
        )
    if isinstance(exc, KustoServiceError):
        response = _response_of(exc)
        status = response.status_code if response is not None else None
        code: str | None = None
        permanent: bool | None = None
        message = exc.message_text if hasattr(exc, "message_text") else str(exc)
        if isinstance(exc, KustoApiError):
            error = exc.get_api_error()
            code, permanent = error.code, error.permanent
            message = "; ".join(p for p in (error.message, error.description) if p) or message
        elif isinstance(exc, KustoMultiApiError) and exc.get_api_errors():
            first = exc.get_api_errors()[0]
            code, permanent = first.code, first.permanent
        return _by_status(what, status, code, permanent, _scrub(message), _activity_id(response))
    if isinstance(exc, KustoClientInvalidConnectionStringException):
        return ConfigError("EVENTHOUSE_URI", f"{what}: {_scrub(str(exc))}")
    if isinstance(exc, KustoBlobError):  # no blob stored, nothing queued
        inner = exc.inner
        if isinstance(inner, HttpResponseError | ServiceRequestError | ServiceResponseError):
            storage = translate(inner, f"{what}: upload for queued ingestion")
            if isinstance(storage, TransientError):
                storage.maybe_delivered = False
            return storage
        return TransientError(
            f"{what}: upload for queued ingestion failed ({type(inner).__name__}: "
            f"{_scrub(str(inner))})",
            maybe_delivered=False,
        )
    if isinstance(exc, ClientAuthenticationError):
        return AuthError(f"{what}: storage refused the identity: {_scrub(str(exc))}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        code = getattr(exc, "error_code", None)
        return _by_status(what, status, code, None, _scrub(exc.reason or str(exc)), None)
    if isinstance(exc, ServiceRequestError):
        return TransientError(
            f"{what}: could not connect ({type(exc).__name__})", maybe_delivered=False
        )
    if isinstance(exc, ServiceResponseError):
        return TransientError(
            f"{what}: no complete answer ({type(exc).__name__}); the request may have been "
            "processed",
            maybe_delivered=True,
        )
    if isinstance(exc, KustoError):  # the client refused before sending anything
        return PermanentError(f"{what}: {type(exc).__name__}: {_scrub(str(exc))}")
    return PermanentError(f"{what}: unexpected {type(exc).__name__}: {_scrub(str(exc))}")


def _by_status(
    what: str,
    status: int | None,
    code: str | None,
    permanent: bool | None,
    message: str,
    request_id: str | None,
) -> PushError:
    """The error for a Kusto (or storage) answer, by status, code and ``@permanent``."""
    text = f"{what}: Kusto answered {status if status is not None else 'an error'}"
    text += f" {code}: {message}" if code else f": {message}"
    kwargs: dict[str, Any] = {"status": status, "code": code, "request_id": request_id}
    if status == 429:
        return TransientError(text, maybe_delivered=False, **kwargs)
    if status in (401, 403) or code in _AUTH_CODES:
        return AuthError(text, **kwargs)
    if _STREAMING_OFF.search(f"{code or ''} {message}"):
        return PermanentError(
            text + " — streaming ingestion is off for this cluster or table (Azure Data "
            "Explorer: turn the cluster's streaming ingestion on, then the table's policy)",
            **kwargs,
        )
    if code and _NOT_FOUND.search(code):
        return NotFoundError(text, **kwargs)
    reached = status is not None and (status >= 500 or status == 408)
    if permanent is False or (reached and permanent is not True):
        # 5xx and 408 reached the service: a streaming ingestion may have been applied.
        return TransientError(text, maybe_delivered=reached, **kwargs)
    if status in (400, 413) or (code or "").startswith(("BadRequest", "General_BadRequest")):
        return ValidationError(text, **kwargs)
    if status == 404:
        return NotFoundError(text, **kwargs)
    return PermanentError(text, **kwargs)


def _response_of(exc: BaseException) -> Any:
    """The ``requests.Response`` a Kusto exception carries, if any (``KustoServiceError``
    keeps it as ``http_response``; ``KustoThrottlingError`` as its second argument)."""
    response = getattr(exc, "http_response", None)
    if response is None:
        response = next((a for a in exc.args if hasattr(a, "status_code")), None)
    return response


def _activity_id(response: Any) -> str | None:
    """The ``x-ms-activity-id`` Kusto answers with (response-v2.md), for support."""
    if response is None:
        return None
    value = response.headers.get("x-ms-activity-id")
    return str(value) if value else None


def _never_connected(cause: BaseException) -> bool:
    """Whether a requests failure happened before anything was sent (refused, connect
    timeout): the same rule as the Power BI client's."""
    import requests

    from shared.destinations.powerbi import _never_connected as powerbi_rule

    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return True
    return isinstance(cause, requests.exceptions.ConnectionError) and powerbi_rule(cause)


# --- the client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestOutcome:
    """What one ingestion did: ``method`` is ``"streaming"`` (stored when this returned) or
    ``"queued"`` (accepted; the service stores it later); ``body_bytes`` the JSON lines sent,
    before compression; ``source_id`` the id the service's logs carry."""

    table: str
    rows: int
    body_bytes: int
    method: str
    source_id: str


def bound_timeouts(client: KustoClient, seconds: float) -> None:
    """Make every call of ``client`` give up after about ``seconds``. The client's defaults
    (azure-kusto-data 6.0.4, client.py) are 1 h for commands, 10 min for streaming ingestion
    and 4 min for queries, each plus 30 s: one unanswered call would outlive the function's
    10-minute timeout (host.json), when the engine's time budget should bound it. No public
    option reaches the ingest clients' own KustoClients, so the instance's defaults are set
    (the class attributes the request reads, ``client_base.ExecuteRequestParams``)."""
    limit = timedelta(seconds=seconds)
    vars(client).update(
        _mgmt_default_timeout=limit,
        _query_default_timeout=limit,
        _streaming_ingest_default_timeout=limit,
        # The client waits this long past the server's timeout before giving up itself.
        _client_server_delta=timedelta(seconds=min(5.0, seconds)),
    )


def encode_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Rows as JSON lines (the ``json`` format: one object per line,
    https://learn.microsoft.com/azure/data-explorer/ingestion-supported-formats), and their
    count."""
    encoder = msgspec.json.Encoder()
    out = bytearray()
    count = 0
    for row in rows:
        encoder.encode_into(row, out, len(out))
        out += b"\n"
        count += 1
    return bytes(out), count


def token_provider(
    eventhouse: EventhouseSettings,
    settings: Settings,
    managed_identity: Callable[[str | None], SupportsTokenInfo] | None = None,
) -> TokenProvider:
    """The provider ``EVENTHOUSE_AUTH`` asks for, with Kusto's scope; ``managed_identity`` gives
    the process's shared credential for an identity (as for Power BI)."""
    return token_provider_for(
        eventhouse.auth_mode,
        KUSTO_SCOPE,
        eventhouse.client_id,
        eventhouse.authority,
        settings,
        managed_identity,
    )


def connection(url: str, tokens: TokenProvider) -> KustoConnectionStringBuilder:
    """A connection to ``url`` whose bearer token comes from ``tokens``, refused unless ``url``
    is https or loopback (the released client does not check this for token providers)."""
    from azure.kusto.data import KustoConnectionStringBuilder

    try:
        check_token_destination(url)
    except ConfigError:
        raise ConfigError("EVENTHOUSE_URI", "bearer tokens are only sent over https") from None
    return KustoConnectionStringBuilder.with_token_provider(url, tokens.token)


class EventhouseClient:
    """One KQL database cluster: tables made ready from definitions, rows ingested, read back.

    Thread-safe as the underlying clients are (one ``requests`` session each); build one per
    process (:meth:`from_settings`) and :meth:`close` it at the end.
    """

    def __init__(
        self,
        *,
        uri: str,
        ingest_uri: str,
        tokens: TokenProvider,
        database: str | None = None,
        streaming_policy: bool = True,
        streaming_attempts: int = 1,
        timeout: float = 60.0,
    ) -> None:
        """``streaming_policy``: whether :meth:`ensure_table` enables the table's streaming
        policy (not on Fabric, where it is always on). ``streaming_attempts``: streaming tries
        per batch before queued ingestion takes it; 1 because the engine's retry policy owns
        retries, and the managed client's own retries (with random sleeps) would retry even
        permanent refusals (managed_streaming_ingest_client.py retries every exception).
        ``timeout``: the longest one call may take, in seconds (:func:`bound_timeouts`)."""
        from azure.kusto.data import KustoClient
        from azure.kusto.ingest import ManagedStreamingIngestClient

        self.uri = uri
        self.ingest_uri = ingest_uri
        self.database = database
        self._tokens = tokens
        self._streaming_policy = streaming_policy
        engine = connection(uri, tokens)
        self._kusto: KustoClient = KustoClient(engine)
        # The endpoints are given as configured: the ingest- rule was applied by the settings.
        self._ingest: ManagedStreamingIngestClient = ManagedStreamingIngestClient(
            engine, connection(ingest_uri, tokens), auto_correct_endpoint=False
        )
        # A private method, the one way to set the managed client's retries (6.0.4).
        self._ingest._set_retry_settings(num_of_attempts=streaming_attempts)
        for client in (
            self._kusto,
            self._ingest.streaming_client._kusto_client,
            self._ingest.queued_client._resource_manager._kusto_client,
        ):
            bound_timeouts(client, timeout)
        self._lock = threading.Lock()
        self._ready: set[tuple[str, KustoTable]] = set()
        #: Set when the cluster says streaming is off: every later batch goes queued.
        self.streaming_off = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        managed_identity: Callable[[str | None], SupportsTokenInfo] | None = None,
    ) -> EventhouseClient:
        """The client ``EVENTHOUSE_*`` describe; a :class:`ConfigError` when they are not set."""
        eventhouse = settings.require_eventhouse()
        return cls(
            uri=eventhouse.uri,
            ingest_uri=eventhouse.ingest_uri,
            tokens=token_provider(eventhouse, settings, managed_identity),
            database=eventhouse.database,
            streaming_policy=not eventhouse.is_fabric,
            timeout=eventhouse.timeout,
        )

    def close(self) -> None:
        """Close the clients' sessions."""
        self._ingest.close()
        self._kusto.close()  # type: ignore[no-untyped-call]  # untyped in 6.0.4

    def __enter__(self) -> EventhouseClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- commands and queries --

    def _db(self, database: str | None) -> str:
        db = database or self.database
        if db is None:
            raise ConfigError(
                "EVENTHOUSE_DATABASE", "no database: set it, or name one for the dataset"
            )
        return db

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one client call; every failure through :func:`translate`, a refused token
        dropped so the next call fetches a new one."""
        try:
            return call()
        except Exception as exc:
            error = translate(exc, what)
            if isinstance(error, AuthError) and error.status == 401:
                self._tokens.invalidate()
            raise error from exc

    def execute(self, command: str, database: str | None = None) -> list[dict[str, Any]]:
        """Run a management command (``.…``) or a query; the primary result's rows as dicts."""
        db = self._db(database)
        first_line = command.split("\n", 1)[0][:80]
        response = self._call(
            f"{first_line!r} in database {db}", lambda: self._kusto.execute(db, command)
        )
        table = response.primary_results[0] if response.primary_results else None
        return [row.to_dict() for row in table] if table is not None else []

    def ping(self) -> dict[str, Any]:
        """The cluster answers, and this identity may use it: ``.show version``'s row."""
        rows = self._call(
            f"ping {self.uri}",
            lambda: self._kusto.execute_mgmt("NetDefaultDB", ".show version"),
        ).primary_results[0]
        return next((row.to_dict() for row in rows), {})

    def count(self, table: str, database: str | None = None) -> int:
        """How many rows ``table`` holds (``T | count``)."""
        rows = self.execute(f"{quote_name(table)} | count", database)
        return int(next(iter(rows[0].values()))) if rows else 0

    def rows(
        self, table: str, limit: int = 100, database: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` rows of ``table`` (``T | take n``: any ``n`` rows, in no order)."""
        return self.execute(f"{quote_name(table)} | take {int(limit)}", database)

    def columns(self, table: str, database: str | None = None) -> dict[str, str]:
        """A KQL table's columns, name -> Kusto type (``.show table T schema as json``: the
        ``Schema`` cell's ``OrderedColumns``, each with ``Name`` and ``CslType``); a
        :class:`NotFoundError` when the table does not exist. Database Viewer may run it."""
        rows = self.execute(f".show table {quote_name(table)} schema as json", database)
        if not rows:
            return {}
        schema = json.loads(str(rows[0].get("Schema") or "{}"))
        return {
            str(c["Name"]): str(c.get("CslType") or c.get("Type") or "")
            for c in schema.get("OrderedColumns", [])
        }

    # -- schema --

    def ensure_table(
        self,
        definition: DatasetDefinition,
        table: str,
        *,
        database: str | None = None,
        name: str | None = None,
    ) -> KustoTable:
        """Create or extend ``table`` of ``definition`` (as Kusto table ``name``, default the
        same) and its JSON mapping, and enable its streaming policy where that is ours to do.
        Idempotent; done once per process for each table and schema."""
        db = self._db(database)
        schema = definition.tables.get(table)
        if schema is None:
            raise NotFoundError(f"dataset {definition.name!r} has no table {table!r}")
        target = kusto_table(schema, name)
        with self._lock:
            if (db, target) in self._ready:
                return target
        try:
            self.execute(target.create_merge(), db)
        except AuthError as refused:
            # ``.create-merge table`` needs Database User; an identity given only Ingestor and
            # Viewer (least privilege, once `migrate` made the table) may use a table that
            # already has every column as it is.
            if refused.status != 403 or not self._complete(target, db):
                raise
            log.info(
                "table %s.%s: this identity may not run .create-merge (%s); the table has "
                "every column, so it is used as it is",
                db,
                target.name,
                refused.message[:200],
            )
        # A table's JSON mapping needs at least Table Ingestor: the identity that ingests has it.
        self.execute(target.create_mapping(), db)
        if self._streaming_policy:
            try:
                self.execute(target.enable_streaming(), db)
            except PermanentError as error:
                # A cluster without streaming ingestion refuses the policy ("Admin command
                # cannot be executed as streaming ingestion is not enabled"); an identity that
                # is not the table's admin may not set it (403). Queued ingestion still works,
                # and batches fall back to it when the cluster refuses streaming.
                if isinstance(error, AuthError) and error.status != 403:
                    raise
                log.warning("streaming policy of %s not enabled: %s", target.name, error)
        with self._lock:
            self._ready.add((db, target))
        return target

    def _complete(self, target: KustoTable, db: str) -> bool:
        """Whether ``target`` exists in ``db`` with every column of the definition, typed as
        it says (read only: Database Viewer)."""
        try:
            live = self.columns(target.name, db)
        except PushError:
            return False
        added, conflicts = compare_columns(target, live)
        return not added and not conflicts

    # -- ingestion --

    def _properties(self, db: str, table: str) -> IngestionProperties:
        from azure.kusto.data.data_format import DataFormat, IngestionMappingKind
        from azure.kusto.ingest import IngestionProperties

        return IngestionProperties(
            database=db,
            table=table,
            data_format=DataFormat.JSON,
            ingestion_mapping_reference=MAPPING_NAME,
            ingestion_mapping_kind=IngestionMappingKind.JSON,
        )

    def ingest(
        self,
        table: str,
        rows: Iterable[Mapping[str, Any]],
        database: str | None = None,
        *,
        queued: bool = False,
    ) -> IngestOutcome:
        """Ingest a batch of validated rows into ``table`` (made ready by
        :meth:`ensure_table`): streamed when small, queued when over 4 MiB compressed,
        throttled, or when streaming is off; always queued with ``queued`` (a big file's rows:
        bulk ingestion, as Kusto recommends for high volumes per table). Not idempotent: a
        :class:`TransientError` with ``maybe_delivered`` may have stored the rows."""
        from azure.kusto.ingest import IngestionStatus, StreamDescriptor

        db = self._db(database)
        body, count = encode_rows(rows)
        # Compressed here, at a fast level: the client would gzip at level 9 (80 ms for a
        # 10,000-row chunk of 1.8 MB, against 7 ms at level 1 for 252 KB instead of 175 KB;
        # bench figure 8), the larger part of the Eventhouse's CPU per row.
        packed = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        source_id = uuid.uuid4()
        properties = self._properties(db, table)
        what = f"ingest {count} rows into {db}.{table}"

        def descriptor() -> StreamDescriptor:
            # ``size``: the raw size, the queued path's ``rawDataSize`` hint.
            return StreamDescriptor(
                io.BytesIO(packed), source_id=source_id, is_compressed=True, size=len(body)
            )

        if self.streaming_off or queued:
            result = self._call(
                what,
                lambda: self._ingest.queued_client.ingest_from_stream(descriptor(), properties),
            )
        else:
            try:
                result = self._call(
                    what, lambda: self._ingest.ingest_from_stream(descriptor(), properties)
                )
            except PermanentError as error:
                if not _STREAMING_OFF.search(str(error)):
                    raise
                # The managed client re-raises this refusal instead of falling back; queued
                # ingestion needs no streaming, so take it, now and for later batches.
                log.warning("streaming ingestion is off at %s; queuing from now on", self.uri)
                self.streaming_off = True
                result = self._call(
                    what,
                    lambda: self._ingest.queued_client.ingest_from_stream(descriptor(), properties),
                )
        method = "streaming" if result.status == IngestionStatus.SUCCESS else "queued"
        return IngestOutcome(table, count, len(body), method, str(source_id))

    def ingest_file(
        self,
        table: str,
        source: str | PathLike[str] | IO[bytes],
        *,
        compressed: bool = False,
        database: str | None = None,
    ) -> IngestOutcome:
        """Queue a large JSON lines file (a path, or a binary stream) for ``table``: gzipped in
        chunks to a temporary file first unless ``compressed``, so memory stays flat (the
        client would gzip it into memory), then uploaded and queued. ``rows`` is unknown (-1)."""
        from azure.kusto.ingest import StreamDescriptor

        db = self._db(database)
        properties = self._properties(db, table)
        source_id = uuid.uuid4()
        with tempfile.TemporaryFile() as spool:
            raw = open(source, "rb") if isinstance(source, str | PathLike) else source  # noqa: SIM115
            try:
                if compressed:
                    stream: IO[bytes] = raw
                    size = 0
                else:
                    size = 0
                    with gzip.GzipFile(filename="data", fileobj=spool, mode="wb") as packed:
                        while chunk := raw.read(1024 * 1024):
                            packed.write(chunk)
                            size += len(chunk)
                    spool.seek(0)
                    stream = spool
                descriptor = StreamDescriptor(
                    stream, source_id=source_id, is_compressed=True, size=size or None
                )
                self._call(
                    f"queue a file for {db}.{table}",
                    lambda: self._ingest.queued_client.ingest_from_stream(descriptor, properties),
                )
            finally:
                if raw is not source:
                    raw.close()
        return IngestOutcome(table, -1, size, "queued", str(source_id))


__all__ = [
    "KUSTO_SCOPE",
    "EventhouseClient",
    "IngestOutcome",
    "connection",
    "encode_rows",
    "token_provider",
    "translate",
]
