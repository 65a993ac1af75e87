"""Unit tests of the emulator's value rules, quota book and fault plan (no server)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from emulator import limits
from emulator.clock import ScaledClock
from emulator.faults import KINDS, FaultConfigError, FaultPlan
from emulator.quotas import QuotaBook, retry_after_header
from emulator.values import (
    DECIMAL_LIMIT,
    INT64_MAX,
    INT64_MIN,
    ValueRejected,
    canonical_type,
    coerce,
    utf16_length,
)

# -- type names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("int", "Int64"),
        ("int64", "Int64"),
        ("Int64", "Int64"),
        ("INT64", "Int64"),
        ("bool", "Boolean"),
        ("Boolean", "Boolean"),
        ("BOOLEAN", "Boolean"),
        ("string", "String"),
        ("String", "String"),
        ("DateTime", "DateTime"),
        ("dateTime", "DateTime"),
        ("datetime", "DateTime"),
        ("Double", "Double"),
        ("double", "Double"),
        ("Decimal", "Decimal"),
        ("decimal", "Decimal"),
    ],
)
def test_type_names_match_case_insensitively(name: str, canonical: str) -> None:
    """Type names and the int/bool aliases are matched case-insensitively."""
    assert canonical_type(name) == canonical


@pytest.mark.parametrize("name", ["Int32", "date", "Date", "", "   ", "float", "Single", None, 64])
def test_unknown_type_names_have_no_canonical_type(name: object) -> None:
    """A type the service does not have (or a non-string) has no canonical name."""
    assert canonical_type(name) is None


@pytest.mark.parametrize(
    "type_name", ["Int64", "Double", "Decimal", "Boolean", "DateTime", "String"]
)
def test_null_is_stored_as_null_for_every_type(type_name: str) -> None:
    """A JSON null is stored as null whatever the column type."""
    assert coerce(type_name, None) is None


def rejects(type_name: str, value: Any) -> bool:
    """Whether ``coerce`` refuses ``value`` with ValueRejected (any other error propagates)."""
    try:
        coerce(type_name, value)
    except ValueRejected:
        return True
    return False


# -- Int64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (0, 0),
        (INT64_MAX - 1, INT64_MAX - 1),
        (INT64_MIN + 1, INT64_MIN + 1),
        (5.0, 5),
        (-3.0, -3),
        ("42", 42),
        (" -7 ", -7),
        (str(INT64_MAX - 1), INT64_MAX - 1),
    ],
)
def test_int64_accepts_values_inside_the_range(value: Any, stored: int) -> None:
    """Int64 accepts MaxValue-1, MinValue+1, integral floats and numeric strings."""
    result = coerce("Int64", value)
    assert result == stored
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        INT64_MAX,
        INT64_MIN,
        2**63,
        -(2**63) - 1,
        2**100,
        str(INT64_MAX),
        True,
        False,
        1.5,
        math.nan,
        math.inf,
        "1.5",
        "twelve",
        "",
        [1],
        {"v": 1},
    ],
)
def test_int64_refuses_extremes_booleans_and_non_integers(value: Any) -> None:
    """Int64.MaxValue, Int64.MinValue, beyond them, booleans and non-integers are refused."""
    assert rejects("Int64", value)


# -- Double -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [(1e308, 1e308), (-1e308, -1e308), (0, 0.0), (3, 3.0), (1.25, 1.25), ("2.5", 2.5)],
)
def test_double_accepts_finite_values_below_max(value: Any, stored: float) -> None:
    """Double accepts finite values short of Double.MaxValue, numbers and numeric strings."""
    result = coerce("Double", value)
    assert result == stored
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        "NaN",
        "inf",
        "-Infinity",
        True,
        "abc",
        [1.0],
    ],
)
def test_double_refuses_nan_infinities_and_max(value: Any) -> None:
    """NaN, +/-Infinity, Double.MaxValue and Double.MinValue are refused."""
    assert rejects("Double", value)


def test_double_refuses_an_integer_too_large_for_a_double() -> None:
    """An integer beyond the double range (JSON allows 1e400 written out) is a 400, not a crash."""
    assert rejects("Double", 10**400)
    assert rejects("Double", -(10**400))


# -- Decimal ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (1.23456, 1.2346),
        (1.23454, 1.2345),
        ("-2.00004", -2.0),
        ("0.00006", 0.0001),
        (12, 12.0),
        ("3.1", 3.1),
        ("123456789012345678901234", 1.23456789012345678901234e23),
        ("-123456789012345678901234", -1.23456789012345678901234e23),
    ],
)
def test_decimal_rounds_to_four_places(value: Any, stored: float) -> None:
    """Decimal (precision 28, scale 4) keeps four decimal places."""
    assert coerce("Decimal", value) == stored


@pytest.mark.parametrize(
    "value",
    [
        DECIMAL_LIMIT,
        str(10**24),
        -(10**24),
        str(-(10**24)),
        10**25,
        1e24,
        "999999999999999999999999.99999",
        "NaN",
        "Infinity",
        "abc",
        True,
        [1],
    ],
)
def test_decimal_refuses_values_of_25_integer_digits(value: Any) -> None:
    """Decimal refuses |value| >= 10**24 (more than 24 integer digits), non-numbers and booleans."""
    assert rejects("Decimal", value)


def test_decimal_accepts_the_largest_24_digit_value() -> None:
    """10**24 - 1 has 24 integer digits, so it fits a Decimal(28, 4)."""
    assert not rejects("Decimal", str(10**24 - 1))
    assert not rejects("Decimal", str(-(10**24) + 1))


# -- Boolean ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [(True, True), (False, False), ("true", True), ("False", False), (" TRUE ", True)],
)
def test_boolean_accepts_true_and_false(value: Any, stored: bool) -> None:
    """Boolean is true or false."""
    assert coerce("Boolean", value) is stored


@pytest.mark.parametrize("value", [1, 0, 1.0, "yes", "1", "", [True]])
def test_boolean_refuses_anything_else(value: Any) -> None:
    """Numbers and other strings are not booleans."""
    assert rejects("Boolean", value)


# -- DateTime ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("2024-01-01T12:00:00Z", "2024-01-01T12:00:00.000Z"),
        ("2024-01-01T12:00:00+02:00", "2024-01-01T10:00:00.000Z"),
        ("2024-01-01T01:30:00-05:30", "2024-01-01T07:00:00.000Z"),
        ("2024-01-01T01:00:00+02:00", "2023-12-31T23:00:00.000Z"),
        ("2024-01-01T12:34:56", "2024-01-01T12:34:56.000"),
        ("2024-01-01 12:34:56", "2024-01-01T12:34:56.000"),
        ("2024-01-01", "2024-01-01T00:00:00.000"),
        ("07/30/2014", "2014-07-30T00:00:00.000"),
        ("7/3/2014", "2014-07-03T00:00:00.000"),
        ("07/30/2014 13:45:10", "2014-07-30T13:45:10.000"),
        ("07/30/2014 13:45", "2014-07-30T13:45:00.000"),
        ("  2024-01-01T12:00:00Z  ", "2024-01-01T12:00:00.000Z"),
    ],
)
def test_datetime_accepts_iso_8601_and_us_dates(value: str, stored: str) -> None:
    """ISO 8601 (offsets converted to UTC with a Z suffix), date-only and MM/dd/yyyy are read."""
    assert coerce("DateTime", value) == stored


@pytest.mark.parametrize(
    "value",
    ["garbage", "", "2024-13-01", "2024-02-30", "13/30/2014", "07/30/14", "30.07.2014", "T12:00"],
)
def test_datetime_refuses_unreadable_strings(value: str) -> None:
    """A string that is not a date is refused."""
    assert rejects("DateTime", value)


@pytest.mark.parametrize("value", [1_700_000_000, 1.5, True, ["2024-01-01"]])
def test_datetime_refuses_non_strings(value: Any) -> None:
    """Numbers (epoch seconds) and other non-strings are not DateTime values."""
    assert rejects("DateTime", value)


def quantised(naive: datetime) -> str:
    """The rule: round the day fraction to a whole number of 1/300 s, shown to the nearest ms."""
    midnight = naive.replace(hour=0, minute=0, second=0, microsecond=0)
    micros = (naive - midnight) // timedelta(microseconds=1)
    quantum_ms = Fraction(1000, 300)
    ticks = round(Fraction(micros, 1000) / quantum_ms)
    shown_ms = round(ticks * quantum_ms)  # fractions are 0, 1/3 or 2/3 ms: never a tie
    return (midnight + timedelta(milliseconds=shown_ms)).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-01T00:00:00.001",
        "2024-01-01T00:00:00.002",
        "2024-01-01T00:00:00.003",
        "2024-01-01T00:00:00.005",
        "2024-01-01T00:00:00.006",
        "2024-01-01T00:00:00.008",
        "2024-01-01T00:00:00.010",
        "2024-01-01T00:00:00.333",
        "2024-01-01T00:00:00.334",
        "2024-01-01T00:00:00.500",
        "2024-01-01T00:00:00.665",
        "2024-01-01T12:34:56.789",
        "2024-01-01T08:00:00.996",
        "2024-01-01T23:59:59.999",
    ],
)
def test_datetime_is_quantised_to_a_300th_of_a_second(value: str) -> None:
    """Times of day are rounded to whole multiples of 1/300 s (3.33 ms)."""
    assert coerce("DateTime", value) == quantised(datetime.fromisoformat(value))


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("2024-01-01T00:00:00.001", "2024-01-01T00:00:00.000"),
        ("2024-01-01T00:00:00.002", "2024-01-01T00:00:00.003"),
        ("2024-01-01T00:00:00.005", "2024-01-01T00:00:00.007"),
        ("2024-01-01T23:59:59.999", "2024-01-02T00:00:00.000"),
        ("2024-12-31T23:59:59.999Z", "2025-01-01T00:00:00.000Z"),
        ("2024-02-28T23:59:59.9995", "2024-02-29T00:00:00.000"),
    ],
)
def test_datetime_quantisation_examples(value: str, stored: str) -> None:
    """Worked examples of the 1/300 s rule, including rounding up into the next day."""
    assert quantised(datetime.fromisoformat(value.removesuffix("Z"))) == stored.removesuffix("Z")
    assert coerce("DateTime", value) == stored


# -- String -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "x" * limits.MAX_STRING_LENGTH, "😀" * 2000, "é" * 4000, "x" * 3998 + "😀"],
)
def test_string_of_4000_utf16_units_passes(value: str) -> None:
    """A string of at most 4,000 UTF-16 code units is stored as sent."""
    assert utf16_length(value) <= limits.MAX_STRING_LENGTH
    assert coerce("String", value) == value


@pytest.mark.parametrize("value", ["x" * 4001, "😀" * 2001, "x" * 3999 + "😀", "😀" * 4000])
def test_string_over_4000_utf16_units_is_refused(value: str) -> None:
    """A character outside the BMP counts twice, as .NET counts string length."""
    assert utf16_length(value) > limits.MAX_STRING_LENGTH
    assert rejects("String", value)


@pytest.mark.parametrize(
    ("value", "stored"), [(5, "5"), (-12, "-12"), (1.5, "1.5"), (True, "True"), (False, "False")]
)
def test_numbers_and_booleans_become_strings(value: Any, stored: str) -> None:
    """A number or boolean sent to a String column is stored as its text."""
    assert coerce("String", value) == stored


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}])
def test_string_refuses_arrays_and_objects(value: Any) -> None:
    """Arrays and objects are not strings."""
    assert rejects("String", value)


# -- quotas -----------------------------------------------------------------------------------


class FakeTime:
    """A monotonic time source the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def book(fake_time: FakeTime) -> QuotaBook:
    return QuotaBook(ScaledClock(base=fake_time))


def test_clock_follows_its_base_and_advances(fake_time: FakeTime) -> None:
    """The quota clock counts base seconds times the scale, plus any advance."""
    clock = ScaledClock(scale=60, base=fake_time)
    assert clock.now() == 0
    fake_time.now += 2
    assert clock.now() == 120
    clock.advance(30)
    assert clock.now() == 150
    assert clock.to_real_seconds(120) == 2
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        ScaledClock(scale=0, base=fake_time)


def test_120_posts_in_a_minute_fit_and_the_121st_is_throttled(
    book: QuotaBook, fake_time: FakeTime
) -> None:
    """At most 120 POSTs per rolling minute; Retry-After is when the oldest leaves the minute."""
    for _ in range(limits.MAX_POSTS_PER_MINUTE):
        assert book.check("d", 1, large_table=False) is None
        book.record("d", 1)
        fake_time.now += 0.25  # 120 posts over 30 s
    throttle = book.check("d", 1, large_table=False)
    assert throttle is not None
    assert throttle.reason == "posts_per_minute"
    # The oldest post was at 0 s; now is 30 s: it leaves the minute in 30 s.
    assert throttle.retry_after == pytest.approx(30.0)
    assert book.check("other", 1, large_table=False) is None
    fake_time.now += 29.9
    assert book.check("d", 1, large_table=False) is not None
    fake_time.now += 0.1
    assert book.check("d", 1, large_table=False) is None


def test_posts_fit_again_after_the_clock_advances_a_minute(book: QuotaBook) -> None:
    """Advancing the quota clock 60 s empties the minute window."""
    for _ in range(limits.MAX_POSTS_PER_MINUTE):
        book.record("d", 1)
    throttle = book.check("d", 1, large_table=False)
    assert throttle is not None
    assert throttle.retry_after == pytest.approx(60.0)
    book.clock.advance(60)
    assert book.check("d", 1, large_table=False) is None
    assert book.usage("d")["postsLastMinute"] == 0
    assert book.usage("d")["postsLastHour"] == limits.MAX_POSTS_PER_MINUTE


def test_rows_per_hour_boundary_is_exactly_one_million(book: QuotaBook) -> None:
    """Up to 1,000,000 rows per rolling hour are accepted; one more is throttled."""
    book.record("d", 990_000)
    assert book.check("d", 10_000, large_table=False) is None
    throttle = book.check("d", 10_001, large_table=False)
    assert throttle is not None
    assert throttle.reason == "rows_per_hour"
    book.record("d", 10_000)
    assert book.usage("d")["rowsLastHour"] == limits.MAX_ROWS_PER_HOUR
    assert book.check("d", 1, large_table=False) is not None


def test_rows_per_hour_retry_after_waits_for_enough_old_rows(
    book: QuotaBook, fake_time: FakeTime
) -> None:
    """Retry-After is when enough of the oldest rows have left the hour for the new ones to fit."""
    book.record("d", 1)  # t = 0
    fake_time.now += 10
    book.record("d", 600_000)  # t = 10
    fake_time.now += 10
    book.record("d", 399_999)  # t = 20
    fake_time.now += 10  # now = 30, 1,000,000 rows in the hour
    one = book.check("d", 1, large_table=False)
    assert one is not None and one.reason == "rows_per_hour"
    assert one.retry_after == pytest.approx(3600 - 30)  # the single row at t = 0 frees room
    two = book.check("d", 2, large_table=False)
    assert two is not None
    assert two.retry_after == pytest.approx(10 + 3600 - 30)  # needs the rows of t = 10 too
    fake_time.now += 3600 - 30
    assert book.check("d", 1, large_table=False) is None
    assert book.check("d", 2, large_table=False) is not None
    fake_time.now += 10
    assert book.check("d", 600_001, large_table=False) is None


def test_large_table_allows_120_posts_per_hour(book: QuotaBook, fake_time: FakeTime) -> None:
    """With a table of 250,000 rows or more, at most 120 POSTs per rolling hour are allowed."""
    for _ in range(limits.MAX_POSTS_PER_HOUR_LARGE_TABLE):
        assert book.check("d", 1, large_table=True) is None
        book.record("d", 1)
        fake_time.now += 10  # 120 posts over 20 minutes: never 120 in one minute
    throttle = book.check("d", 1, large_table=True)
    assert throttle is not None
    assert throttle.reason == "posts_per_hour_large_table"
    # Oldest post at 0 s, now 1,200 s: it leaves the hour in 2,400 s.
    assert throttle.retry_after == pytest.approx(2400.0)
    assert book.check("d", 1, large_table=False) is None
    fake_time.now += 2399
    assert book.check("d", 1, large_table=True) is not None
    fake_time.now += 1
    assert book.check("d", 1, large_table=True) is None


def test_at_most_five_posts_may_be_pending(book: QuotaBook) -> None:
    """A sixth concurrent POST is refused until one of the five ends."""
    for _ in range(limits.MAX_PENDING_POSTS):
        assert book.begin("d") is None
    throttle = book.begin("d")
    assert throttle is not None
    assert throttle.reason == "pending"
    assert throttle.retry_after >= 1
    assert book.usage("d")["pending"] == limits.MAX_PENDING_POSTS
    assert book.begin("other") is None
    book.end("d")
    assert book.begin("d") is None
    for _ in range(limits.MAX_PENDING_POSTS):
        book.end("d")
    assert book.usage("d")["pending"] == 0


def test_forget_drops_a_datasets_windows(book: QuotaBook) -> None:
    """A deleted dataset starts again with empty windows."""
    for _ in range(limits.MAX_POSTS_PER_MINUTE):
        book.record("d", 10)
    book.forget("d")
    assert book.check("d", 1, large_table=True) is None
    assert book.usage("d") == {
        "postsLastMinute": 0,
        "postsLastHour": 0,
        "rowsLastHour": 0,
        "pending": 0,
    }


@pytest.mark.parametrize(
    ("scale", "emulated", "header"),
    [
        (1, 30.0, "30"),
        (1, 0.2, "1"),
        (1, 0.0, "1"),
        (1, -5.0, "1"),
        (1, 59.01, "60"),
        (60, 125, "3"),
    ],
)
def test_retry_after_header_is_whole_real_seconds(
    fake_time: FakeTime, scale: float, emulated: float, header: str
) -> None:
    """Retry-After is rounded up to whole real seconds and is never below 1."""
    assert retry_after_header(ScaledClock(scale=scale, base=fake_time), emulated) == header


# -- faults -----------------------------------------------------------------------------------


def test_fault_script_is_consumed_before_the_rates() -> None:
    """Scripted entries answer the first requests, one each; then the rates apply."""
    plan = FaultPlan(error_500=1.0, script=["ok", "throttle", "drop", "accept_then_fail"])
    draws = [plan.draw() for _ in range(6)]
    assert draws == [None, "throttle", "drop", "accept_then_fail", "error_500", "error_500"]
    assert plan.script == []


def test_fault_rates_may_not_add_up_to_more_than_one() -> None:
    """The fault rates share one roll, so together they may not exceed 1."""
    with pytest.raises(FaultConfigError, match="add up"):
        FaultPlan(throttle=0.6, error_500=0.5)
    FaultPlan(throttle=0.5, drop=0.5)
    FaultPlan(throttle=1.0, latency_rate=1.0)  # latency is drawn separately


def test_fault_rates_adding_up_to_exactly_one_are_accepted() -> None:
    """Rates whose decimal sum is exactly 1 are accepted despite float rounding in the sum."""
    FaultPlan(throttle=0.33, error_500=0.56, error_503=0.11)


@pytest.mark.parametrize(
    "settings",
    [
        {"throttle": 1.5},
        {"drop": -0.1},
        {"error_503": "0.5"},
        {"latency_rate": 2},
        {"latency_ms": -1},
        {"retry_after": 1.5},
        {"retry_after": -1},
        {"script": ["ok", "explode"]},
    ],
)
def test_fault_plan_refuses_nonsense(settings: dict[str, Any]) -> None:
    """Rates outside [0, 1], negative delays and unknown script entries are refused."""
    with pytest.raises(FaultConfigError):
        FaultPlan.from_json(settings)


@pytest.mark.parametrize(
    "body",
    [{"throttle": 0.1, "thrrottle": 0.2}, {"_random": 1}, {"latency": 100}, [], "throttle"],
)
def test_fault_plan_refuses_unknown_keys(body: Any) -> None:
    """The admin API's plan must be an object of known settings only."""
    with pytest.raises(FaultConfigError):
        FaultPlan.from_json(body)


def test_fault_plan_json_round_trip() -> None:
    """The plan as shown by the admin API can be sent back unchanged."""
    body = {"throttle": 0.25, "latency_ms": 50, "latency_rate": 0.5, "seed": 7, "script": ["ok"]}
    plan = FaultPlan.from_json(body)
    shown = plan.to_json()
    assert {k: shown[k] for k in body} == body
    assert FaultPlan.from_json(shown).to_json() == shown


def test_seeded_fault_draws_are_reproducible() -> None:
    """Two plans with the same seed and rates draw the same faults in the same order."""
    settings: dict[str, Any] = {
        "throttle": 0.2,
        "error_500": 0.1,
        "error_503": 0.1,
        "drop": 0.1,
        "accept_then_fail": 0.1,
        "latency_ms": 5,
        "latency_rate": 0.5,
        "seed": 1234,
    }
    first, second = FaultPlan.from_json(settings), FaultPlan.from_json(settings)
    draws_a = [(first.draw_latency(), first.draw()) for _ in range(2_000)]
    draws_b = [(second.draw_latency(), second.draw()) for _ in range(2_000)]
    assert draws_a == draws_b
    other = FaultPlan.from_json({**settings, "seed": 4321})
    assert [(other.draw_latency(), other.draw()) for _ in range(2_000)] != draws_a
    counts = Counter(fault for _, fault in draws_a)
    assert set(counts) == {*KINDS, None}
    assert 300 <= counts["throttle"] <= 500  # 20 % of 2,000, seeded so never flaky
    assert 800 <= counts[None] <= 1_200


def test_latency_and_scope_of_a_fault_plan() -> None:
    """Latency applies at its rate; plans cover Post Rows unless all_operations is set."""
    assert FaultPlan(latency_ms=800, latency_rate=1.0).draw_latency() == 0.8
    assert FaultPlan(latency_ms=800, latency_rate=0.0).draw_latency() == 0.0
    assert FaultPlan().draw() is None
    assert FaultPlan().applies_to("PostRows")
    assert not FaultPlan().applies_to("GetDatasets")
    assert FaultPlan(all_operations=True).applies_to("GetDatasets")
