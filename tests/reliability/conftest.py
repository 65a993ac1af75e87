"""Reliability tests call the function app's functions directly, with real servers behind."""

from __future__ import annotations

from tests.integration.conftest import api, azurite, emulator

__all__ = ["api", "azurite", "emulator"]
