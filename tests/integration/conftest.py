"""Integration fixtures: the emulator (shared with the emulator suite) and Azurite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.azurite import Azurite, start_azurite
from tests.emulator.conftest import api, emulator

__all__ = ["api", "azurite", "emulator"]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite for the session."""
    server = start_azurite()
    yield server
    server.stop()
