"""Integration tests reuse the emulator server fixtures of the emulator suite."""

from tests.emulator.conftest import api, emulator

__all__ = ["api", "emulator"]
