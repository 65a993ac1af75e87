"""The emulator's live dashboard: one server-rendered page at ``/``, kept current over SSE.

The page has three regions: the datasets (tables, schemas, row counts, quota gauges), the
selected table (row count, rows per minute, newest rows) and the dead letters. The server renders
each region to HTML here, in one place, escaping every name and value; the page's script
(``static/dashboard.js``) only swaps in a region's new HTML when it changed. So there is a
single renderer to trust, the page works (as a snapshot) without JavaScript, and the stylesheet
and script are served from here, which lets the page forbid inline script (CSP) and work offline.

Routes (no token needed, like the rest of ``/_emulator``):

- ``GET /`` - the page; ``?dataset=<id>&table=<name>`` pins a table, otherwise the page follows
  the table that last received rows;
- ``GET /_emulator/dashboard/events`` - Server-Sent Events, same query: an ``update`` event with
  the regions that changed, at most :data:`MAX_UPDATES_PER_SECOND` a second, and a keep-alive
  comment when nothing changed for :data:`TICK_SECONDS`;
- ``GET /_emulator/dashboard/state`` - the same payload as JSON, for scripts and tests;
- ``GET /_emulator/dashboard/{dashboard.js,dashboard.css,icon.svg}`` - the static parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from emulator import limits
from emulator.live import DeadLetterSummary
from emulator.store import MY_WORKSPACE, Dataset, Table

if TYPE_CHECKING:
    from emulator.app import Emulator

#: Coalescing: a stream renders at most this often, however many rows arrive meanwhile.
MAX_UPDATES_PER_SECOND = 4
#: Dashboards (event streams) served at once; more get 503 and the browser retries.
MAX_STREAMS = 16
#: With no change, a stream re-renders this often (gauges and the chart move with time) and
#: otherwise sends a keep-alive comment, which is also how a closed page is noticed.
TICK_SECONDS = 5.0
NEWEST_ROWS = 20
MAX_DATASETS_SHOWN = 50
MAX_CELL_CHARS = 120

_STATIC_DIR = Path(__file__).with_name("static")
_STATIC_TYPES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "icon.svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    # No inline script or style at all: even if a name slipped through unescaped, it could not
    # run. Everything the page loads comes from this server, so it works offline.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Selection:
    """The table the page shows in detail; ``pinned`` when the URL chose it."""

    dataset: Dataset | None
    table: Table | None
    pinned: bool


def select(emulator: Emulator, dataset_id: str | None, table_name: str | None) -> Selection:
    """The pinned table if the query names one that exists, else the one that last received
    rows, else the first table of the newest dataset."""
    if dataset_id and table_name:
        dataset = emulator.store.datasets.get(dataset_id.lower())
        if dataset is not None and table_name in dataset.tables:
            return Selection(dataset, dataset.tables[table_name], True)
    latest = emulator.arrivals.latest
    if latest is not None:
        dataset = emulator.store.datasets.get(latest[0])
        if dataset is not None and latest[1] in dataset.tables:
            return Selection(dataset, dataset.tables[latest[1]], False)
    for dataset in _datasets(emulator):
        if dataset.tables:
            return Selection(dataset, next(iter(dataset.tables.values())), False)
    return Selection(None, None, False)


def _datasets(emulator: Emulator) -> list[Dataset]:
    """Newest first: the one just created by a push is the one a user looks for."""
    return sorted(emulator.store.datasets.values(), key=lambda d: d.created, reverse=True)


def _n(value: int) -> str:
    return f"{value:,}"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{_n(count)} {one if count == 1 else (many or one + 's')}"


def _table_href(dataset: Dataset, table: Table) -> str:
    return "/?" + urlencode({"dataset": dataset.id, "table": table.name})


def _workspace_name(emulator: Emulator, dataset: Dataset) -> str:
    if dataset.workspace == MY_WORKSPACE:
        return "My workspace"
    return emulator.store.workspaces.get(dataset.workspace, dataset.workspace)


def throttles_sent(counters: Counter[str]) -> tuple[int, int]:
    """429s answered for a dataset: (from the quota limits, injected by the fault plan)."""
    real = sum(v for k, v in counters.items() if k.startswith("throttled_"))
    return real, counters.get("injected_throttle", 0)


# -- regions --------------------------------------------------------------------------------------


def render_datasets(emulator: Emulator, selection: Selection) -> str:
    """Every dataset (newest first, at most :data:`MAX_DATASETS_SHOWN`) with its gauges and
    tables."""
    datasets = _datasets(emulator)
    if not datasets:
        return (
            '<p class="empty">No datasets yet. Push rows through the function app (it creates '
            "the dataset from its definition) or create one with the push API.</p>"
        )
    parts = [
        f'<p class="summary">{_plural(len(datasets), "dataset")}'
        + (f", the newest {MAX_DATASETS_SHOWN} shown" if len(datasets) > MAX_DATASETS_SHOWN else "")
        + "</p>"
    ]
    for dataset in datasets[:MAX_DATASETS_SHOWN]:
        parts.append(_render_dataset(emulator, dataset, selection))
    return "\n".join(parts)


def _gauge(label: str, value: int, maximum: int, high: float) -> str:
    # <meter> is announced by screen readers with its value; the text says the same for all.
    return (
        f'<div class="gauge"><dt>{escape(label)}</dt><dd>'
        f'<meter min="0" max="{maximum}" low="{int(maximum * 0.5)}" high="{int(maximum * high)}"'
        f' optimum="0" value="{min(value, maximum)}"></meter>'
        f' <span class="figure">{_n(value)} / {_n(maximum)}</span></dd></div>'
    )


def _render_dataset(emulator: Emulator, dataset: Dataset, selection: Selection) -> str:
    usage = emulator.quotas.usage(dataset.id)
    counters = emulator.counters.get(dataset.id, Counter())
    real, injected = throttles_sent(counters)
    refused = sum(v for k, v in counters.items() if k.startswith("rejected_"))
    heading_id = f"ds-{escape(dataset.id)}"
    tables = []
    for table in dataset.tables.values():
        current = selection.table is table
        schema = " · ".join(
            f'{escape(c.name)} <span class="type">{escape(c.data_type)}</span>'
            for c in table.columns
        )
        mark = ' aria-current="true"' if current else ""
        tables.append(
            f"<li{mark}>"
            f'<a href="{escape(_table_href(dataset, table))}">{escape(table.name)}</a> '
            f'<span class="count" data-rows="{table.row_count}">'
            f"{_plural(table.row_count, 'row')}</span>"
            f'<div class="schema">{schema}</div></li>'
        )
    return (
        f'<article class="dataset" aria-labelledby="{heading_id}">'
        f'<h3 id="{heading_id}">{escape(dataset.name)}</h3>'
        f'<p class="meta">{escape(_workspace_name(emulator, dataset))} · {escape(dataset.mode)}'
        f" · retention {escape(dataset.retention)} · <code>{escape(dataset.id)}</code></p>"
        '<dl class="gauges">'
        + (
            # A table of 250,000 rows or more puts the dataset on 120 POSTs an hour instead.
            _gauge(
                "POSTs in the last hour (large table)",
                usage["postsLastHour"],
                limits.MAX_POSTS_PER_HOUR_LARGE_TABLE,
                0.8,
            )
            if any(t.row_count >= limits.LARGE_TABLE_ROWS for t in dataset.tables.values())
            else _gauge(
                "POSTs in the last minute",
                usage["postsLastMinute"],
                limits.MAX_POSTS_PER_MINUTE,
                0.8,
            )
        )
        + _gauge("Rows in the last hour", usage["rowsLastHour"], limits.MAX_ROWS_PER_HOUR, 0.8)
        + f'<div class="gauge"><dt>429s sent</dt><dd><span class="figure throttles'
        f'{" hot" if real + injected else ""}">{_n(real + injected)}</span>'
        f' <span class="note">({_n(real)} at a limit, {_n(injected)} injected)</span>'
        "</dd></div></dl>"
        f'<p class="meta">{_plural(counters.get("posts_accepted", 0), "POST")} accepted · '
        f"{_plural(counters.get('rows_accepted', 0), 'row')} accepted · "
        f"{_plural(refused, 'request')} refused</p>"
        f'<ul class="tables" aria-label="Tables of {escape(dataset.name)}">{"".join(tables)}</ul>'
        "</article>"
    )


def render_table(emulator: Emulator, selection: Selection) -> str:
    """The selected table: row count, rows-per-minute chart and newest rows."""
    dataset, table = selection.dataset, selection.table
    if dataset is None or table is None:
        return '<h2 id="table-heading">Table</h2><p class="empty">No table to show yet.</p>'
    how = (
        '<a href="/">follow the latest</a>'
        if selection.pinned
        else "following the table that last received rows; pick a table to pin it"
    )
    series = emulator.arrivals.series(dataset.id, table.name)
    rows = emulator.store.newest_rows(dataset, table, NEWEST_ROWS)
    return (
        f'<h2 id="table-heading">{escape(table.name)} <span class="of">in '
        f"{escape(dataset.name)}</span></h2>"
        f'<p class="meta">{how}</p>'
        f'<p class="big"><strong id="row-count" data-rows="{table.row_count}">'
        f"{_n(table.row_count)}</strong> {'row' if table.row_count == 1 else 'rows'}</p>"
        + render_chart(series, emulator.clock.scale)
        + _render_rows(table, rows)
    )


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="null">null</td>'
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        return f'<td class="num">{escape(str(value))}</td>'
    else:
        text = str(value)
    if len(text) > MAX_CELL_CHARS:
        return f'<td title="{escape(text)}">{escape(text[:MAX_CELL_CHARS])}…</td>'
    return f"<td>{escape(text)}</td>"


def _render_rows(table: Table, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="empty">No rows yet.</p>'
    head = "".join(f'<th scope="col">{escape(c.name)}</th>' for c in table.columns)
    body = []
    for position, row in zip(range(table.row_count, 0, -1), rows, strict=False):
        cells = "".join(_cell(row.get(c.name)) for c in table.columns)
        body.append(f'<tr><th scope="row" class="num">{_n(position)}</th>{cells}</tr>')
    caption = (
        f"Newest {_n(len(rows))} of {_plural(table.row_count, 'row')}, newest first"
        if table.row_count > len(rows)
        else f"All {_plural(len(rows), 'row')}, newest first"
    )
    # The wrapper scrolls sideways on its own, so a wide table never widens the page.
    return (
        '<div class="scroll" role="region" aria-labelledby="rows-caption" tabindex="0">'
        f'<table class="rows"><caption id="rows-caption">{caption}</caption>'
        f'<thead><tr><th scope="col">#</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k that is at least ``value`` (a readable axis top)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def render_chart(series: list[int], scale: float) -> str:
    """Rows per minute as an inline SVG line chart (no library, no script)."""
    width, height = 600, 170
    left, right, top, bottom = 72, 8, 14, 30
    top_value = _nice_ceiling(max(series, default=0))
    span = max(1, len(series) - 1)

    def x(i: int) -> float:
        return left + i * (width - left - right) / span

    def y(v: float) -> float:
        return top + (1 - v / top_value) * (height - top - bottom)

    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(series))
    area = f"{x(0):.1f},{y(0):.1f} {points} {x(len(series) - 1):.1f},{y(0):.1f}"
    grid = "".join(
        f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
        f'<text class="label" x="{left - 6}" y="{y(v):.1f}" text-anchor="end" '
        f'dominant-baseline="middle">{_n(v)}</text>'
        for v in sorted({0, top_value // 2, top_value})
    )
    minutes = len(series)
    clock = "" if scale == 1 else f" (emulated minutes: time scale x{scale:g})"
    last, peak, total = series[-1] if series else 0, max(series, default=0), sum(series)
    description = (
        f"{_plural(total, 'row')} in the last {minutes} minutes; peak {_n(peak)} a minute; "
        f"{_n(last)} so far this minute."
    )
    return (
        '<figure class="chart">'
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title chart-desc">'
        f'<title id="chart-title">Rows per minute, last {minutes} minutes{clock}</title>'
        f'<desc id="chart-desc">{description}</desc>{grid}'
        f'<polygon class="area" points="{area}"/><polyline class="line" points="{points}"/>'
        f'<circle class="now" cx="{x(len(series) - 1):.1f}" cy="{y(last):.1f}" r="3"/>'
        f'<text class="label" x="{left}" y="{height - 6}">{minutes - 1} min ago</text>'
        f'<text class="label" x="{width - right}" y="{height - 6}" text-anchor="end">now</text>'
        "</svg>"
        f"<figcaption>Rows per minute, last {minutes} minutes{clock}: {description}"
        "</figcaption></figure>"
    )


def render_dead_letters(summary: DeadLetterSummary | None) -> str:
    """The dead-letter panel: waiting rows per target, or why there is nothing to show."""
    if summary is None:
        return (
            '<p class="empty"><strong>Not connected.</strong> The emulator reads the app\'s '
            "dead letters only when it is started with <code>EMULATOR_DEADLETTER_CONNECTION"
            "</code> (a storage connection string) and <code>--deadletter-container</code>; "
            "<code>make run</code> sets both.</p>"
        )
    where = (
        f'<p class="meta">Container <code>{escape(summary.container)}</code> at '
        f"<code>{escape(summary.endpoint)}</code></p>"
    )
    if not summary.checked:
        return where + '<p class="empty">Looking…</p>'
    parts = [where]
    if summary.error:
        parts.append(f'<p class="warn" role="alert">{escape(summary.error)}</p>')
    if summary.waiting_blobs == 0:
        parts.append('<p class="big"><strong id="dead-letter-rows">0</strong> rows waiting</p>')
    else:
        parts.append(
            f'<p class="big"><strong id="dead-letter-rows" class="hot">'
            f"{_n(summary.waiting_rows)}</strong> "
            f"{'row' if summary.waiting_rows == 1 else 'rows'} waiting in "
            f"{_plural(summary.waiting_blobs, 'blob')}"
            f"{' (listing cut short)' if summary.truncated else ''}</p>"
        )
        items = "".join(
            f"<li><span>{escape(t.dataset)} / {escape(t.table)}</span> "
            f'<span class="count">{_plural(t.rows, "row")} in {_plural(t.blobs, "blob")}, '
            f"newest {escape(t.newest)}</span></li>"
            for t in summary.targets
        )
        parts.append(f'<ul class="targets">{items}</ul>')
    if summary.replayed_blobs:
        parts.append(f'<p class="meta">{_plural(summary.replayed_blobs, "blob")} replayed</p>')
    return "".join(parts)


def render_access(emulator: Emulator) -> str:
    """The tenant setting for service principals, and each workspace's members and roles."""
    tenant = emulator.tenant
    if not tenant.service_principals_enabled:
        setting = '<strong class="hot">off</strong>: every service principal is refused (401)'
    elif tenant.allowed_principals is None:
        setting = "<strong>on</strong> for every service principal"
    else:
        allowed = ", ".join(f"<code>{escape(a)}</code>" for a in tenant.allowed_principals)
        setting = f"<strong>on</strong> only for {allowed or 'nobody'}"
    parts = [
        f'<p class="meta" id="tenant-setting">Service principals can use Fabric APIs: {setting}</p>'
    ]
    for workspace_id, name in sorted(emulator.store.workspaces.items(), key=lambda kv: kv[1]):
        members = list(emulator.store.members.get(workspace_id, {}).values())
        parts.append(
            f'<h3 class="workspace">{escape(name)}</h3>'
            f'<p class="meta"><code>{escape(workspace_id)}</code></p>'
        )
        if not members:
            parts.append('<p class="empty">No members: nobody may use it.</p>')
            continue
        items = "".join(
            f"<li><span>{escape(m.display_name or m.identifier)}"
            f"{f' <code>{escape(m.identifier)}</code>' if m.display_name else ''}</span> "
            f'<span class="count">{escape(m.principal_type)} · '
            f'<strong class="role">{escape(m.access_right)}</strong></span></li>'
            for m in members
        )
        parts.append(
            f'<ul class="targets members" data-workspace="{escape(workspace_id)}">{items}</ul>'
        )
    return "".join(parts)


def render_eventhouse(emulator: Emulator) -> str:
    """The second destination (issue 18): the Kusto surface's databases, tables and row
    counts, and its ingestion counters (emulator/kusto.py)."""
    state = emulator.kusto.snapshot()
    counters = state["counters"]
    queued = "on" if state["queued"] else "off (no storage connection)"
    parts = [
        f'<p class="meta">Streaming: <strong>{escape(state["streaming"])}</strong> · '
        f"queued ingestion: {escape(queued)}</p>",
        f'<p class="meta" id="eventhouse-counters">{_n(counters.get("rows_ingested", 0))} rows '
        f"ingested · {_plural(counters.get('streaming_requests', 0), 'streaming request')} · "
        f"{_plural(counters.get('queued_blobs', 0), 'queued blob')} · "
        f"{_n(state['pending_messages'])} waiting · "
        f"{_n(counters.get('throttled', 0))} throttled · "
        f"{_n(counters.get('failed_ingestions', 0))} failed</p>",
    ]
    for database in state["databases"]:
        parts.append(f'<h3 class="workspace">{escape(database["name"])}</h3>')
        if not database["tables"]:
            parts.append('<p class="empty">No tables yet.</p>')
            continue
        items = "".join(
            f"<li><span>{escape(t['name'])}</span> "
            f'<span class="count">{_plural(t["rows"], "row")}</span></li>'
            for t in database["tables"]
        )
        parts.append(
            f'<ul class="targets eventhouse" data-database="{escape(database["name"])}">'
            f"{items}</ul>"
        )
    return "".join(parts)


# -- the page and its routes ------------------------------------------------------------------


def payload(emulator: Emulator, dataset_id: str | None, table_name: str | None) -> dict[str, Any]:
    """What one update carries: each region's HTML, and the selection in plain figures."""
    selection = select(emulator, dataset_id, table_name)
    watch = emulator.deadletters
    summary = watch.summary if watch is not None else None
    selected = None
    if selection.dataset is not None and selection.table is not None:
        selected = {
            "dataset": selection.dataset.id,
            "datasetName": selection.dataset.name,
            "table": selection.table.name,
            "rows": selection.table.row_count,
            "pinned": selection.pinned,
            "rowsPerMinute": emulator.arrivals.series(selection.dataset.id, selection.table.name),
        }
    return {
        "selected": selected,
        "deadLetters": None
        if summary is None
        else {
            "container": summary.container,
            "checked": summary.checked,
            "error": summary.error,
            "waitingBlobs": summary.waiting_blobs,
            "waitingRows": summary.waiting_rows,
        },
        "regions": {
            "datasets": render_datasets(emulator, selection),
            "table": render_table(emulator, selection),
            "deadletters": render_dead_letters(summary),
            "access": render_access(emulator),
            "eventhouse": render_eventhouse(emulator),
        },
    }


def render_page(emulator: Emulator, dataset_id: str | None, table_name: str | None) -> str:
    """The whole page, with every region rendered, so it is useful even without script."""
    regions = payload(emulator, dataset_id, table_name)["regions"]
    scale = emulator.clock.scale
    clock = "" if scale == 1 else f" · quota clock x{scale:g}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Power BI emulator · live dashboard</title>
<link rel="icon" href="/_emulator/dashboard/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/_emulator/dashboard/dashboard.css">
<script src="/_emulator/dashboard/dashboard.js" defer></script>
</head>
<body>
<header>
<h1>Power BI emulator <span class="of">live dashboard{escape(clock)}</span></h1>
<p class="status">
<span id="live-status" role="status">Snapshot: reload the page to update it.</span>
<span id="updated" class="note"></span>
</p>
</header>
<main>
<section class="datasets" aria-labelledby="datasets-heading">
<h2 id="datasets-heading">Datasets</h2>
<div data-region="datasets">{regions["datasets"]}</div>
</section>
<section class="selected" aria-labelledby="table-heading">
<div data-region="table">{regions["table"]}</div>
</section>
<section class="deadletters" aria-labelledby="deadletters-heading">
<h2 id="deadletters-heading">Dead letters</h2>
<div data-region="deadletters">{regions["deadletters"]}</div>
</section>
<section class="eventhouse" aria-labelledby="eventhouse-heading">
<h2 id="eventhouse-heading">Eventhouse (KQL database)</h2>
<div data-region="eventhouse">{regions["eventhouse"]}</div>
</section>
<section class="access" aria-labelledby="access-heading">
<h2 id="access-heading">Workspaces and access</h2>
<div data-region="access">{regions["access"]}</div>
</section>
</main>
</body>
</html>
"""


def _sse(event: str, data: Any) -> bytes:
    # json.dumps never emits a raw newline, so the data fits on one "data:" line.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class DashboardApi:
    """The dashboard's routes; see the module docstring."""

    def __init__(self, emulator: Emulator) -> None:
        self.em = emulator
        self._static = {name: (_STATIC_DIR / name).read_bytes() for name in _STATIC_TYPES}

    def add_routes(self, app: web.Application) -> None:
        """Register the page, the stream, the JSON state and the static files."""
        app.router.add_get("/", self.page)
        app.router.add_get("/_emulator/dashboard/events", self.events)
        app.router.add_get("/_emulator/dashboard/state", self.state)
        app.router.add_get("/_emulator/dashboard/{name}", self.static)

    async def page(self, request: web.Request) -> web.Response:
        """The dashboard page."""
        query = request.query
        return web.Response(
            text=render_page(self.em, query.get("dataset"), query.get("table")),
            content_type="text/html",
            charset="utf-8",
            headers=_SECURITY_HEADERS,
        )

    async def state(self, request: web.Request) -> web.Response:
        """The stream's payload, once, as JSON (every region)."""
        query = request.query
        return web.json_response(
            payload(self.em, query.get("dataset"), query.get("table")),
            headers={"Cache-Control": "no-store"},
        )

    async def static(self, request: web.Request) -> web.Response:
        """The page's script, stylesheet and icon (kept in memory: they are small)."""
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._static[name],
            content_type=_STATIC_TYPES[name],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the first update has every region, later ones those that changed."""
        dataset_id, table_name = request.query.get("dataset"), request.query.get("table")
        if self.em.feed.subscribers >= MAX_STREAMS:
            # Each stream renders on the emulator's one event loop: a bound keeps the API fast.
            return web.json_response(
                {"error": f"at most {MAX_STREAMS} dashboards at once"},
                status=503,
                headers={"Retry-After": "5"},
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        feed = self.em.feed
        wake = feed.subscribe()
        sent: dict[str, str] = {}
        try:
            await response.write(b"retry: 2000\n\n")  # the browser reconnects after 2 s
            while not feed.closed:
                wake.clear()  # changes from here on wake the next round
                update = payload(self.em, dataset_id, table_name)
                regions = update["regions"]
                changed = {k: v for k, v in regions.items() if sent.get(k) != v}
                if changed or not sent:
                    await response.write(_sse("update", {**update, "regions": changed}))
                    sent.update(changed)
                else:
                    await response.write(b": keepalive\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), TICK_SECONDS)
                if feed.closed:
                    break
                # Let a burst of changes settle into one render.
                await asyncio.sleep(1 / MAX_UPDATES_PER_SECOND)
        except ConnectionResetError:
            pass  # the page was closed; nothing to answer
        finally:
            feed.unsubscribe(wake)
        return response
