"""``--time-scale`` runs the quota windows faster, so quota tests take seconds."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.emulator.conftest import start_emulator


def test_time_scale_shortens_the_hourly_row_window(tmp_path: Path) -> None:
    """At --time-scale 60 the hourly row quota frees within a real minute, and Retry-After
    says so in real seconds (at scale 1 it would ask for about an hour)."""
    server = start_emulator("--time-scale", "60", tmp=tmp_path)
    try:
        session = requests.Session()
        session.trust_env = False
        token = session.post(f"{server.base}/_emulator/token").json()["access_token"]
        session.headers["Authorization"] = f"Bearer {token}"
        assert session.get(f"{server.base}/_emulator/clock").json()["scale"] == 60
        table = {"name": "T", "columns": [{"name": "c0", "dataType": "Int64"}]}
        dataset = session.post(
            f"{server.api}/datasets", json={"name": "scaled", "tables": [table]}
        ).json()["id"]
        url = f"{server.api}/datasets/{dataset}/tables/T/rows"
        full = json.dumps({"rows": [{"c0": i} for i in range(10_000)]}).encode()
        headers = {"Content-Type": "application/json"}
        # GIVEN a million rows pushed (100 POSTs, under the per-minute limit)
        statuses = [session.post(url, data=full, headers=headers).status_code for _ in range(100)]
        assert statuses == [200] * 100
        # WHEN one more row is pushed within the (emulated) hour
        refused = session.post(url, json={"rows": [{"c0": -1}]})
        # THEN it is throttled, and asked to wait less than a real minute, not an hour
        assert refused.status_code == 429, refused.text
        assert refused.headers["x-emulator-throttle-reason"] == "rows_per_hour"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    finally:
        server.stop()
