"""Token caching: one token reused until 5 minutes before it expires, dropped on demand."""

from __future__ import annotations

import pytest

from shared.destinations.auth import (
    EXPIRY_MARGIN,
    FAILURE_HOLD,
    REFRESH_WINDOW,
    _CachedProvider,
    check_token_destination,
)
from shared.errors import ConfigError, TransientError


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


class FlakyProvider(CountingProvider):
    """A CountingProvider whose endpoint can be taken down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.attempts = 0

    def _acquire(self) -> tuple[str, float]:
        self.attempts += 1
        if self.down:
            raise TransientError("managed identity endpoint unreachable")
        return super()._acquire()


def test_a_failed_attempt_is_shared_for_a_moment_then_tried_again() -> None:
    """With the endpoint down and no token, callers within FAILURE_HOLD s get the same error
    without another attempt; after it, the next caller tries again."""
    provider = FlakyProvider()
    provider.down = True
    for _ in range(3):
        with pytest.raises(TransientError):
            provider.token()
    assert provider.attempts == 1
    provider.now += FAILURE_HOLD
    provider.down = False
    assert provider.token() == "token-1"
    assert provider.attempts == 2


def test_a_token_still_valid_is_used_while_its_refresh_fails() -> None:
    """In the refresh window with the endpoint down, the cached token (not yet expired) is
    still given; once it is about to expire, the error is."""
    provider = FlakyProvider()
    assert provider.token() == "token-1"
    provider.down = True
    provider.now += 3600 - REFRESH_WINDOW
    assert provider.token() == "token-1"
    provider.now += REFRESH_WINDOW - EXPIRY_MARGIN
    with pytest.raises(TransientError):
        provider.token()


def test_nobody_waits_for_a_refresh_while_a_usable_token_is_cached() -> None:
    """One caller refreshes (here it hangs until released); another caller meanwhile gets the
    cached token at once instead of queueing behind the refresh."""
    import threading

    class SlowProvider(CountingProvider):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.started = threading.Event()

        def _acquire(self) -> tuple[str, float]:
            if self.issued:  # the refresh, not the first fetch
                self.started.set()
                assert self.release.wait(10)
            return super()._acquire()

    provider = SlowProvider()
    assert provider.token() == "token-1"
    provider.now += 3600 - REFRESH_WINDOW
    refreshed: list[str] = []
    refresher = threading.Thread(target=lambda: refreshed.append(provider.token()))
    refresher.start()
    assert provider.started.wait(10)
    assert provider.token() == "token-1"  # did not wait for the refresh
    provider.release.set()
    refresher.join(10)
    assert refreshed == ["token-2"] and provider.token() == "token-2"
