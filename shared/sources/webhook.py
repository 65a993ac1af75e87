"""The HTTP ingestion endpoints, independent of any web framework.

The function app's HTTP triggers turn a ``func.HttpRequest`` into a :class:`WebRequest`, call
one method here, and turn the :class:`WebResponse` back (plus any queue messages for the output
binding). Everything a sender can get wrong is answered with a 4xx whose message says what to
fix; nothing is pushed for a refused request.

- ``add_rows``: ``POST /api/datasets/{dataset}/tables/{table}/rows`` with Power BI's own body,
  ``{"rows": [...]}``: a sender that calls Power BI today only changes the URL.
- ``rows``: ``POST /api/rows`` with an envelope, an array of envelopes, or NDJSON rows
  (``Content-Type: application/x-ndjson``) with ``?dataset=&table=[&workspace=]``.
- ``health``: ``GET /api/health``: the configuration (no secrets) and whether Power BI and
  storage answer.

Synchronous by default: the rows are pushed now and the answer is the PushResult (200 when
every valid row was accepted; invalid rows listed with index and reason, not sent, and
dead-lettered; 400 when no row could be stored; 429/503 with ``Retry-After`` when Power BI
throttles past the time budget). ``?mode=queue`` (or
``HTTP_MODE=queue``) checks the shape, queues the envelopes (a claim check for big ones) and
answers 202.

Rows are read under the table's ingest profile; a request may override it for its own rows
with ``?profile=<URL-encoded JSON>`` or an envelope's ``"profile"`` field. A profile that
cannot be used is a 400 (``InvalidProfile``, naming the file or field), before any row moves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import PushResult, Target
from shared.engine.ingest import Ingestor, PushIncomplete
from shared.engine.profile import ProfileError, TableProfile, parse_override
from shared.engine.retry import Deadline
from shared.errors import (
    AuthError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    PushError,
    TransientError,
)
from shared.settings import Settings
from shared.sources.claimcheck import ClaimCheckStore, queue_messages
from shared.sources.envelope import (
    BodyError,
    Envelope,
    envelopes,
    loads,
    loads_ndjson,
    resend_for_stopped,
    rows_of,
)
from shared.stores.storage import blob_service

SIGNATURE_HEADER = "x-signature-256"
_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
_JSON_TYPES = ("application/json", "text/json", "text/plain", "")


@dataclass(frozen=True)
class WebRequest:
    """An HTTP request, as the endpoints need it. Header names are lower-case."""

    method: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    route: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class WebResponse:
    """The answer, and the messages to put on the rows queue (async mode)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def body_bytes(self) -> bytes:
        """The body as JSON; None is an empty body (Power BI's Add Rows answers nothing)."""
        if self.body is None:
            return b""
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8")


def error(status: int, code: str, message: str, **extra: Any) -> WebResponse:
    """An error answer: ``{"error": {"code", "message", ...}}``."""
    return WebResponse(status, {"error": {"code": code, "message": message, **extra}})


class Webhook:
    """The endpoints. Built once per process; the ingestor and stores are made on first use."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        ingestor: Callable[[], Ingestor],
        claim_checks: Callable[[], ClaimCheckStore],
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._claim_checks = claim_checks
        self._env = env
        self._clock = clock

    # -- endpoints --------------------------------------------------------------------------

    def add_rows(self, request: WebRequest) -> WebResponse:
        """Power BI's Add Rows, re-pointed: ``{"rows": [...]}`` to the route's table."""

        def parse(body: bytes, content_type: str) -> list[Envelope]:
            target = Target(
                request.route.get("dataset", ""),
                request.route.get("table", ""),
                request.query.get("workspace") or None,
            )
            if content_type in _NDJSON_TYPES:
                return [Envelope(target, rows=loads_ndjson(body))]
            return [Envelope(target, rows=rows_of(loads(body)))]

        return self._handle(request, parse, single=True)

    def rows(self, request: WebRequest) -> WebResponse:
        """Envelopes (one or an array), or NDJSON rows with the target in the query string."""

        def parse(body: bytes, content_type: str) -> list[Envelope]:
            if content_type in _NDJSON_TYPES:
                missing = [k for k in ("dataset", "table") if not request.query.get(k)]
                if missing:
                    raise BodyError(
                        f"NDJSON rows need the target in the query string: ?{missing[0]}=...",
                        f"query.{missing[0]}",
                    )
                target = Target(
                    request.query["dataset"],
                    request.query["table"],
                    request.query.get("workspace") or None,
                )
                return [Envelope(target, rows=loads_ndjson(body))]
            found = envelopes(loads(body))
            if any(e.blob is not None for e in found):
                raise BodyError("claim-check references are for queue messages, not HTTP", "blob")
            return found

        parsed_single = not request.body.lstrip().startswith(b"[")
        return self._handle(request, parse, single=parsed_single)

    def health(self, request: WebRequest) -> WebResponse:
        """Configuration summary (no secrets) and reachability of Power BI and storage."""
        try:
            settings = self._settings()
        except ConfigError as exc:
            return error(500, "ConfigError", str(exc))
        checks = {
            "powerbi": _probe(lambda: self._ingestor().client.ping()),
            # The process's one client for the connection; no retry for this call only.
            "storage": _probe(
                lambda: next(
                    iter(
                        blob_service(
                            settings.storage_connection, self._environment()
                        ).list_containers(results_per_page=1, timeout=5, retry_total=0)
                    ),
                    None,
                )
            ),
        }
        healthy = all(check["reachable"] for check in checks.values())
        body = {
            "status": "ok" if healthy else "degraded",
            "settings": settings.describe(),
            **checks,
        }
        return WebResponse(200 if healthy else 503, body)

    # -- the common path --------------------------------------------------------------------

    def _handle(
        self,
        request: WebRequest,
        parse: Callable[[bytes, str], list[Envelope]],
        *,
        single: bool,
    ) -> WebResponse:
        try:
            settings = self._settings()
        except ConfigError as exc:
            return error(500, "ConfigError", str(exc))
        if len(request.body) > settings.http_max_body_bytes:
            return error(
                413,
                "PayloadTooLarge",
                f"the body is {len(request.body):,} bytes; at most "
                f"{settings.http_max_body_bytes:,} are accepted (HTTP_MAX_BODY_BYTES). Split it, "
                "or upload a file to the ingest container.",
            )
        refused = _check_signature(settings.webhook_secret, request)
        if refused is not None:
            return refused
        mode = request.query.get("mode") or settings.http_mode
        if mode not in ("sync", "queue"):
            return error(400, "InvalidMode", "mode must be 'sync' or 'queue'", field="query.mode")
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type not in _JSON_TYPES and content_type not in _NDJSON_TYPES:
            return error(
                415,
                "UnsupportedMediaType",
                f"Content-Type {content_type!r} is not supported: send application/json, or "
                "application/x-ndjson for one row per line",
            )
        try:
            found = parse(request.body, content_type)
        except BodyError as exc:
            return error(400, "InvalidBody", exc.message, field=exc.field)
        for number, item in enumerate(found):
            if item.resent:
                # Only the bundle's own re-sends skip dead-lettering refused rows again.
                return error(
                    400,
                    "InvalidBody",
                    "resent is set by the bundle on its own re-sends; send the envelope without it",
                    field=f"body[{number}].resent" if len(found) > 1 else "body.resent",
                )
        try:
            found, profiles = self._profiles(found, request.query.get("profile"))
        except ProfileError as exc:
            # Refused before any row moves, as a bad body is.
            return error(400, "InvalidProfile", exc.message, field=exc.field, where=exc.where)
        except ConfigError as exc:
            return error(500, "ConfigError", str(exc))
        try:
            if mode == "queue":
                return self._enqueue(found)
            # Named in dead letters, as a queue message or a file is.
            source = f"HTTP request {request.header('x-request-id') or uuid.uuid4()}"
            return self._push(found, settings, profiles, single=single, source=source)
        except ConfigError as exc:
            return error(500, "ConfigError", str(exc))

    def _profiles(
        self, found: list[Envelope], query: str | None
    ) -> tuple[list[Envelope], list[TableProfile | None]]:
        """Each envelope's ingest profile: the table's declared one with the envelope's own
        ``profile`` applied, or else the query's (``?profile=``, URL-encoded JSON). Checked
        now, so that a bad one refuses the request whole (:class:`ProfileError`). The
        envelopes come back carrying the query's override, for the queue."""
        override = parse_override(query, "query.profile") if query else None
        ingestor = self._ingestor()
        envelopes_out: list[Envelope] = []
        profiles: list[TableProfile | None] = []
        for number, item in enumerate(found):
            if item.profile is None and override is not None:
                item = dataclasses.replace(item, profile=override)
            where = (
                "query.profile"
                if item.profile is override
                else (f"body[{number}].profile" if len(found) > 1 else "body.profile")
            )
            try:
                profile = ingestor.profile(item.target, item.profile, where)
            except ProfileError:
                raise
            except PushError:
                profile = None  # the table cannot be looked up now: the push says why
            envelopes_out.append(item)
            profiles.append(profile)
        return envelopes_out, profiles

    def _push(
        self,
        found: list[Envelope],
        settings: Settings,
        profiles: list[TableProfile | None],
        *,
        single: bool,
        source: str,
    ) -> WebResponse:
        ingestor = self._ingestor()
        deadline = Deadline.after(settings.http_time_budget, self._clock)
        results: list[PushResult] = []
        requeued: dict[int, Envelope] = {}
        incomplete: PushIncomplete | None = None
        for number, (item, profile) in enumerate(zip(found, profiles, strict=True)):
            assert item.rows is not None
            try:
                results.append(
                    ingestor.push(
                        item.target,
                        item.rows,
                        deadline=deadline,
                        source=source if len(found) == 1 else f"{source}, body[{number}]",
                        # Refused rows are dead-lettered as well as listed: a 2xx never hides a
                        # row that went nowhere (the sender may not read the body).
                        dead_letter=True,
                        profile=profile,
                    )
                )
            except PushIncomplete as exc:
                results.append(exc.result)
                rest = resend_for_stopped(item, item.rows, exc.result)
                if rest is not None:
                    # One destination stopped after the others took every row: a retrying
                    # sender would duplicate them there, so the stopped one's rows go to the
                    # rows queue for it alone, and the answer is a 202.
                    requeued[len(results) - 1] = rest
                    continue
                incomplete = exc
                break  # the budget is spent; later envelopes are not attempted
        try:
            messages = (
                queue_messages(list(requeued.values()), self._claim_checks) if requeued else []
            )
        except TransientError as exc:
            # A big re-queue needs a claim check and storage failed: the rows are not safe
            # anywhere but with the sender, so it must send them again (the destination
            # that has them gets them twice: a duplicate, never a loss).
            names = sorted({n for rest in requeued.values() for n in rest.destinations or ()})
            return error(
                503,
                "RequeueFailed",
                f"the rows for {', '.join(names)} could not be put on the rows queue: "
                f"{exc.message}; send the request again",
            )
        bodies = [r.to_json() for r in results]
        for number, rest in requeued.items():
            bodies[number]["requeued"] = {
                "destinations": list(rest.destinations or ()),
                "rows": len(rest.rows or []),
            }
        body: Any = bodies[0] if single and len(bodies) == 1 else {"results": bodies}
        if len(results) < len(found):
            body = {"results": bodies, "notAttempted": len(found) - len(results)}
        if incomplete is not None:
            throttled = incomplete.status == 429 or (
                incomplete.status is None and incomplete.retry_after is not None
            )
            wait = max(1, math.ceil(incomplete.retry_after or 1))
            return WebResponse(
                429 if throttled else 503, body, {"Retry-After": str(wait)}, messages=messages
            )
        # A destination's refusal is the answer's only when no other destination stored rows.
        failures = [r.failure for r in results if r.failure is not None and not r.partly_failed]
        partly = sorted({name for r in results for name in r.partly_failed})
        status = 200
        stored = any(r.sent or any(d.sent for d in r.destinations.values()) for r in results)
        if not stored and not requeued and any(r.rejected for r in results):
            # Nothing stored and something refused: a 4xx, never a 2xx a sender reads as done.
            status = 400
            rejected = sum(r.rejected for r in results)
            refused = {
                "code": "RowsRefused",
                "message": f"none of the rows could be stored: {rejected} refused (each is listed "
                "under problems and dead-lettered with its reason)",
            }
            if isinstance(body, dict) and body.get("error") is None:
                body = {**body, "error": refused}
        if any(isinstance(f, ForbiddenError) for f in failures):
            status = 403  # ALLOWED_TARGETS: nothing was pushed
        elif any(isinstance(f, NotFoundError) for f in failures):
            status = 404
        elif any(isinstance(f, AuthError) for f in failures):
            status = 502  # Power BI refused this app's identity: not the sender's fault
        elif any(isinstance(f, ConfigError) for f in failures):
            status = 500
        elif status == 200 and requeued:
            status = 202  # delivered where it could be; the rest is on the rows queue
        elif status == 200 and partly:
            # Stored at one destination, refused for good by another (its rows dead-lettered
            # naming it): Multi-Status, a 2xx a sender does not retry, each destination's
            # outcome in the body.
            status = 207
        return WebResponse(status, body, messages=messages)

    def _enqueue(self, found: list[Envelope]) -> WebResponse:
        messages = queue_messages(found, self._claim_checks)
        rows = sum(len(item.rows or []) for item in found)
        return WebResponse(202, {"queued": len(messages), "rows": rows}, messages=messages)

    def _environment(self) -> Mapping[str, str]:
        import os

        return os.environ if self._env is None else self._env


def _check_signature(secret: str | None, request: WebRequest) -> WebResponse | None:
    """With a secret configured, require ``X-Signature-256: sha256=<hex HMAC of the body>``."""
    if not secret:
        return None
    provided = (request.header(SIGNATURE_HEADER) or "").strip()
    if not provided:
        return error(401, "SignatureRequired", "this endpoint requires an X-Signature-256 header")
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(provided.lower().encode(), expected.encode()):
        return error(
            401,
            "SignatureMismatch",
            "X-Signature-256 does not match the body: sign the exact bytes sent with "
            "HMAC-SHA256 and the shared secret, as sha256=<hex>",
        )
    return None


def _probe(check: Callable[[], object]) -> dict[str, Any]:
    try:
        check()
    except PushError as exc:
        return {"reachable": False, "detail": str(exc)[:300]}
    except Exception as exc:  # storage SDK and transport errors: report, never raise
        return {"reachable": False, "detail": type(exc).__name__}
    return {"reachable": True}
