"""Retry policy: when to try a failed call again, and after how long.

One immutable object decides for every call (modelled on azure-core's ``RetryPolicy`` and
urllib3's ``Retry``): honour ``Retry-After`` when the service sends one, otherwise exponential
back-off with jitter and a cap, and never past the caller's deadline (a trigger passes what is
left of its own time budget).

Add Rows is not idempotent. It is retried automatically only where a retry cannot duplicate
rows: the request never reached the service, or the service refused it (429, 503). After an
ambiguous failure (a timeout or a lost answer once the body was sent, or a 500/502/504) the
error is handed back to the caller, which decides whether to re-send and count the rows as
possible duplicates.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from shared.errors import PushError, TransientError

T = TypeVar("T")

#: Statuses at which the service refused a request without processing it.
REFUSED_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None for a missing, negative or unparseable value (the caller then backs off on its
    own). A date in the past means "now" (0.0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Immutable retry settings; :meth:`run` applies them to one call."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0
    #: Fraction of the back-off added at random, so that callers do not retry in lock-step.
    jitter: float = 0.25
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def backoff(self, attempt: int) -> float:
        """Back-off before retry number ``attempt`` (1 for the first retry), capped."""
        # The exponent is capped so that a huge attempt number cannot overflow a float.
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))
        return min(self.max_delay, delay * (1 + self.jitter * self.rand()))

    def delay(self, error: TransientError, attempt: int) -> float:
        """The service's ``Retry-After`` when given, else the back-off."""
        if error.retry_after is not None:
            return error.retry_after
        return self.backoff(attempt)

    def retryable(self, error: PushError, *, idempotent: bool) -> bool:
        """Whether ``error`` may be retried in place for a call of this kind."""
        if not isinstance(error, TransientError):
            return False
        if idempotent:
            return True
        return not error.maybe_delivered or error.status in REFUSED_STATUSES

    def run(
        self,
        call: Callable[[], T],
        *,
        idempotent: bool,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[TransientError, float], None] | None = None,
    ) -> T:
        """Call ``call`` until it succeeds, a permanent error, or the attempts or time run out.

        ``deadline`` is a ``clock()`` value: a wait that would end after it is not taken and
        the last error is raised instead (its ``retry_after`` tells the caller how long the
        service asked to wait). ``on_retry(error, delay)`` is told of each wait.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except PushError as error:
                if not self.retryable(error, idempotent=idempotent):
                    raise
                assert isinstance(error, TransientError)
                if attempt >= self.max_attempts:
                    raise
                wait = self.delay(error, attempt)
                if deadline is not None and clock() + wait > deadline:
                    raise
                if on_retry is not None:
                    on_retry(error, wait)
                sleep(wait)
