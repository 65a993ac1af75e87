"""Figure 4: time the HTTP function takes for a 100-row Add Rows request, the emulator
answering at once (its quota windows run 3,600 times faster, so nothing is paced).

``functions.http.add_rows`` is called in-process with a ``func.HttpRequest``, as the worker
calls it, with the app's real wiring (``shared.runtime``: settings from the environment, the
ingestor, the governor) pointed at the emulator with a static token. After a warm-up (the
first call creates the dataset), each request is timed from the call to the returned
``HttpResponse``. For comparison the same 100 rows are POSTed straight to the emulator with a
pooled ``requests`` session: the difference is what the function adds to Power BI's own time.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import azure.functions as func
import requests

from bench import data, servers
from bench.report import Figure, median, percentile, profile
from tests.emulator.conftest import Api, EmulatorProcess

TIME_SCALE = 3600.0
ROWS = 100
WARM_UP = 20
TARGET_P99_MS = 20.0
NAME = "SalesMarketing"


class Out(func.Out[list[str]]):
    """The queue output binding's stand-in (used only in queue mode)."""

    def __init__(self) -> None:
        self.value: list[str] | None = None

    def set(self, val: list[str]) -> None:
        self.value = val

    def get(self) -> list[str]:
        return self.value or []


@contextmanager
def app_settings(values: dict[str, str]) -> Iterator[None]:
    """The app's settings in the environment for the block, and the runtime rebuilt from them."""
    from shared import runtime

    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    runtime.reset()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        runtime.reset()


def _settings(emulator: EmulatorProcess, api: Api, datasets: Path) -> dict[str, str]:
    return {
        "POWERBI_API_URL": emulator.base,
        "POWERBI_AUTH": "static",
        "POWERBI_STATIC_TOKEN": api.token,
        "POWERBI_QUOTA_TIME_SCALE": f"{TIME_SCALE:g}",
        "POWERBI_WORKSPACE_ID": "",
        "POWERBI_WORKSPACE_NAME": "",
        "DATASETS_DIR": str(datasets),
        "HTTP_MODE": "sync",
        "WEBHOOK_SECRET": "",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        # One process and no storage running: pacing alone, as documented for that case
        # (shared pacing would find no table and fall back to a quarter of each quota).
        "PACING": "local",
    }


def _request(body: bytes) -> func.HttpRequest:
    return func.HttpRequest(
        "POST",
        f"http://localhost:7071/api/datasets/{NAME}/tables/{data.TABLE}/rows",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={"dataset": NAME, "table": data.TABLE},
        body=body,
    )


def _timed(call: Callable[[], int], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        status = call()
        samples.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise AssertionError(f"status {status}")
    return samples


def run(requests_count: int, results: Path) -> tuple[Figure, list[dict[str, Any]] | None]:
    body = json.dumps({"rows": [data.json_row(i) for i in range(ROWS)]}).encode()
    with (
        tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp,
        servers.emulator(TIME_SCALE) as (emulator, api),
    ):
        datasets = Path(tmp)
        (datasets / f"{NAME}.json").write_text(json.dumps(data.definition(NAME)))
        with app_settings(_settings(emulator, api, datasets)):
            from functions.http import add_rows

            def call() -> int:
                return int(add_rows(_request(body), Out()).status_code)

            _timed(call, WARM_UP)
            function_ms = _timed(call, requests_count)
            dataset_id = next(
                d["id"]
                for d in api.request("GET", f"{api.prefix(None)}/datasets").json()["value"]
                if d["name"] == NAME
            )
            session = requests.Session()
            session.trust_env = False
            url = api.rows_url(dataset_id, data.TABLE)
            headers = {
                "Authorization": f"Bearer {api.token}",
                "Content-Type": "application/json; charset=utf-8",
            }
            compact = json.dumps(json.loads(body), separators=(",", ":")).encode()

            def direct() -> int:
                return session.post(url, data=compact, headers=headers, timeout=30).status_code

            _timed(direct, WARM_UP)
            direct_ms = _timed(direct, requests_count)
            counters = api.state(dataset_id)["counters"]
            p50, p99 = median(function_ms), percentile(function_ms, 99)
            d50, d99 = median(direct_ms), percentile(direct_ms, 99)
            met = p99 < TARGET_P99_MS
            summary = None
            if not met:
                summary = profile(lambda: _timed(call, 100), results / "profile-http-add-rows.txt")
    figure = Figure(
        "4",
        f"HTTP add_rows, {ROWS}-row request: p50 / p99 ({requests_count} requests)",
        f"{p50:.1f} / {p99:.1f} ms (Power BI alone {d50:.1f} / {d99:.1f})",
        f"p99 < {TARGET_P99_MS:.0f} ms",
        met,
        {
            "requests": requests_count,
            "rows_per_request": ROWS,
            "function_ms": {
                "p50": round(p50, 2),
                "p90": round(percentile(function_ms, 90), 2),
                "p99": round(p99, 2),
                "max": round(max(function_ms), 2),
            },
            "emulator_direct_ms": {"p50": round(d50, 2), "p99": round(d99, 2)},
            "added_ms": {"p50": round(p50 - d50, 2), "p99": round(p99 - d99, 2)},
            "throttled": {k: v for k, v in counters.items() if k.startswith("throttled_")},
        },
    )
    return figure, summary
