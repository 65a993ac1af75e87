"""The one retry layer: when a failed call is tried again in process, after how long, and by when.

Design (one decision maker, one deadline carrier)
-------------------------------------------------
:class:`RetryPolicy` makes every in-process retry decision of the bundle, and
:meth:`RetryPolicy.run` is the only retry loop. It is used in two places, with the same object
(``shared.runtime`` builds one per process): the Power BI client runs each idempotent call
through it (lookups, Put Table), and :class:`~shared.engine.ingest.Ingestor` runs each Add Rows
batch through it. Everything that used to retry on its own is now one of its decisions:

- **back-off** (exponential, jitter, cap) after a transient failure without ``Retry-After``;
- **Retry-After**: a refused Add Rows (429, 503 with ``Retry-After``) is not slept on here but
  handed to the governor's per-dataset pause (``pause=``), so every caller of that dataset waits
  and the next slot does the waiting; other calls sleep it. A ``Retry-After`` longer than
  ``max_retry_after`` (``POWERBI_MAX_RETRY_AFTER_SECONDS``) is never waited out in process:
  the error is raised with the service's ``retry_after``, so a queue message is redelivered, a
  blob is handed on, an HTTP caller gets 429/503 with ``Retry-After``, the CLI exits 3;
- **idempotency**: an idempotent call retries any :class:`TransientError`; Add Rows (not
  idempotent) is re-sent in place only when the failure proves nothing was stored
  (:func:`stored_nothing`: never sent, 429, 503 with ``Retry-After``), or after a 404 once the
  target was looked up again (``recover=``). An ambiguous failure (a timeout or a lost answer
  once the body was sent, a 500/502/504, a 503 without ``Retry-After``) is never re-sent in
  process: the caller counts the rows as unconfirmed and the host redelivers;
- **an expired token** (``TokenExpired``): the client has dropped the token already, so the call
  is re-sent once, at once; a second ``TokenExpired`` in the same run is final;
- **the deadline**: no wait is started that would end after it.

Every attempt, whatever its reason, counts toward ``max_attempts``.

The deadline travels one way only: a :class:`Deadline` value (a time on an injectable monotonic
clock) passed as an explicit argument from the trigger (``Ingestor.push(..., deadline=)``) to
the resolver, the governor, this policy and the client (which also cuts each request's timeouts
to what is left). There is no context variable: a coalesced delivery runs on an executor thread,
where a context variable would not follow, and an argument shows in every signature it crosses.

Host redelivery (queue ``maxDequeueCount``, blob retries and continuations) is the outer layer,
not in process, and is not decided here.

Worst case of Add Rows attempts
-------------------------------
Let ``A = max_attempts`` (6). Within one run of one batch there are at most ``A`` POSTs of it,
whatever the mix of failures (429, 503, refused connections, one token refresh, one 404 and
re-resolve). A delivery stops at the first batch whose attempts are spent, so when *every*
attempt fails retryably:

- **per queue message**, per delivery: ``A`` = 6 POSTs (a message's rows travel in one POST, which
  may carry other messages' rows too); over the host's deliveries ``maxDequeueCount x A`` =
  5 x 6 = **30** before the message moves to ``<queue>-poison``;
- **per HTTP request** (synchronous): ``A`` = **6** (envelopes are sent in order and the first
  one stopped ends the request with 429/503 and ``Retry-After``);
- **per blob invocation**: ``A`` = **6**, then the rest is handed on or the blob retried from its
  checkpoint.

In general a batch never takes more than ``A`` POSTs, so a delivery that acknowledged ``k``
batches made at most ``(k + 1) x A``. (A 400 that names rows is not a retry: the rows named are
dead-lettered and the rest sent as a new, smaller batch with its own ``A`` attempts; with a local
schema, rows the service would refuse are caught before sending.)
``tests/unit/test_retry_worst_case.py`` drives these worst cases and counts the POSTs.
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

from shared.errors import AuthError, NotFoundError, PushError, TransientError

T = TypeVar("T")

#: Statuses at which the service refused a request without processing it.
REFUSED_STATUSES = frozenset({429, 503})

#: The service's error code for a bearer token past its expiry (403 or 401): nothing was done.
TOKEN_EXPIRED = "TokenExpired"

#: Default cap on a ``Retry-After`` waited out in process (``POWERBI_MAX_RETRY_AFTER_SECONDS``).
#: Above every per-minute window (a per-minute quota frees up within 60 s) and above the HTTP
#: (200 s) and queue (240 s) time budgets, so for those triggers the deadline binds first; it
#: binds where there is no deadline (the CLI, replay: whose poison messages are leased for five
#: minutes) and for blobs (480 s budget), which hand a longer wait on to a continuation instead
#: of holding an invocation. Power BI has answered ``Retry-After: 3392`` (reference §6.1).
DEFAULT_MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class Deadline:
    """A moment, on a monotonic ``clock``, by which work must be over (a trigger's budget)."""

    at: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        """The deadline ``seconds`` from now on ``clock``."""
        return cls(clock() + seconds, clock)

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.at - self.clock()

    def allows(self, wait: float) -> bool:
        """Whether a wait of ``wait`` seconds, starting now, ends by the deadline."""
        return self.clock() + wait <= self.at


def earliest(deadlines: list[Deadline]) -> Deadline | None:
    """The first of ``deadlines`` to come (None for none)."""
    return min(deadlines, key=lambda d: d.at, default=None)


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


def stored_nothing(error: TransientError) -> bool:
    """Whether a failed Add Rows surely stored nothing: never sent, 429, 503 with Retry-After."""
    if error.status == 429 or (error.status == 503 and error.retry_after is not None):
        return True
    return not error.maybe_delivered


def expired_token(error: PushError) -> bool:
    """Whether the service refused the call only because its bearer token had expired."""
    return isinstance(error, AuthError) and error.code == TOKEN_EXPIRED


@dataclass(frozen=True)
class RetryPolicy:
    """Immutable retry settings; :meth:`run` applies them to one call (see the module doc)."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0
    #: Fraction of the back-off added at random, so that callers do not retry in lock-step.
    jitter: float = 0.25
    #: The longest ``Retry-After`` waited out in process; a longer one fails the call at once.
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
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
        """Whether ``error`` may be retried in place for a call of this kind (after a wait)."""
        if not isinstance(error, TransientError):
            return False
        return idempotent or stored_nothing(error)

    def too_long(self, retry_after: float | None) -> bool:
        """Whether the service asked for a wait longer than this policy waits in process."""
        return retry_after is not None and retry_after > self.max_retry_after

    def run(
        self,
        call: Callable[[], T],
        *,
        idempotent: bool,
        deadline: Deadline | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[PushError, float], None] | None = None,
        pause: Callable[[float], None] | None = None,
        recover: Callable[[NotFoundError], None] | None = None,
    ) -> T:
        """Call ``call`` until it succeeds, a final error, or the attempts or time run out.

        - ``deadline``: a wait that would end after it is not taken; the last error is raised
          instead (its ``retry_after`` tells the caller how long the service asked to wait).
        - ``pause(seconds)``: where the service refused the call with a ``Retry-After``, the
          wait is handed to it (the governor holds every caller of the dataset, and ``call``
          waits its turn) instead of being slept here.
        - ``recover(error)``: on a :class:`NotFoundError`, called once (it looks the target up
          again, or raises); then the call is made again. Without it a 404 is final.
        - ``on_retry(error, delay)`` is told of each retry before its wait.

        When the attempts run out on an error that would have been retried (an expired token, a
        404 to recover from), a :class:`TransientError` is raised instead, so that the rows are
        redelivered rather than refused.
        """
        attempt = 0
        refreshed = recovered = False
        while True:
            attempt += 1
            try:
                return call()
            except PushError as error:
                retry_now = (expired_token(error) and not refreshed) or (
                    isinstance(error, NotFoundError) and recover is not None and not recovered
                )
                if retry_now and attempt >= self.max_attempts:
                    raise TransientError(
                        f"{error.message} (after {attempt} attempts)",
                        maybe_delivered=False,
                        status=error.status,
                        code=error.code,
                        request_id=error.request_id,
                    ) from error
                if expired_token(error) and not refreshed:
                    # The client dropped the token when it saw the answer: the next call gets a
                    # fresh one. Nothing was done with the refused call, so it is sent again.
                    refreshed = True
                    if on_retry is not None:
                        on_retry(error, 0.0)
                    continue
                if isinstance(error, NotFoundError) and recover is not None and not recovered:
                    recovered = True
                    recover(error)
                    if on_retry is not None:
                        on_retry(error, 0.0)
                    continue
                if not self.retryable(error, idempotent=idempotent):
                    raise
                assert isinstance(error, TransientError)
                refused = error.status in REFUSED_STATUSES and error.retry_after is not None
                if refused and pause is not None:
                    assert error.retry_after is not None
                    # Every caller of the dataset holds, even if this one gives up below.
                    pause(error.retry_after)
                if attempt >= self.max_attempts or self.too_long(error.retry_after):
                    raise
                wait = self.delay(error, attempt)
                if deadline is not None and not deadline.allows(wait):
                    raise
                if on_retry is not None:
                    on_retry(error, wait)
                if not (refused and pause is not None):
                    sleep(wait)
