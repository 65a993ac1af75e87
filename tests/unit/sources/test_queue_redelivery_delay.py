"""How long the host waits before redelivering a failed message, read as the host reads it:
the hand-back rule (shared/sources/queue_ingest.py) compares Power BI's pause with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.sources.queue_ingest import VISIBILITY_SETTING, redelivery_delay

REPO = Path(__file__).resolve().parents[3]


def host_json(tmp_path: Path, queues: dict[str, object]) -> Path:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "extensions": {"queues": queues}}))
    return path


def test_the_app_s_own_host_json_says_30_seconds() -> None:
    """The shipped host.json: visibilityTimeout 00:00:30."""
    assert redelivery_delay({}, REPO / "host.json") == 30.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:01", 1.0), ("00:02:30", 150.0), ("01:00:00", 3600.0), ("1.00:00:00.5", 86400.5)],
)
def test_the_app_setting_overrides_host_json(tmp_path: Path, text: str, seconds: float) -> None:
    """``AzureFunctionsJobHost__extensions__queues__visibilityTimeout`` wins, in any case."""
    path = host_json(tmp_path, {"visibilityTimeout": "00:00:30"})
    assert redelivery_delay({VISIBILITY_SETTING: text}, path) == seconds
    assert redelivery_delay({VISIBILITY_SETTING.lower(): text}, path) == seconds


def test_without_a_setting_the_host_default_is_0(tmp_path: Path) -> None:
    """No visibilityTimeout (or no host.json): the host's default, 0 s."""
    assert redelivery_delay({}, host_json(tmp_path, {"maxDequeueCount": 5})) == 0.0
    assert redelivery_delay({}, tmp_path / "missing.json") == 0.0


def test_an_unreadable_value_counts_as_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """0 makes every pause a hand-back, which never shows a message before its pause is over;
    the warning names where the value came from."""
    path = host_json(tmp_path, {"visibilityTimeout": "thirty seconds"})
    assert redelivery_delay({}, path) == 0.0
    assert "visibilityTimeout" in caplog.text and "thirty seconds" in caplog.text
