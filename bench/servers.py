"""The local servers the figures need, started on free ports and stopped afterwards: the Power
BI emulator (``python -m emulator``) and Azurite, through the test suite's own helpers."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.azurite import Azurite, start_azurite
from tests.emulator.conftest import Api, EmulatorProcess, start_emulator


@contextmanager
def emulator(time_scale: float) -> Iterator[tuple[EmulatorProcess, Api]]:
    """An emulator whose quota windows run ``time_scale`` times faster, and a client."""
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        process = start_emulator("--time-scale", f"{time_scale:g}", tmp=Path(tmp))
        try:
            yield process, Api(process)
        finally:
            process.stop()


@contextmanager
def azurite() -> Iterator[Azurite]:
    """Azurite (blob and queue, in memory)."""
    server = start_azurite()
    try:
        yield server
    finally:
        server.stop()
