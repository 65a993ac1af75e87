"""Reliability tests call the function app's functions directly, with real servers behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import api, azurite, emulator

__all__ = ["api", "azurite", "emulator"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """For ``make soak``: how many hostile inputs the property tests tried, by kind."""
    target = os.environ.get("HOSTILE_COUNT_FILE")
    if not target:
        return
    from tests.reliability.test_hostile_input import TRIED

    Path(target).write_text(json.dumps(dict(TRIED)))
