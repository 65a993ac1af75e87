"""HTTP triggers: thin adapters from ``func.HttpRequest`` to :mod:`shared.sources.webhook` and back.

Routes (under the host's ``api`` prefix; auth level FUNCTION, so callers send a function key):
``POST datasets/{dataset}/tables/{table}/rows``, ``POST rows``, ``GET health``. The two POST
routes carry a queue output binding for asynchronous mode (``?mode=queue``). ``GET doctor``
(auth level ADMIN: the master key) runs ``python -m shared doctor``'s checks with the app's own
identity.

``v1.0/myorg/{*path}`` is Power BI's own surface (:mod:`shared.sources.frontdoor`): auth level
ANONYMOUS for the host, because a drop-in sender can only send a bearer token; the function
checks it against ``FRONTDOOR_KEYS`` itself.
"""

from __future__ import annotations

import json
import os
from typing import cast

import azure.functions as func

from shared.runtime import get_http_coalescer, get_ingestor, get_settings
from shared.sources.claimcheck import ClaimCheckStore
from shared.sources.frontdoor import ROUTE, FrontDoor, PowerBIService
from shared.sources.webhook import Webhook, WebRequest, WebResponse

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the library leaves __init__ untyped

_webhook = Webhook(
    settings=get_settings,
    ingestor=get_ingestor,
    claim_checks=lambda: ClaimCheckStore.from_settings(
        get_settings().storage_connection, get_settings().claimcheck_container, os.environ
    ),
)

_front_door = FrontDoor(
    settings=get_settings,
    ingestor=get_ingestor,
    # The process's Power BI client (shared.destinations.powerbi.PowerBIClient) has the
    # pass-through calls the surface needs besides the engine's.
    service=lambda: cast(PowerBIService, get_ingestor().client),
    coalescer=get_http_coalescer,
    claim_checks=lambda: ClaimCheckStore.from_settings(
        get_settings().storage_connection, get_settings().claimcheck_container, os.environ
    ),
)


def _request(req: func.HttpRequest) -> WebRequest:
    return WebRequest(
        method=req.method,
        body=req.get_body(),
        headers={k.lower(): v for k, v in req.headers.items()},
        query=dict(req.params),
        route=dict(req.route_params),
    )


def _response(answer: WebResponse, queued: func.Out[list[str]] | None = None) -> func.HttpResponse:
    if queued is not None and answer.messages:
        queued.set(answer.messages)
    return func.HttpResponse(
        answer.body_bytes(),
        status_code=answer.status,
        headers=answer.headers,
        mimetype="application/json",
    )


@bp.function_name("add_rows")
@bp.route(route="datasets/{dataset}/tables/{table}/rows", methods=["POST"])
@bp.queue_output(arg_name="queued", queue_name="%ROWS_QUEUE%", connection="AzureWebJobsStorage")
def add_rows(req: func.HttpRequest, queued: func.Out[list[str]]) -> func.HttpResponse:
    """Power BI's Add Rows body, re-pointed at this function."""
    return _response(_webhook.add_rows(_request(req)), queued)


@bp.function_name("post_rows")
@bp.route(route="rows", methods=["POST"])
@bp.queue_output(arg_name="queued", queue_name="%ROWS_QUEUE%", connection="AzureWebJobsStorage")
def post_rows(req: func.HttpRequest, queued: func.Out[list[str]]) -> func.HttpResponse:
    """Envelopes, arrays of envelopes, or NDJSON rows with the target in the query string."""
    return _response(_webhook.rows(_request(req)), queued)


@bp.function_name("health")
@bp.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Configuration summary (no secrets) and whether Power BI and storage answer."""
    return _response(_webhook.health(_request(req)))


@bp.function_name("doctor")
@bp.route(route="doctor", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def doctor(req: func.HttpRequest) -> func.HttpResponse:
    """``python -m shared doctor`` run inside the app, with its own identity and settings: 200
    when every check passes, 503 otherwise; the body lists each check with its cause and fix.
    The master key only (auth level admin): it names the workspace, identity and storage."""
    # Imported here: the checks' modules (migrate, the Kusto schema) would cost every cold start
    # for a route an operator calls now and then (bench figure 5a).
    from shared.cli.doctor import diagnose

    report = diagnose(os.environ)
    return func.HttpResponse(
        json.dumps(report, indent=2),
        status_code=200 if report["ok"] else 503,
        mimetype="application/json",
    )


@bp.function_name("powerbi")
@bp.route(
    route=ROUTE,
    methods=["GET", "POST", "DELETE"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
@bp.queue_output(arg_name="queued", queue_name="%ROWS_QUEUE%", connection="AzureWebJobsStorage")
async def powerbi(req: func.HttpRequest, queued: func.Out[list[str]]) -> func.HttpResponse:
    """Power BI's push-dataset REST surface: a sender changes only its base URL and key.
    Async, so that concurrent Add Rows requests wait together on the worker's event loop and
    share POSTs (group commit); the blocking work runs on its executor."""
    return _response(await _front_door.handle_async(_request(req)), queued)
