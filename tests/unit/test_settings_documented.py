"""Every setting the bundle reads is documented in both places a user looks (the README's
settings table and local.settings.example.json), and LOCKS_CONTAINER's own rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def read_settings() -> set[str]:
    """The names shared/settings.py reads: ``get("X")`` and ``_helper(get, "X", ...)``."""
    source = (ROOT / "shared" / "settings.py").read_text(encoding="utf-8")
    return set(re.findall(r'\bget\(\s*"([A-Z][A-Z0-9_]+)"', source)) | set(
        re.findall(r'\(get,\s*"([A-Z][A-Z0-9_]+)"', source)
    )


def example_values() -> dict[str, str]:
    values: dict[str, str] = json.loads(
        (ROOT / "local.settings.example.json").read_text(encoding="utf-8")
    )["Values"]
    return values


def readme_settings_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Local settings")
    return text[start : text.index("\n## ", start + 1)]


def test_the_scan_finds_the_settings() -> None:
    """The scan below sees the settings (a rewrite of settings.py must not make it vacuous)."""
    assert {"POWERBI_API_URL", "STORAGE_CONNECTION", "LOCKS_CONTAINER"} <= read_settings()


@pytest.mark.parametrize("name", sorted(read_settings()))
def test_every_setting_is_documented_in_both_places(name: str) -> None:
    assert f"`{name}`" in readme_settings_section(), f"{name} is not in README's settings table"
    assert name in example_values(), f"{name} is not in local.settings.example.json"


def test_the_example_settings_are_valid() -> None:
    """The example's values are accepted as they are."""
    settings = Settings.from_env(example_values())
    assert settings.locks_container == "powerbi-locks"


def test_locks_container_default_and_value() -> None:
    assert Settings.from_env({}).locks_container == "powerbi-locks"
    assert Settings.from_env({"LOCKS_CONTAINER": " app-7-locks "}).locks_container == "app-7-locks"
    assert "powerbi-locks" in str(Settings.from_env({}).describe()["locks"])


@pytest.mark.parametrize(
    "value",
    ["ab", "x" * 64, "Locks", "locks_here", "-locks", "locks-", "lo--cks", "locks/a", "lócks"],
)
def test_a_locks_container_that_is_not_a_container_name_is_named(value: str) -> None:
    """Blob storage's container-name rules: 3-63 lower-case letters, digits and single hyphens,
    starting and ending with a letter or a digit."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LOCKS_CONTAINER": value})
    assert caught.value.setting == "LOCKS_CONTAINER"
