"""App settings, read once into one frozen object.

Every setting the bundle reads is named here (and listed in ``local.settings.example.json`` and
the README). A missing or malformed setting is a :class:`ConfigError` that names it.

Cloud endpoints: "Embed for your customers in national clouds",
https://learn.microsoft.com/en-us/power-bi/developer/embedded/embed-sample-for-customers-national-clouds
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from shared.errors import ConfigError


@dataclass(frozen=True)
class Cloud:
    """Where a Power BI cloud lives: API root, token scope (resource) and Entra authority."""

    api_root: str
    resource: str
    authority_host: str

    @property
    def scope(self) -> str:
        return f"{self.resource}/.default"


CLOUDS: Final[dict[str, Cloud]] = {
    "Public": Cloud(
        "https://api.powerbi.com",
        "https://analysis.windows.net/powerbi/api",
        "https://login.microsoftonline.com",
    ),
    "USGov": Cloud(
        "https://api.powerbigov.us",
        "https://analysis.usgovcloudapi.net/powerbi/api",
        "https://login.microsoftonline.com",
    ),
    "USGovHigh": Cloud(
        "https://api.high.powerbigov.us",
        "https://high.analysis.usgovcloudapi.net/powerbi/api",
        "https://login.microsoftonline.us",
    ),
    "USGovDoD": Cloud(
        "https://api.mil.powerbigov.us",
        "https://mil.analysis.usgovcloudapi.net/powerbi/api",
        "https://login.microsoftonline.us",
    ),
    "China": Cloud(
        "https://api.powerbi.cn",
        "https://analysis.chinacloudapi.cn/powerbi/api",
        "https://login.chinacloudapi.cn",
    ),
}

AUTH_MODES: Final = ("managed_identity", "service_principal", "static")


def clean_authority(url: str) -> bool:
    """Whether ``url``'s authority is a plain ``host[:port]``: no userinfo, backslash, space or
    control character. Parsers disagree about such URLs (Python's ``urlsplit`` and urllib3 pick
    different hosts for ``http://a\\@b/``), so a URL that is not plain is never trusted."""
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url) or "\\" in url:
        return False
    return "@" not in urlsplit(url).netloc


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if not clean_authority(url):
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Fabric's Eventhouse hosts (``*.kusto.fabric.microsoft.com``, the Query URI the Fabric portal
#: shows, docs/real-time-intelligence/access-database-copy-uri.md in MicrosoftDocs/fabric-docs).
FABRIC_KUSTO_SUFFIX: Final = ".kusto.fabric.microsoft.com"


#: Files at least this big go to the Eventhouse by queued ingestion
#: (``EVENTHOUSE_QUEUED_FILE_BYTES``; README, Local settings).
DEFAULT_QUEUED_FILE_BYTES: Final = 16 * 1024**2


@dataclass(frozen=True)
class EventhouseSettings:
    """Where and as whom the Eventhouse (KQL database) destination writes.

    ``uri`` is the cluster's query URI (commands, queries, streaming ingestion: streaming goes
    to the engine, not to ``ingest-``, Azure/azure-kusto-python#187); ``ingest_uri`` the data
    management URI queued ingestion asks for its storage (the ``ingest-`` rule when not set,
    except for a loopback emulator, as the client's own ``get_ingestion_endpoint`` does).
    ``auth_mode`` is one of :data:`AUTH_MODES`; a service principal uses the ``POWERBI_*``
    secret or certificate and authority with ``client_id``.
    """

    uri: str
    ingest_uri: str
    database: str | None
    auth_mode: str
    client_id: str | None
    #: The service principal's authority (``POWERBI_AUTHORITY_URL`` or cloud host + tenant).
    authority: str | None = None
    #: The longest one Kusto call may take (``EVENTHOUSE_TIMEOUT_SECONDS``).
    timeout: float = 60.0
    #: Files at least this big go by queued ingestion (``EVENTHOUSE_QUEUED_FILE_BYTES``).
    queued_file_bytes: int = DEFAULT_QUEUED_FILE_BYTES

    @property
    def is_fabric(self) -> bool:
        """Whether the cluster is a Fabric Eventhouse (streaming ingestion is always on there)."""
        return (urlsplit(self.uri).hostname or "").endswith(FABRIC_KUSTO_SUFFIX)

    def describe(self) -> dict[str, object]:
        """A summary safe to log or show (no secrets are held here)."""
        return {
            "uri": self.uri,
            "ingest_uri": self.ingest_uri,
            "database": self.database,
            "auth_mode": self.auth_mode,
            "client_id": self.client_id,
        }


def ingest_uri_for(uri: str) -> str:
    """The data management (queued ingestion) URI of a cluster: ``https://ingest-<host>``.

    The rule of ADX and of Fabric (``queryServiceUri`` / ``ingestionServiceUri`` of Fabric's
    List KQL Databases, docs/real-time-intelligence/event-streams/api-kusto-pull-destination.md),
    applied like azure-kusto-ingest's ``BaseIngestClient.get_ingestion_endpoint``: not to a host
    that already has the prefix, nor to localhost or an IP address (an emulator serves both).
    """
    host = urlsplit(uri).hostname or ""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if host.startswith("ingest-") or literal or "localhost" in host:
        return uri
    return uri.replace("://", "://ingest-", 1)


def _eventhouse(
    get: Callable[[str], str | None], powerbi_auth: str, cloud: Cloud
) -> EventhouseSettings | None:
    """The Eventhouse settings, or None when ``EVENTHOUSE_URI`` is not set (no table may then be
    routed there: :meth:`Settings.require_eventhouse` says which setting is missing)."""
    uri = get("EVENTHOUSE_URI")
    if uri is None:
        return None
    uri = _token_url(uri, "EVENTHOUSE_URI", "https://<cluster>.kusto.fabric.microsoft.com")
    ingest_uri = get("EVENTHOUSE_INGEST_URI")
    if ingest_uri is not None:
        ingest_uri = _token_url(
            ingest_uri, "EVENTHOUSE_INGEST_URI", "https://ingest-<cluster>.kusto.windows.net"
        )
    auth_mode = _choice(get, "EVENTHOUSE_AUTH", AUTH_MODES, powerbi_auth)
    if auth_mode == "static" and not (is_loopback(uri) and is_loopback(ingest_uri or uri)):
        raise ConfigError(
            "EVENTHOUSE_AUTH", "static tokens are for the local emulator (a loopback URI)"
        )
    client_id = get("EVENTHOUSE_CLIENT_ID") or get("POWERBI_CLIENT_ID")
    authority = None
    if auth_mode == "static" and get("POWERBI_STATIC_TOKEN") is None:
        raise ConfigError("POWERBI_STATIC_TOKEN", "is required when EVENTHOUSE_AUTH=static")
    if auth_mode == "service_principal":
        # One app registration for both destinations: its secret or certificate and tenant.
        if client_id is None:
            raise ConfigError("EVENTHOUSE_CLIENT_ID", "is required for a service principal")
        tenant_id = get("POWERBI_TENANT_ID")
        authority = get("POWERBI_AUTHORITY_URL")
        if tenant_id is None and authority is None:
            raise ConfigError("POWERBI_TENANT_ID", "is required for a service principal")
        if (get("POWERBI_CLIENT_SECRET") is None) == (
            get("POWERBI_CLIENT_CERTIFICATE_PATH") is None
        ):
            raise ConfigError(
                "POWERBI_CLIENT_SECRET",
                "set exactly one of POWERBI_CLIENT_SECRET and POWERBI_CLIENT_CERTIFICATE_PATH",
            )
        authority = authority or f"{cloud.authority_host}/{tenant_id}"
    database = get("EVENTHOUSE_DATABASE")
    if database is not None and not _kusto_name(database):
        raise ConfigError(
            "EVENTHOUSE_DATABASE",
            "a database name has 1 to 1024 letters, digits, spaces, dots, dashes or underscores",
        )
    return EventhouseSettings(
        uri=uri,
        ingest_uri=ingest_uri or ingest_uri_for(uri),
        database=database,
        auth_mode=auth_mode,
        client_id=client_id,
        timeout=_positive(get, "EVENTHOUSE_TIMEOUT_SECONDS", 60.0),
        queued_file_bytes=int(
            _positive(get, "EVENTHOUSE_QUEUED_FILE_BYTES", DEFAULT_QUEUED_FILE_BYTES)
        ),
        authority=authority,
    )


def _token_url(raw: str, name: str, example: str) -> str:
    """A URL bearer tokens will be sent to: http(s), a plain authority, https unless loopback."""
    url = raw.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not clean_authority(url):
        raise ConfigError(name, f"must be an http(s) URL such as {example}")
    if parts.scheme == "http" and not is_loopback(url):
        # Bearer tokens travel only over https; plain http is allowed for a local emulator.
        raise ConfigError(name, "must use https unless it is a loopback address")
    if parts.path or parts.query or parts.fragment:
        raise ConfigError(name, "must be the cluster's URI alone, without a path or query")
    return url


def _kusto_name(name: str) -> bool:
    """A Kusto entity name: 1 to 1024 letters, digits, underscores, spaces, dots and dashes
    ("Identifier naming rules", https://learn.microsoft.com/kusto/query/schema-entities/entity-names)."""
    return 0 < len(name) <= 1024 and all(c.isalnum() or c in "_ .-" for c in name)


@dataclass(frozen=True)
class Settings:
    """Everything the bundle reads from app settings. Build with :meth:`from_env`."""

    cloud: str
    api_root: str
    resource: str
    authority: str | None
    auth_mode: str
    client_id: str | None
    tenant_id: str | None
    client_secret: str | None
    client_certificate_path: str | None
    static_token: str | None
    ca_bundle: str | None
    workspace_id: str | None
    workspace_name: str | None
    datasets_dir: Path
    request_timeout: float
    max_retry_after: float
    quota_time_scale: float
    deadletter_connection: str
    deadletter_container: str
    storage_connection: str
    rows_queue: str
    claimcheck_container: str
    http_mode: str
    http_max_body_bytes: int
    http_time_budget: float
    webhook_secret: str | None
    queue_linger: float
    ingest_container: str
    checkpoint_container: str
    blob_time_budget: float
    blob_max_bytes: int
    blob_allowed_hosts: tuple[str, ...]
    queue_max_wait: float
    queue_time_budget: float
    http_linger: float = 0.05
    http_group_commit: bool = True
    frontdoor_keys: tuple[str, ...] = ()
    #: ALLOWED_TARGETS as written (None: the default rule; see shared/engine/targets.py).
    allowed_targets: str | None = None
    frontdoor_partial_rows: bool = False
    frontdoor_allow_delete_rows: bool = False
    #: "shared": pacing kept in Table storage for every process; "local": this process alone.
    pacing: str = "shared"
    pacing_table: str = "powerbipacing"
    pacing_fallback_processes: int = 4
    #: The container of the cross-process locks (shared/stores/leases.py), in STORAGE_CONNECTION.
    locks_container: str = "powerbi-locks"
    #: The Eventhouse destination's settings; None when ``EVENTHOUSE_URI`` is not set.
    eventhouse: EventhouseSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check the settings; raise :class:`ConfigError` naming the first bad one."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        cloud_name = get("POWERBI_CLOUD") or "Public"
        cloud = CLOUDS.get(cloud_name)
        if cloud is None:
            raise ConfigError("POWERBI_CLOUD", f"must be one of {', '.join(CLOUDS)}")
        api_root = (get("POWERBI_API_URL") or cloud.api_root).rstrip("/")
        if (
            urlsplit(api_root).scheme not in ("http", "https")
            or not urlsplit(api_root).hostname
            or not clean_authority(api_root)
        ):
            raise ConfigError(
                "POWERBI_API_URL", "must be an http(s) URL such as https://api.powerbi.com"
            )
        if urlsplit(api_root).scheme == "http" and not is_loopback(api_root):
            # Bearer tokens travel only over https; plain http is allowed for a local emulator.
            raise ConfigError("POWERBI_API_URL", "must use https unless it is a loopback address")
        auth_mode = get("POWERBI_AUTH") or "managed_identity"
        if auth_mode not in AUTH_MODES:
            raise ConfigError("POWERBI_AUTH", f"must be one of {', '.join(AUTH_MODES)}")
        tenant_id = get("POWERBI_TENANT_ID")
        client_id = get("POWERBI_CLIENT_ID")
        secret = get("POWERBI_CLIENT_SECRET")
        certificate = get("POWERBI_CLIENT_CERTIFICATE_PATH")
        static_token = get("POWERBI_STATIC_TOKEN")
        authority = get("POWERBI_AUTHORITY_URL")
        if auth_mode == "service_principal":
            if client_id is None:
                raise ConfigError("POWERBI_CLIENT_ID", "is required for a service principal")
            if tenant_id is None and authority is None:
                raise ConfigError("POWERBI_TENANT_ID", "is required for a service principal")
            if (secret is None) == (certificate is None):
                raise ConfigError(
                    "POWERBI_CLIENT_SECRET",
                    "set exactly one of POWERBI_CLIENT_SECRET and POWERBI_CLIENT_CERTIFICATE_PATH",
                )
            if certificate is not None and not Path(certificate).is_file():
                raise ConfigError("POWERBI_CLIENT_CERTIFICATE_PATH", "is not a readable file")
            authority = authority or f"{cloud.authority_host}/{tenant_id}"
        if auth_mode == "static":
            if static_token is None:
                raise ConfigError("POWERBI_STATIC_TOKEN", "is required when POWERBI_AUTH=static")
            if not is_loopback(api_root):
                raise ConfigError(
                    "POWERBI_AUTH", "static tokens are for the local emulator (a loopback API URL)"
                )
        return cls(
            cloud=cloud_name,
            api_root=api_root,
            resource=get("POWERBI_RESOURCE") or cloud.resource,
            authority=authority,
            auth_mode=auth_mode,
            client_id=client_id,
            tenant_id=tenant_id,
            client_secret=secret,
            client_certificate_path=certificate,
            static_token=static_token,
            ca_bundle=get("POWERBI_CA_BUNDLE"),
            workspace_id=get("POWERBI_WORKSPACE_ID"),
            workspace_name=get("POWERBI_WORKSPACE_NAME"),
            datasets_dir=Path(
                get("DATASETS_DIR") or Path(__file__).resolve().parents[1] / "datasets"
            ),
            request_timeout=_positive(get, "POWERBI_TIMEOUT_SECONDS", 30.0),
            # The longest Retry-After waited out in process; why 300 s: DEFAULT_MAX_RETRY_AFTER
            # in shared/engine/retry.py (not imported: settings import nothing of the engine).
            max_retry_after=_positive(get, "POWERBI_MAX_RETRY_AFTER_SECONDS", 300.0),
            quota_time_scale=_positive(get, "POWERBI_QUOTA_TIME_SCALE", 1.0),
            deadletter_connection=get("DEADLETTER_CONNECTION") or "AzureWebJobsStorage",
            deadletter_container=get("DEADLETTER_CONTAINER") or "deadletter",
            storage_connection=get("STORAGE_CONNECTION") or "AzureWebJobsStorage",
            rows_queue=get("ROWS_QUEUE") or "rows",
            claimcheck_container=get("CLAIMCHECK_CONTAINER") or "rows-payloads",
            http_mode=_choice(get, "HTTP_MODE", ("sync", "queue"), "sync"),
            http_max_body_bytes=int(_positive(get, "HTTP_MAX_BODY_BYTES", 32 * 1024 * 1024)),
            # The HTTP front end gives up after 230 s (functions-bindings-http-webhook-trigger,
            # Limits): answer before it does.
            http_time_budget=_positive(get, "HTTP_TIME_BUDGET_SECONDS", 200.0),
            webhook_secret=get("WEBHOOK_SECRET"),
            queue_linger=_positive(get, "QUEUE_LINGER_SECONDS", 0.2),
            ingest_container=get("INGEST_CONTAINER") or "ingest",
            checkpoint_container=get("CHECKPOINT_CONTAINER") or "ingest-checkpoints",
            # Under the Consumption plan's 10-minute functionTimeout, with room to hand on.
            blob_time_budget=_positive(get, "BLOB_TIME_BUDGET_SECONDS", 480.0),
            blob_max_bytes=int(_positive(get, "BLOB_MAX_BYTES", 20 * 1024**3)),
            blob_allowed_hosts=tuple(
                h.strip().lower() for h in (get("BLOB_ALLOWED_HOSTS") or "").split(",") if h.strip()
            ),
            queue_max_wait=_positive(get, "QUEUE_MAX_WAIT_SECONDS", 5.0),
            queue_time_budget=_positive(get, "QUEUE_TIME_BUDGET_SECONDS", 240.0),
            # Keys callers of the Power BI surface send as their bearer token (comma-separated;
            # a secret: never logged or shown).
            frontdoor_keys=tuple(
                k.strip() for k in (get("FRONTDOOR_KEYS") or "").split(",") if k.strip()
            ),
            frontdoor_partial_rows=_boolean(get, "FRONTDOOR_PARTIAL_ROWS", False),
            allowed_targets=get("ALLOWED_TARGETS"),
            # Concurrent synchronous Add Rows requests for one table share POSTs: each waits
            # this long for others to join (a request's added latency), then one POST carries
            # them all, paced like any other (120 POSTs a minute per dataset).
            http_linger=_positive(get, "HTTP_LINGER_SECONDS", 0.05),
            http_group_commit=_boolean(get, "HTTP_GROUP_COMMIT", True),
            frontdoor_allow_delete_rows=_boolean(get, "FRONTDOOR_ALLOW_DELETE_ROWS", False),
            # Every process and instance paces each dataset on one shared record (README
            # "Scaling out"); "local" is for a single process with no storage account.
            pacing=_choice(get, "PACING", ("shared", "local"), "shared"),
            pacing_table=_table_name(get, "PACING_TABLE", "powerbipacing"),
            # While the shared record cannot be reached, each process takes 1/N of the quotas:
            # N should be the most processes that may push at once (instances x workers).
            pacing_fallback_processes=int(_positive(get, "PACING_FALLBACK_PROCESSES", 4)),
            locks_container=_container(get, "LOCKS_CONTAINER", "powerbi-locks"),
            # Nothing Eventhouse is required until a table is routed there (issue 18).
            eventhouse=_eventhouse(get, auth_mode, cloud),
        )

    def require_eventhouse(self) -> EventhouseSettings:
        """The Eventhouse settings, for a table routed there; a :class:`ConfigError` naming
        ``EVENTHOUSE_URI`` when it is not set."""
        if self.eventhouse is None:
            raise ConfigError(
                "EVENTHOUSE_URI", "is required when a table is delivered to an Eventhouse"
            )
        return self.eventhouse

    def describe(self) -> dict[str, object]:
        """A summary safe to log or show: names and URLs, never a secret or a token."""
        return {
            "cloud": self.cloud,
            "api_root": self.api_root,
            "auth_mode": self.auth_mode,
            "client_id": self.client_id,
            "tenant_id": self.tenant_id,
            "client_secret": "set" if self.client_secret else None,
            "client_certificate_path": self.client_certificate_path,
            "static_token": "set" if self.static_token else None,
            "workspace_id": self.workspace_id,
            "workspace_name": self.workspace_name,
            "datasets_dir": str(self.datasets_dir),
            "deadletter": f"{self.deadletter_connection} -> {self.deadletter_container}",
            "rows_queue": self.rows_queue,
            "locks": f"{self.storage_connection} -> {self.locks_container}",
            "http_mode": self.http_mode,
            "http_max_body_bytes": self.http_max_body_bytes,
            "webhook_signature": "required" if self.webhook_secret else "off",
            "frontdoor_keys": len(self.frontdoor_keys),
            "frontdoor_partial_rows": self.frontdoor_partial_rows,
            "frontdoor_allow_delete_rows": self.frontdoor_allow_delete_rows,
            "allowed_targets": self.allowed_targets or "default workspace, defined datasets",
            "pacing": self.pacing
            if self.pacing == "local"
            else f"shared ({self.storage_connection} -> table {self.pacing_table})",
            "eventhouse": self.eventhouse.describe() if self.eventhouse else None,
        }


def _choice(
    get: Callable[[str], str | None], name: str, allowed: tuple[str, ...], default: str
) -> str:
    value = get(name) or default
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}")
    return value


def _table_name(get: Callable[[str], str | None], name: str, default: str) -> str:
    """An Azure Table name: 3-63 letters and digits, starting with a letter."""
    value = get(name) or default
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", value):
        raise ConfigError(name, "must be 3-63 letters and digits, starting with a letter")
    return value


#: A blob container's name: 3 to 63 lower-case letters, digits and single hyphens, starting and
#: ending with a letter or a digit ("Container names",
#: https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata).
_CONTAINER_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _container(get: Callable[[str], str | None], name: str, default: str) -> str:
    value = get(name) or default
    if not _CONTAINER_NAME.fullmatch(value):
        raise ConfigError(
            name,
            f"{value!r} is not a container name: 3 to 63 lower-case letters, digits and single "
            "hyphens, starting and ending with a letter or a digit",
        )
    return value


def _boolean(get: Callable[[str], str | None], name: str, default: bool) -> bool:
    raw = get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(name, f"must be true or false, got {raw!r}")
    return raw.lower() in ("true", "1")


def _positive(get: Callable[[str], str | None], name: str, default: float) -> float:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(name, "must be greater than 0")
    return value
