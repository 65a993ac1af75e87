"""Token caching: one token reused until 5 minutes before it expires, dropped on demand."""

from __future__ import annotations

import pytest

from shared.auth import REFRESH_WINDOW, _CachedProvider, check_token_destination
from shared.errors import ConfigError


class CountingProvider(_CachedProvider):
    """Issues token-1, token-2, ... each valid for an hour from the fake clock's now."""

    def __init__(self) -> None:
        self.now = 1_000.0
        super().__init__(clock=lambda: self.now)
        self.issued = 0

    def _acquire(self) -> tuple[str, float]:
        self.issued += 1
        return f"token-{self.issued}", self.now + 3600


def test_token_is_reused_until_the_refresh_window() -> None:
    """The cached token serves every call until 300 s before expiry, then a new one is got."""
    provider = CountingProvider()
    assert provider.token() == "token-1"
    provider.now += 3600 - REFRESH_WINDOW - 1
    assert provider.token() == "token-1"
    provider.now += 1
    assert provider.token() == "token-2"
    assert provider.issued == 2


def test_invalidate_forces_a_new_token() -> None:
    """After invalidate() (a TokenExpired answer) the next call fetches a fresh token."""
    provider = CountingProvider()
    provider.token()
    provider.invalidate()
    assert provider.token() == "token-2"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.powerbi.com", True),
        ("http://127.0.0.1:5300", True),
        ("http://localhost:5300", True),
        ("http://[::1]:5300", True),
        ("http://api.powerbi.com", False),
        ("http://10.0.0.5", False),
        ("http://localhost.example.com", False),
    ],
)
def test_bearer_tokens_go_only_to_https_or_loopback(url: str, allowed: bool) -> None:
    """Plain http is refused for any host but a loopback one."""
    if allowed:
        check_token_destination(url)
    else:
        with pytest.raises(ConfigError):
            check_token_destination(url)
