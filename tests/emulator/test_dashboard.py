"""The live dashboard's server side: the page, its event stream, and what they are built from.

The browser test (tests/integration/test_dashboard_browser.py) shows the page in Chromium; here
the HTML and the Server-Sent Events are read as a client reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from emulator.clock import ScaledClock
from emulator.dashboard import render_chart
from emulator.live import ArrivalHistory, LiveFeed
from tests.azurite import ACCOUNT, KEY
from tests.emulator.conftest import Api, EmulatorProcess, int_table, start_emulator

WAIT = 10.0  # seconds: a bounded wait for an update that should come within half a second


class EventStream:
    """A client of ``/_emulator/dashboard/events``: parsed events, and the regions merged."""

    def __init__(self, base: str, **query: str) -> None:
        # http.client rather than requests: closing must interrupt a blocked read at once,
        # which shutting the socket down does.
        url = urlsplit(base)
        self.connection = HTTPConnection(url.hostname, url.port, timeout=30)
        self.connection.request("GET", "/_emulator/dashboard/events?" + urlencode(query))
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.comments = 0
        self.updates = 0
        self.regions: dict[str, str] = {}
        self.latest: dict[str, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event: dict[str, Any] = {}
        try:
            for raw in self.response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and event:
                    self.events.put(event)
                    event = {}
        except Exception:  # closed by the test, or the server went away
            pass
        self.events.put(None)

    def next(self, timeout: float = WAIT) -> dict[str, Any] | None:
        """The next update's data (None when the stream ended); merges its regions."""
        event = self.events.get(timeout=timeout)
        if event is None:
            return None
        assert event["event"] == "update"
        data: dict[str, Any] = event["data"]
        self.updates += 1
        self.regions.update(data["regions"])
        self.latest = data
        return data

    def wait_for(self, check: Callable[[EventStream], bool], timeout: float = WAIT) -> None:
        """Read updates until ``check`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while not check(self):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no such update within {timeout} s: {self.latest}"
            assert self.next(remaining) is not None, "the stream ended"

    def close(self) -> None:
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def selected_rows(stream: EventStream) -> int | None:
    selected = stream.latest.get("selected")
    return None if selected is None else int(selected["rows"])


# -- what the dashboard is built from ------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_arrival_history_counts_rows_per_minute_on_the_quota_clock() -> None:
    real = FakeTime()
    clock = ScaledClock(60.0, base=real)  # an emulated minute per real second
    history = ArrivalHistory(clock, minutes=5)
    history.record("d", "T", 3)
    history.record("d", "T", 4)
    real.now += 1.0  # one emulated minute later
    history.record("d", "T", 10)
    assert history.series("d", "T") == [0, 0, 0, 7, 10]
    assert history.series("d", "Other") == [0] * 5
    assert history.latest == ("d", "T")
    clock.advance(120)  # two more minutes: the window slides, zeros included
    assert history.series("d", "T") == [0, 7, 10, 0, 0]


def test_arrival_history_is_bounded_and_forgets_deleted_datasets() -> None:
    real = FakeTime()
    history = ArrivalHistory(ScaledClock(1.0, base=real), minutes=3)
    for minute in range(100):
        history.record("d", "T", minute)
        real.now += 60
    assert len(history._buckets[("d", "T")]) == 3  # never more buckets than minutes shown
    real.now -= 60
    assert history.series("d", "T") == [97, 98, 99]
    history.forget("d")
    assert history.series("d", "T") == [0, 0, 0]
    assert history.latest is None


def test_live_feed_wakes_every_subscriber_and_close_wakes_them_for_good() -> None:
    async def scenario() -> None:
        feed = LiveFeed()
        first, second = feed.subscribe(), feed.subscribe()
        assert not first.is_set()
        feed.changed()
        assert first.is_set() and second.is_set()
        feed.unsubscribe(second)
        first.clear()
        second.clear()
        feed.close()
        assert first.is_set() and not second.is_set() and feed.closed
        assert feed.subscribe().is_set()  # a stream opened during shutdown ends at once

    asyncio.run(scenario())


def test_chart_axis_is_readable_and_describes_the_data() -> None:
    svg = render_chart([0] * 58 + [130, 20], 1.0)
    assert ">200<" in svg and ">100<" in svg  # the axis tops out at a round number
    assert "150 rows in the last 60 minutes; peak 130 a minute; 20 so far this minute" in svg
    assert "time scale" not in svg
    assert "emulated minutes: time scale x60" in render_chart([0] * 60, 60.0)


# -- the page ----------------------------------------------------------------------------------


def test_page_needs_no_token_and_shows_tables_schemas_and_counts(
    emulator: EmulatorProcess, api: Api, http: requests.Session
) -> None:
    table = {
        "name": "Sales",
        "columns": [
            {"name": "Region", "dataType": "string"},
            {"name": "Units", "dataType": "Int64"},
        ],
    }
    dataset_id = api.create_dataset([table], name="Dashboard page")
    assert api.post_rows(dataset_id, "Sales", [{"Region": "North", "Units": 7}]).status_code == 200

    page = http.get(f"{emulator.base}/", params={"dataset": dataset_id, "table": "Sales"})
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    text = page.text
    assert "<h3" in text and "Dashboard page</h3>" in text
    assert 'Region <span class="type">String</span>' in text
    assert 'Units <span class="type">Int64</span>' in text
    assert '<strong id="row-count" data-rows="1">1</strong>' in text
    assert "<td>North</td>" in text and '<td class="num">7</td>' in text
    assert "1 / 120" in text and "1 / 1,000,000" in text  # the quota gauges
    assert "Not connected." in text  # this emulator was not told where dead letters are

    for name, kind in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ]:
        part = http.get(f"{emulator.base}/_emulator/dashboard/{name}")
        assert part.status_code == 200 and part.headers["Content-Type"].startswith(kind), name
    assert http.get(f"{emulator.base}/_emulator/dashboard/nothing.js").status_code == 404


def test_names_columns_and_values_are_shown_as_text(
    emulator: EmulatorProcess, api: Api, http: requests.Session
) -> None:
    hostile = "<script>alert(1)</script>"
    table = {"name": "T", "columns": [{"name": "<b>col</b>", "dataType": "string"}]}
    dataset_id = api.create_dataset([table], name=hostile)
    row = {"<b>col</b>": '<img src=x onerror="alert(2)">'}
    assert api.post_rows(dataset_id, "T", [row]).status_code == 200

    query = {"dataset": dataset_id, "table": "T"}
    page = http.get(f"{emulator.base}/", params=query).text
    state = http.get(f"{emulator.base}/_emulator/dashboard/state", params=query).json()
    for html in [page, *state["regions"].values()]:
        assert hostile not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;col&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert state["selected"]["datasetName"] == hostile  # the JSON carries the name as data


# -- the event stream --------------------------------------------------------------------------


def test_stream_sends_the_new_count_and_rows_after_post_rows(
    emulator: EmulatorProcess, api: Api
) -> None:
    dataset_id = api.create_dataset([int_table("T")], name="Dashboard stream")
    stream = EventStream(emulator.base, dataset=dataset_id, table="T")
    try:
        first = stream.next()
        assert first is not None
        assert set(first["regions"]) == {
            "datasets",
            "table",
            "deadletters",
            "access",
            "eventhouse",
        }
        assert "System-assigned managed identity" in first["regions"]["access"]
        assert first["selected"]["table"] == "T" and first["selected"]["pinned"] is True
        assert selected_rows(stream) == 0

        assert api.post_rows(dataset_id, "T", [{"c0": 41}, {"c0": 42}]).status_code == 200
        stream.wait_for(lambda s: selected_rows(s) == 2)
        table_html = stream.regions["table"]
        assert 'data-rows="2"' in table_html
        assert '<td class="num">42</td>' in table_html and '<td class="num">41</td>' in table_html
        assert stream.latest["selected"]["rowsPerMinute"][-1] == 2
        # Only what changed is sent again: the dead-letter panel did not change.
        assert "deadletters" not in stream.latest["regions"]
    finally:
        stream.close()


def test_a_burst_of_posts_is_coalesced_into_a_few_updates(
    emulator: EmulatorProcess, api: Api
) -> None:
    dataset_id = api.create_dataset([int_table("T")], name="Dashboard burst")
    stream = EventStream(emulator.base, dataset=dataset_id, table="T")
    try:
        assert stream.next() is not None
        before = stream.updates
        with ThreadPoolExecutor(4) as pool:  # together, within the 5-pending limit
            answers = list(
                pool.map(lambda i: api.post_rows(dataset_id, "T", [{"c0": i}]), range(60))
            )
        assert all(a.status_code == 200 for a in answers)
        stream.wait_for(lambda s: selected_rows(s) == 60)
        updates = stream.updates - before
        # Each change wakes the stream, but a render waits 1/4 s for more: 60 changes arriving
        # together make a few updates, not 60.
        print(f"60 POSTs -> {updates} updates")
        assert updates < 60, updates
    finally:
        stream.close()


def test_throttles_show_on_the_gauges(emulator: EmulatorProcess, api: Api) -> None:
    dataset_id = api.create_dataset([int_table("T")], name="Dashboard throttles")
    stream = EventStream(emulator.base, dataset=dataset_id, table="T")
    try:
        assert stream.next() is not None
        api.set_faults(script=["throttle"])
        assert api.post_rows(dataset_id, "T", [{"c0": 1}]).status_code == 429
        stream.wait_for(lambda s: "(0 at a limit, 1 injected)" in s.regions["datasets"])
        api.set_faults()  # back to no faults
        statuses = [api.post_rows(dataset_id, "T", [{"c0": i}]).status_code for i in range(121)]
        assert statuses == [200] * 120 + [429]  # the 121st POST in a minute
        stream.wait_for(lambda s: "(1 at a limit, 1 injected)" in s.regions["datasets"])
        assert "120 / 120" in stream.regions["datasets"]
        assert "120 / 1,000,000" in stream.regions["datasets"]
    finally:
        stream.close()


def test_without_a_pin_the_page_follows_the_table_that_last_received_rows(
    emulator: EmulatorProcess, api: Api
) -> None:
    first = api.create_dataset([int_table("A"), int_table("B")], name="Dashboard follow")
    stream = EventStream(emulator.base, dataset="no-such-dataset", table="A")
    try:
        assert stream.next() is not None
        assert api.post_rows(first, "B", [{"c0": 1}]).status_code == 200
        stream.wait_for(
            lambda s: (
                (s.latest.get("selected") or {}).get("table") == "B"
                and s.latest["selected"]["dataset"] == first
            )
        )
        assert stream.latest["selected"]["pinned"] is False
        assert "follow" in stream.regions["table"]
    finally:
        stream.close()


def test_quota_clock_moves_the_chart_and_ctrl_c_ends_open_streams(tmp_path: Path) -> None:
    server = start_emulator("--time-scale", "60", tmp=tmp_path)
    stream: EventStream | None = None
    try:
        api = Api(server)
        dataset_id = api.create_dataset([int_table("T")], name="Dashboard clock")
        assert api.post_rows(dataset_id, "T", [{"c0": 1}] * 5).status_code == 200
        stream = EventStream(server.base, dataset=dataset_id, table="T")
        stream.wait_for(lambda s: selected_rows(s) == 5)
        assert "emulated minutes: time scale x60" in stream.regions["table"]
        series = stream.latest["selected"]["rowsPerMinute"]
        assert len(series) == 60 and sum(series) == 5
        api.advance(30 * 60)  # half an emulated hour: the arrivals move left on the chart
        stream.wait_for(lambda s: s.latest["selected"]["rowsPerMinute"][-1] == 0, timeout=15)
        assert sum(stream.latest["selected"]["rowsPerMinute"][:31]) == 5

        # Ctrl-C with a dashboard open: the stream ends and the server exits promptly (not
        # after aiohttp's 60 s graceful-shutdown timeout).
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=15) == 0  # aiohttp alone would wait 60 s
        while stream.next(timeout=5) is not None:
            pass
    finally:
        if stream is not None:
            stream.close()
        server.stop()


def test_unreachable_dead_letter_storage_is_said_not_hidden(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    env = {**os.environ, "EMULATOR_DEADLETTER_CONNECTION": connection}
    server = start_emulator("--deadletter-container", "letters", tmp=tmp_path, env=env)
    try:
        assert any(
            line.strip() == f"Dead letters: container letters at http://127.0.0.1:{port}/{ACCOUNT}"
            for line in server.output
        ), server.output
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 20
        while (found := session.get(f"{server.base}/_emulator/dashboard/state").json())[
            "deadLetters"
        ]["error"] is None:
            assert time.monotonic() < deadline, found["deadLetters"]
            time.sleep(0.2)
        assert found["deadLetters"]["error"].startswith("cannot list the container")
        assert 'role="alert">cannot list the container' in found["regions"]["deadletters"]
        assert KEY not in json.dumps(found) and KEY not in "\n".join(server.output)
    finally:
        server.stop()


def test_an_unusable_dead_letter_connection_is_reported_not_fatal() -> None:
    """A malformed connection string: the panel says so (without the string), polling ends,
    and stopping the watch does not raise (the emulator still shuts down cleanly)."""
    import asyncio

    from emulator.live import DeadLetterWatch

    changes: list[int] = []

    async def run() -> None:
        watch = DeadLetterWatch("AccountKey=secret-ish;garbage", "dl", lambda: changes.append(1))
        await watch.start()
        for _ in range(200):  # bounded: the first look fails at once
            if watch.summary.checked:
                break
            await asyncio.sleep(0.05)
        assert watch.summary.checked and watch.summary.error is not None
        assert "not usable" in watch.summary.error and "secret-ish" not in watch.summary.error
        await watch.stop()

    asyncio.run(run())
    assert changes == [1]


def test_dashboards_at_once_are_bounded(emulator: EmulatorProcess) -> None:
    """Each open dashboard costs renders on the emulator's one event loop: past MAX_STREAMS
    the events route answers 503 with Retry-After (the browser reconnects by itself)."""
    from emulator.dashboard import MAX_STREAMS

    url = urlsplit(emulator.base)
    opened: list[HTTPConnection] = []
    try:
        for _ in range(MAX_STREAMS + 1):
            connection = HTTPConnection(url.hostname, url.port, timeout=30)
            connection.request("GET", "/_emulator/dashboard/events")
            answer = connection.getresponse()
            opened.append(connection)
            if answer.status != 200:
                break
        assert answer.status == 503 and answer.getheader("Retry-After") == "5"
        assert len(opened) <= MAX_STREAMS + 1
    finally:
        for connection in opened:
            connection.close()


def test_a_large_table_shows_the_hourly_post_gauge() -> None:
    """Once a table holds 250,000 rows the dataset is limited to 120 POSTs an hour, and its
    gauge says so instead of showing the per-minute one."""
    from emulator.app import Emulator, EmulatorConfig
    from emulator.dashboard import render_datasets, select
    from emulator.definitions import parse_dataset

    emulator = Emulator(EmulatorConfig())
    name, mode, tables = parse_dataset({"name": "Big", "tables": [int_table("T")]})
    dataset = emulator.store.create_dataset("", name, "None", mode, tables, {})
    html = render_datasets(emulator, select(emulator, None, None))
    assert "POSTs in the last minute" in html and "large table" not in html
    dataset.tables["T"].row_count = 250_000  # as if stored: the gauge reads the count
    html = render_datasets(emulator, select(emulator, None, None))
    assert "POSTs in the last hour (large table)" in html and "in the last minute" not in html
