"""Column types and the value rules Power BI applies to pushed rows.

Source: "Dataset properties" (api-dataset-properties.md) restriction table:
https://learn.microsoft.com/en-us/power-bi/developer/automation/api-dataset-properties
Type names are matched case-insensitively and ``int``/``bool`` are accepted as aliases, as the
service accepts the spellings used in Microsoft's own samples (``Int64``, ``int64``, ``bool``,
``string``, ``DateTime``, ``dateTime``).

This module is the emulator's own model of the service. It deliberately shares no code with the
bundle's ``shared/engine/schema.py``: the emulator is the test oracle for that code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from emulator.limits import MAX_STRING_LENGTH

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
DOUBLE_MAX = 1.7976931348623157e308
#: Decimal is "precision=28, scale=4": at most 24 digits before the point.
DECIMAL_LIMIT = Decimal(10) ** 24

CANONICAL_TYPES = ("Int64", "Double", "Decimal", "Boolean", "DateTime", "String")
_ALIASES = {name.lower(): name for name in CANONICAL_TYPES} | {"int": "Int64", "bool": "Boolean"}


class ValueRejected(ValueError):
    """A value that the service would refuse; the message says why."""


def canonical_type(name: object) -> str | None:
    """Return the canonical type name for ``name``, or None when the service has no such type."""
    if not isinstance(name, str):
        return None
    return _ALIASES.get(name.strip().lower())


def _int64(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueRejected("expected an Int64, got a boolean")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueRejected(f"expected an Int64, got the string {value[:40]!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueRejected(f"expected an Int64, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise ValueRejected(f"expected an Int64, got {type(value).__name__}")
    if value >= INT64_MAX or value <= INT64_MIN:
        raise ValueRejected("Int64.MaxValue, Int64.MinValue and values beyond them are not allowed")
    return value


def _double(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueRejected("expected a Double, got a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueRejected(f"expected a Double, got the string {value[:40]!r}") from None
    if not isinstance(value, int | float):
        raise ValueRejected(f"expected a Double, got {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:
        raise ValueRejected("the number is beyond the range of a Double") from None
    if math.isnan(result):
        raise ValueRejected("NaN is not supported")
    if math.isinf(result) or abs(result) >= DOUBLE_MAX:
        raise ValueRejected("Double.MaxValue, Double.MinValue and infinities are not allowed")
    return result


def _decimal(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueRejected(f"expected a Decimal, got {type(value).__name__}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueRejected(f"expected a Decimal, got {str(value)[:40]!r}") from None
    if not number.is_finite() or abs(number) >= DECIMAL_LIMIT:
        raise ValueRejected("Decimal allows precision 28 with scale 4")
    return float(number.quantize(Decimal("0.0001")))


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueRejected(f"expected a Boolean (true or false), got {str(value)[:40]!r}")


_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_TICKS_PER_QUANTUM = (
    1 / 300
)  # "we quantize values with day fractions to whole multiples of 1/300 s"


def _quantise(moment: datetime) -> datetime:
    """Round the time of day to a whole 1/300 s, then to the millisecond we store (half up,
    in integers: float seconds would misround values such as .005)."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    delta = moment - midnight
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    quanta = (micros * 300 + 500_000) // 1_000_000
    millis = (quanta * 1000 + 150) // 300
    return midnight + timedelta(milliseconds=millis)


def parse_datetime(value: str) -> datetime:
    """Parse ISO 8601 or ``MM/dd/yyyy[ HH:mm[:ss]]``; raise :class:`ValueRejected` otherwise."""
    text = value.strip()
    match = _US_DATE.match(text)
    try:
        if match:
            month, day, year, hour, minute, second = match.groups()
            return datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
            )
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueRejected(f"expected a DateTime, got {text[:40]!r}") from None


def _datetime(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueRejected(f"expected a DateTime string, got {type(value).__name__}")
    moment = parse_datetime(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
        suffix = "Z"
    else:
        suffix = ""
    moment = _quantise(moment)
    return moment.isoformat(timespec="milliseconds") + suffix


def utf16_length(text: str) -> int:
    """Length as .NET counts it (UTF-16 code units): a character outside the BMP counts twice."""
    return len(text.encode("utf-16-le")) // 2


def _string(value: Any) -> str:
    if isinstance(value, bool):
        value = "True" if value else "False"
    elif isinstance(value, int | float):
        value = repr(value)
    if not isinstance(value, str):
        raise ValueRejected(f"expected a String, got {type(value).__name__}")
    if utf16_length(value) > MAX_STRING_LENGTH:
        raise ValueRejected(
            f"string of {utf16_length(value)} characters; at most {MAX_STRING_LENGTH} are allowed"
        )
    return value


COERCERS: dict[str, Callable[[Any], Any]] = {
    "Int64": _int64,
    "Double": _double,
    "Decimal": _decimal,
    "Boolean": _boolean,
    "DateTime": _datetime,
    "String": _string,
}


def coerce(type_name: str, value: Any) -> Any:
    """Return the stored form of ``value`` for a column of ``type_name`` (canonical)."""
    if value is None:
        return None
    return COERCERS[type_name](value)
