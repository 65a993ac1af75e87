"""Unit tests for shared.engine.retry: Retry-After parsing, deadlines and the retry policy."""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from shared.engine.retry import Deadline, RetryPolicy, earliest, parse_retry_after
from shared.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    PushError,
    TransientError,
    ValidationError,
)
from tests.unit.fakes import FakeClock

NOW = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


class Scripted:
    """A callable that raises or returns the scripted outcomes in order and counts its calls."""

    def __init__(self, outcomes: Sequence[BaseException | str]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> str:
        outcome = self.outcomes[self.calls]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def policy(**kwargs: object) -> RetryPolicy:
    """A policy with no jitter unless the test asks for it."""
    options: dict[str, object] = {"rand": lambda: 0.0}
    options.update(kwargs)
    return RetryPolicy(**options)  # type: ignore[arg-type]


def transient(
    retry_after: float | None = None, *, status: int | None = 500, maybe_delivered: bool = False
) -> TransientError:
    return TransientError(
        "boom", retry_after=retry_after, status=status, maybe_delivered=maybe_delivered
    )


# --- parse_retry_after ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("0", 0.0), ("120", 120.0), ("1.5", 1.5), (" 7 ", 7.0), ("3392", 3392.0)],
)
def test_parse_retry_after_delta_seconds(header: str, seconds: float) -> None:
    """A delta-seconds Retry-After (surrounding blanks allowed) is that many seconds."""
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date_in_the_future() -> None:
    """An HTTP-date Retry-After 30 s after ``now`` means 30 seconds."""
    header = email.utils.format_datetime(NOW + timedelta(seconds=30), usegmt=True)

    assert parse_retry_after(header, now=NOW) == pytest.approx(30.0)


def test_parse_retry_after_http_date_right_now() -> None:
    """An HTTP-date Retry-After equal to ``now`` means no wait."""
    header = email.utils.format_datetime(NOW, usegmt=True)

    assert parse_retry_after(header, now=NOW) == 0.0


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    """An HTTP-date Retry-After in the past means retry now (0.0), never a negative wait."""
    header = email.utils.format_datetime(NOW - timedelta(hours=1), usegmt=True)

    assert parse_retry_after(header, now=NOW) == 0.0


def test_parse_retry_after_http_date_without_zone_is_utc() -> None:
    """An HTTP-date with no zone is read as UTC."""
    assert parse_retry_after("Fri, 01 Mar 2024 12:01:00", now=NOW) == pytest.approx(60.0)


@pytest.mark.parametrize(
    "header",
    ["soon", "", "   ", "-5", "-0.5", "nan", "NaN", "inf", "-inf", "Wed, 99 Foo", "12 34"],
)
def test_parse_retry_after_junk_is_none(header: str) -> None:
    """A negative, non-finite or unparseable Retry-After is None (the caller backs off)."""
    assert parse_retry_after(header, now=NOW) is None


def test_parse_retry_after_missing_is_none() -> None:
    """No Retry-After header at all is None."""
    assert parse_retry_after(None) is None


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_from_base_delay_and_caps_at_max_delay() -> None:
    """Without jitter the back-off is base_delay * 2**(attempt-1), capped at max_delay."""
    retry = policy(base_delay=0.5, max_delay=60.0, jitter=0.25, rand=lambda: 0.0)

    delays = [retry.backoff(attempt) for attempt in range(1, 11)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_full_jitter_adds_at_most_the_jitter_fraction() -> None:
    """With rand() at its maximum the back-off grows by exactly the jitter fraction."""
    retry = policy(base_delay=0.5, max_delay=60.0, jitter=0.25, rand=lambda: 1.0)

    delays = [retry.backoff(attempt) for attempt in range(1, 10)]

    assert delays == [0.625, 1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


@pytest.mark.parametrize("rand_value", [0.0, 0.3, 0.999, 1.0])
def test_backoff_jitter_is_bounded_by_rand(rand_value: float) -> None:
    """The back-off lies between the plain delay and (1 + jitter) times it, never past the cap."""
    retry = policy(base_delay=1.0, max_delay=10.0, jitter=0.5, rand=lambda: rand_value)

    for attempt in range(1, 8):
        plain = min(10.0, 2.0 ** (attempt - 1))
        delay = retry.backoff(attempt)
        assert plain <= delay <= min(10.0, plain * 1.5)
        assert delay == pytest.approx(min(10.0, plain * (1 + 0.5 * rand_value)))


def test_backoff_stays_at_max_delay_for_a_very_large_attempt_number() -> None:
    """The cap holds for any attempt number (no overflow on a long retry run)."""
    retry = policy(base_delay=0.5, max_delay=60.0)

    assert retry.backoff(2_000) == 60.0


def test_delay_prefers_retry_after_over_backoff() -> None:
    """The service's Retry-After, even 0, wins over the computed back-off."""
    retry = policy(base_delay=5.0)

    assert retry.delay(transient(retry_after=0.0), 1) == 0.0
    assert retry.delay(transient(retry_after=42.0), 3) == 42.0
    assert retry.delay(transient(), 2) == 10.0


# --- retryable --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("no"),
        ValidationError("bad row"),
        NotFoundError("gone", status=404),
        AuthError("denied", status=403),
        ConfigError("POWERBI_CLOUD", "unknown"),
        PushError("plain"),
    ],
)
@pytest.mark.parametrize("idempotent", [True, False])
def test_retryable_never_for_non_transient_errors(error: PushError, idempotent: bool) -> None:
    """Only a TransientError may be retried; permanent errors never are."""
    assert policy().retryable(error, idempotent=idempotent) is False


@pytest.mark.parametrize("status", [None, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("maybe_delivered", [False, True])
def test_retryable_always_for_transient_when_idempotent(
    status: int | None, maybe_delivered: bool
) -> None:
    """An idempotent call retries every TransientError, delivered or not."""
    error = transient(status=status, maybe_delivered=maybe_delivered)

    assert policy().retryable(error, idempotent=True) is True


@pytest.mark.parametrize("status", [None, 429, 500, 502, 503, 504])
def test_retryable_add_rows_when_never_delivered(status: int | None) -> None:
    """A non-idempotent call retries when the request surely never reached the service."""
    error = transient(status=status, maybe_delivered=False)

    assert policy().retryable(error, idempotent=False) is True


@pytest.mark.parametrize(("status", "retry_after"), [(429, None), (429, 3.0), (503, 3.0)])
def test_retryable_add_rows_when_refused(status: int, retry_after: float | None) -> None:
    """A non-idempotent call retries a 429, or a 503 with Retry-After: the service refused it
    without processing it."""
    error = transient(retry_after, status=status, maybe_delivered=True)

    assert policy().retryable(error, idempotent=False) is True


def test_add_rows_is_not_retried_after_a_503_without_retry_after() -> None:
    """A 503 with no Retry-After may come after the rows were stored: not re-sent in process."""
    error = transient(status=503, maybe_delivered=True)

    assert policy().retryable(error, idempotent=False) is False


@pytest.mark.parametrize("status", [None, 500, 502, 504])
def test_retryable_add_rows_not_after_an_ambiguous_failure(status: int | None) -> None:
    """A maybe-delivered 500/502/504 or timeout of Add Rows is handed back, not retried."""
    error = transient(status=status, maybe_delivered=True)

    assert policy().retryable(error, idempotent=False) is False


# --- run --------------------------------------------------------------------------------------


def run(
    retry: RetryPolicy,
    call: Callable[[], str],
    clock: FakeClock,
    *,
    idempotent: bool = True,
    deadline: float | None = None,
    on_retry: Callable[[PushError, float], None] | None = None,
) -> str:
    return retry.run(
        call,
        idempotent=idempotent,
        deadline=None if deadline is None else Deadline(deadline, clock),
        sleep=clock.sleep,
        on_retry=on_retry,
    )


def test_run_returns_the_value_without_waiting() -> None:
    """A call that succeeds at once is called once and its value returned, with no wait."""
    clock = FakeClock()
    call = Scripted(["ok"])

    assert run(policy(), call, clock) == "ok"
    assert call.calls == 1
    assert clock.sleeps == []


def test_run_retries_transient_errors_with_backoff() -> None:
    """Two transient failures then success: three calls, two back-off waits."""
    clock = FakeClock()
    call = Scripted([transient(), transient(), "ok"])

    assert run(policy(base_delay=0.5), call, clock) == "ok"
    assert call.calls == 3
    assert clock.sleeps == [0.5, 1.0]


def test_run_honours_retry_after() -> None:
    """The wait before a retry is the error's Retry-After when it has one."""
    clock = FakeClock()
    call = Scripted([transient(retry_after=7.0, status=429), transient(retry_after=0.0), "ok"])

    assert run(policy(base_delay=0.5), call, clock) == "ok"
    assert clock.sleeps == [7.0, 0.0]


def test_run_stops_at_max_attempts_and_reraises_the_last_error() -> None:
    """After max_attempts calls the last error is raised, after max_attempts - 1 waits."""
    clock = FakeClock()
    errors = [transient(), transient(), transient()]
    call = Scripted([*errors, "never"])

    with pytest.raises(TransientError) as caught:
        run(policy(max_attempts=3), call, clock)

    assert caught.value is errors[-1]
    assert call.calls == 3
    assert len(clock.sleeps) == 2


def test_run_with_one_attempt_never_retries() -> None:
    """max_attempts=1 means a single call and no wait."""
    clock = FakeClock()
    call = Scripted([transient(), "never"])

    with pytest.raises(TransientError):
        run(policy(max_attempts=1), call, clock)

    assert call.calls == 1
    assert clock.sleeps == []


def test_run_gives_up_instead_of_sleeping_past_the_deadline() -> None:
    """A wait that would end after the deadline is not taken; the error is raised at once."""
    clock = FakeClock(now=100.0)
    error = transient(retry_after=11.0, status=429)
    call = Scripted([error, "never"])

    with pytest.raises(TransientError) as caught:
        run(policy(), call, clock, deadline=110.0)

    assert caught.value is error
    assert caught.value.retry_after == 11.0
    assert call.calls == 1
    assert clock.sleeps == []


def test_run_takes_a_wait_that_ends_exactly_at_the_deadline() -> None:
    """A wait ending exactly at the deadline is taken; the next one, past it, is not."""
    clock = FakeClock(now=100.0)
    call = Scripted([transient(retry_after=10.0, status=429), transient(), "never"])

    with pytest.raises(TransientError):
        run(policy(base_delay=0.5), call, clock, deadline=110.0)

    assert clock.sleeps == [10.0]
    assert call.calls == 2


def test_run_tells_on_retry_of_each_error_and_delay() -> None:
    """on_retry receives every (error, delay) pair, in order, before each wait."""
    clock = FakeClock()
    first, second = transient(retry_after=3.0, status=429), transient()
    call = Scripted([first, second, "ok"])
    seen: list[tuple[PushError, float]] = []

    def on_retry(error: PushError, delay: float) -> None:
        seen.append((error, delay))
        assert len(clock.sleeps) == len(seen) - 1  # told before the wait is taken

    assert run(policy(base_delay=0.5), call, clock, on_retry=on_retry) == "ok"
    assert seen == [(first, 3.0), (second, 1.0)]
    assert clock.sleeps == [3.0, 1.0]


@pytest.mark.parametrize(
    "error",
    [PermanentError("no"), ValidationError("bad"), AuthError("denied"), NotFoundError("gone")],
)
def test_run_propagates_a_permanent_error_at_once(error: PermanentError) -> None:
    """A PermanentError is raised on the first call, with no wait and no on_retry."""
    clock = FakeClock()
    call = Scripted([error, "never"])
    seen: list[tuple[PushError, float]] = []

    with pytest.raises(PermanentError) as caught:
        run(policy(), call, clock, on_retry=lambda e, d: seen.append((e, d)))

    assert caught.value is error
    assert call.calls == 1
    assert clock.sleeps == []
    assert seen == []


def test_run_does_not_retry_foreign_exceptions() -> None:
    """An exception outside the PushError hierarchy propagates untouched."""
    clock = FakeClock()
    call = Scripted([RuntimeError("bug"), "never"])

    with pytest.raises(RuntimeError):
        run(policy(), call, clock)

    assert call.calls == 1


def test_run_add_rows_does_not_retry_an_ambiguous_500() -> None:
    """A non-idempotent call hands a maybe-delivered 500 back after one call."""
    clock = FakeClock()
    error = transient(status=500, maybe_delivered=True)
    call = Scripted([error, "never"])

    with pytest.raises(TransientError) as caught:
        run(policy(), call, clock, idempotent=False)

    assert caught.value is error
    assert call.calls == 1
    assert clock.sleeps == []


def test_run_add_rows_retries_a_429() -> None:
    """A non-idempotent call retries a 429 even after the body was sent."""
    clock = FakeClock()
    call = Scripted([transient(retry_after=2.0, status=429, maybe_delivered=True), "ok"])

    assert run(policy(), call, clock, idempotent=False) == "ok"
    assert call.calls == 2
    assert clock.sleeps == [2.0]


def test_run_add_rows_retry_stops_at_an_ambiguous_failure() -> None:
    """A non-idempotent call retries a refusal, then stops at a later ambiguous timeout."""
    clock = FakeClock()
    ambiguous = transient(status=None, maybe_delivered=True)
    call = Scripted([transient(0.5, status=503), ambiguous, "never"])

    with pytest.raises(TransientError) as caught:
        run(policy(base_delay=0.5), call, clock, idempotent=False)

    assert caught.value is ambiguous
    assert call.calls == 2
    assert clock.sleeps == [0.5]


def test_policy_is_immutable() -> None:
    """A RetryPolicy cannot be changed after it is built."""
    import dataclasses

    retry = policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.max_attempts = 99  # type: ignore[misc]


# --- Deadline ---------------------------------------------------------------------------------


def test_deadline_counts_on_its_own_clock() -> None:
    """A deadline made ``after`` 10 s has 10 s left, allows a 10 s wait but not 10.1 s, and
    moves with its clock."""
    clock = FakeClock(now=50.0)
    deadline = Deadline.after(10.0, clock)

    assert (deadline.at, deadline.left()) == (60.0, 10.0)
    assert deadline.allows(10.0) and not deadline.allows(10.1)
    clock.sleep(4.0)
    assert deadline.left() == 6.0 and not deadline.allows(6.5)


def test_earliest_deadline() -> None:
    """The first deadline to come wins; none gives None."""
    clock = FakeClock()
    assert earliest([Deadline(5.0, clock), Deadline(3.0, clock), Deadline(9.0, clock)]) == Deadline(
        3.0, clock
    )
    assert earliest([]) is None


# --- the Retry-After cap ------------------------------------------------------------------------


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_retry_after_over_the_cap_is_not_waited_without_a_deadline(idempotent: bool) -> None:
    """With no deadline (the CLI), Retry-After: 3600 fails the call at once with the service's
    retry_after instead of sleeping an hour."""
    clock = FakeClock()
    error = transient(retry_after=3600.0, status=429)
    call = Scripted([error, "never"])

    with pytest.raises(TransientError) as caught:
        run(policy(max_retry_after=300.0), call, clock, idempotent=idempotent)

    assert caught.value is error and caught.value.retry_after == 3600.0
    assert call.calls == 1
    assert clock.sleeps == []


def test_a_retry_after_at_the_cap_is_waited() -> None:
    """The cap itself is still waited out (only a longer wait fails the call)."""
    clock = FakeClock()
    call = Scripted([transient(retry_after=300.0, status=429), "ok"])

    assert run(policy(max_retry_after=300.0), call, clock) == "ok"
    assert clock.sleeps == [300.0]


def test_the_cap_holds_within_a_longer_deadline() -> None:
    """A deadline far away does not lift the cap."""
    clock = FakeClock()
    call = Scripted([transient(retry_after=301.0, status=503), "never"])

    with pytest.raises(TransientError):
        run(policy(max_retry_after=300.0), call, clock, deadline=10_000.0)

    assert clock.sleeps == []


# --- the governor's pause -----------------------------------------------------------------------


def test_a_refusal_with_retry_after_is_handed_to_pause_not_slept() -> None:
    """With ``pause``, a 429/503's Retry-After goes to it (the governor holds every caller of
    the dataset, and the next call waits its turn there); nothing is slept here."""
    clock = FakeClock()
    paused: list[float] = []
    call = Scripted([transient(retry_after=7.0, status=429), transient(), "ok"])

    result = policy(base_delay=0.5).run(
        call, idempotent=False, sleep=clock.sleep, pause=paused.append
    )

    assert result == "ok"
    assert paused == [7.0]
    assert clock.sleeps == [1.0]  # the back-off of the second retry, no Retry-After there


def test_a_retry_after_over_the_cap_still_pauses_the_dataset() -> None:
    """Over the cap the call fails, but the pause is recorded first, so that other callers of
    the dataset fail fast too instead of meeting the same 429."""
    clock = FakeClock()
    paused: list[float] = []
    call = Scripted([transient(retry_after=900.0, status=429), "never"])

    with pytest.raises(TransientError):
        policy(max_retry_after=300.0).run(
            call, idempotent=False, sleep=clock.sleep, pause=paused.append
        )

    assert paused == [900.0] and call.calls == 1 and clock.sleeps == []


# --- an expired token -----------------------------------------------------------------------------


def expired() -> AuthError:
    return AuthError("token expired", status=403, code="TokenExpired")


@pytest.mark.parametrize("idempotent", [True, False])
def test_an_expired_token_is_re_sent_once_at_once(idempotent: bool) -> None:
    """TokenExpired: the call is sent again once, with no wait (the client dropped the token)."""
    clock = FakeClock()
    call = Scripted([expired(), "ok"])

    assert run(policy(), call, clock, idempotent=idempotent) == "ok"
    assert call.calls == 2 and clock.sleeps == []


def test_a_second_expired_token_is_final() -> None:
    """A fresh token refused too is an AuthError for the caller, after two calls."""
    clock = FakeClock()
    second = expired()
    call = Scripted([expired(), second, "never"])

    with pytest.raises(AuthError) as caught:
        run(policy(), call, clock, idempotent=False)

    assert caught.value is second and call.calls == 2


def test_the_token_re_send_counts_within_max_attempts() -> None:
    """The re-send after an expired token is one of the policy's attempts; when it would be
    the one too many, the caller gets a TransientError (rows redelivered, not refused)."""
    clock = FakeClock()
    call = Scripted([transient(0.0, status=429), expired(), "never"])

    with pytest.raises(TransientError) as caught:
        run(policy(max_attempts=2), call, clock, idempotent=False)

    assert call.calls == 2
    assert caught.value.code == "TokenExpired" and not caught.value.maybe_delivered


# --- a 404 and the target looked up again -----------------------------------------------------


def test_a_404_is_recovered_once_then_re_sent() -> None:
    """With ``recover``, a 404 calls it once, then the call is made again."""
    clock = FakeClock()
    recovered: list[NotFoundError] = []
    gone = NotFoundError("no dataset", status=404)
    call = Scripted([gone, "ok"])

    result = policy().run(call, idempotent=False, sleep=clock.sleep, recover=recovered.append)

    assert result == "ok" and recovered == [gone] and call.calls == 2 and clock.sleeps == []


def test_a_second_404_is_final() -> None:
    """After one recovery a 404 again is the caller's NotFoundError (rows dead-lettered)."""
    clock = FakeClock()
    recovered: list[NotFoundError] = []
    second = NotFoundError("still no dataset", status=404)
    call = Scripted([NotFoundError("no dataset", status=404), second, "never"])

    with pytest.raises(NotFoundError) as caught:
        policy().run(call, idempotent=False, sleep=clock.sleep, recover=recovered.append)

    assert caught.value is second and len(recovered) == 1 and call.calls == 2


def test_without_recover_a_404_is_final_at_once() -> None:
    """A 404 with no way to look the target up again is not retried."""
    clock = FakeClock()
    call = Scripted([NotFoundError("no dataset", status=404), "never"])

    with pytest.raises(NotFoundError):
        run(policy(), call, clock, idempotent=True)

    assert call.calls == 1


def test_a_failed_recovery_is_the_callers_error() -> None:
    """When looking the target up again fails (no definition to create it), that error is
    raised and the call is not made again."""
    clock = FakeClock()
    call = Scripted([NotFoundError("no dataset", status=404), "never"])

    def recover(error: NotFoundError) -> None:
        raise NotFoundError("no definition either")

    with pytest.raises(NotFoundError, match="no definition either"):
        policy().run(call, idempotent=False, sleep=clock.sleep, recover=recover)

    assert call.calls == 1
