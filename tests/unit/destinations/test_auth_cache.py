"""What the token providers add to the libraries' own caches: a refresh that skips them after a
refusal, one request at a time, and a failed request shared for FAILURE_HOLD seconds.

The library is a fake here (it records how it was asked); the real azure-identity and MSAL are
exercised against the emulator in tests/integration/test_token_revocation.py.
"""

from __future__ import annotations

import threading

import pytest

from shared.destinations.auth import (
    EXPIRY_MARGIN,
    FAILURE_HOLD,
    Fetched,
    _LibraryProvider,
    check_token_destination,
)
from shared.errors import ConfigError, TransientError


class FakeLibrary(_LibraryProvider):
    """A library with a cache: it answers its cached token unless asked for a fresh one (or it
    has none); tokens token-1, token-2, ... are valid for an hour from the fake clock's now.
    ``down`` makes every request fail; ``stale`` makes it answer its cached token as one whose
    refresh just failed (as MSAL does past a token's refresh_on)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        super().__init__(clock=lambda: self.now)
        self.issued = 0
        self.asked: list[bool] = []  # the ``fresh`` of every request
        self.cached: Fetched | None = None
        self.down = False
        self.stale = False

    def _fetch(self, *, fresh: bool) -> Fetched:
        self.asked.append(fresh)
        if self.cached is not None and not fresh and self.stale:
            return Fetched(self.cached.token, self.cached.expires_on, stale=True)
        if self.cached is not None and not fresh and self.now < self.cached.expires_on - 300:
            return self.cached
        if self.down:
            raise TransientError("identity endpoint unreachable")
        self.issued += 1
        self.cached = Fetched(f"token-{self.issued}", self.now + 3600)
        return self.cached


def test_the_library_cache_answers_until_a_refusal_then_one_request_skips_it() -> None:
    """Calls go to the library's cache; after invalidate() exactly one request skips it, and
    its new token is what every later call gets."""
    library = FakeLibrary()
    assert [library.token() for _ in range(3)] == ["token-1"] * 3
    library.invalidate()
    assert library.token() == "token-2"
    assert library.token() == "token-2"
    assert library.asked == [False, False, False, True, False]


def test_two_refusals_before_the_next_token_make_one_fresh_request() -> None:
    """Two callers refused at once both invalidate: one fresh request serves them both."""
    library = FakeLibrary()
    library.token()
    library.invalidate()
    library.invalidate()
    assert library.token() == library.token() == "token-2"
    assert library.asked.count(True) == 1


def test_a_refusal_while_the_library_is_down_is_retried_fresh_once_it_is_back() -> None:
    """The fresh request failed: the next one (after the hold) still skips the cache."""
    library = FakeLibrary()
    library.token()
    library.invalidate()
    library.down = True
    with pytest.raises(TransientError):
        library.token()
    library.now += FAILURE_HOLD
    library.down = False
    assert library.token() == "token-2"
    assert library.asked == [False, True, True]


def test_a_failed_attempt_is_shared_for_a_moment_then_tried_again() -> None:
    """With the endpoint down and no token, callers within FAILURE_HOLD s get the same error
    without another request; after it, the next caller tries again."""
    library = FakeLibrary()
    library.down = True
    for _ in range(3):
        with pytest.raises(TransientError) as caught:
            library.token()
    assert caught.value.retry_after == FAILURE_HOLD
    assert len(library.asked) == 1
    library.now += FAILURE_HOLD
    library.down = False
    assert library.token() == "token-1"
    assert len(library.asked) == 2


def test_a_failed_refresh_is_not_tried_again_by_every_caller() -> None:
    """The library answered its cached token past its refresh_on (its refresh failed): that
    token is given for FAILURE_HOLD s without asking the library again."""
    library = FakeLibrary()
    library.token()
    library.stale = True
    assert [library.token() for _ in range(3)] == ["token-1"] * 3
    assert len(library.asked) == 2
    library.now += FAILURE_HOLD
    library.token()
    assert len(library.asked) == 3


def test_a_token_still_valid_is_used_when_the_library_gives_up_on_it() -> None:
    """MSAL treats a token as expired 5 minutes early; while the endpoint is down the last
    token is still given until EXPIRY_MARGIN s before it expires, then the error is."""
    library = FakeLibrary()
    assert library.token() == "token-1"
    library.down = True
    library.now += 3600 - 300
    assert library.token() == "token-1"
    library.now += 300 - EXPIRY_MARGIN
    with pytest.raises(TransientError):
        library.token()


def test_a_refused_token_is_never_given_again() -> None:
    """After invalidate() with the endpoint down, callers get the error, not the refused
    token, even though it has not expired."""
    library = FakeLibrary()
    library.token()
    library.invalidate()
    library.down = True
    for _ in range(2):
        with pytest.raises(TransientError):
            library.token()


def test_nobody_waits_for_a_request_while_a_usable_token_is_known() -> None:
    """One caller is inside the library (it hangs there until released); another caller
    meanwhile gets the last token at once instead of queueing behind it."""

    class SlowLibrary(FakeLibrary):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.started = threading.Event()

        def _fetch(self, *, fresh: bool) -> Fetched:
            if self.issued:  # not the first request
                self.started.set()
                assert self.release.wait(10)
            return super()._fetch(fresh=fresh)

    library = SlowLibrary()
    assert library.token() == "token-1"
    library.now += 3600 - 300  # the library refreshes now
    refreshed: list[str] = []
    refresher = threading.Thread(target=lambda: refreshed.append(library.token()))
    refresher.start()
    assert library.started.wait(10)
    assert library.token() == "token-1"  # did not wait for the refresh
    library.release.set()
    refresher.join(10)
    assert refreshed == ["token-2"] and library.token() == "token-2"


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
