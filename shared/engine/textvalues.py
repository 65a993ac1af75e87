"""Readers for values written as their owners wrote them: date-time patterns, numbers with
local separators, boolean words, null tokens.

An ingest profile (:mod:`shared.engine.profile`) declares them per table or per column; each
is compiled once, here, into a plain function ``str -> value`` that raises
:class:`ValueError` with a message a person can act on. The engine's validator calls them
before its own checks (ranges, NaN, lengths), so a profile widens what is read, never what is
accepted.

Date-time patterns use .NET's custom format specifiers, the ones Power BI users meet in Power
Query and DAX (https://learn.microsoft.com/dotnet/standard/base-types/custom-date-and-time-format-strings):
``yyyy yy MMMM MMM MM M dddd ddd dd d HH H hh h mm m ss s f..fffffff tt zzz zz z K``, literal
text in quotes or after ``\\``. Month and day names are English, matched without case. Two
special patterns read Unix time: ``unixSeconds`` and ``unixMilliseconds``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: The default null tokens of non-text columns (issue: real-world files from R, pandas,
#: databases and spreadsheets). Text columns keep such text unless a profile declares tokens.
DEFAULT_NULL_TOKENS: frozenset[str] = frozenset({"", "NA", "N/A", "null", "NULL", "\\N"})

#: Two-digit years read as .NET's default calendar does: 00-29 are 2000-2029, 30-99 are
#: 1930-1999 (Calendar.TwoDigitYearMax = 2029,
#: https://learn.microsoft.com/dotnet/api/system.globalization.calendar.twodigityearmax).
TWO_DIGIT_YEAR_MAX = 2029

_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTH_NUMBER = {name: n for n, name in enumerate(_MONTHS, 1)} | {
    name[:3]: n for n, name in enumerate(_MONTHS, 1)
}
_MONTH_NUMBER["sept"] = 9
_FULL_MONTHS = "|".join(_MONTHS)
_SHORT_MONTHS = "|".join([name[:3] for name in _MONTHS] + ["sept"])

#: Specifier -> (regex of what it reads, group name or None when only matched). Longest first.
_SPECIFIERS: tuple[tuple[str, str, str | None], ...] = (
    ("yyyy", r"\d{4}", "year"),
    ("yy", r"\d{2}", "year2"),
    ("MMMM", f"(?:{_FULL_MONTHS})", "month_name"),
    ("MMM", f"(?:{_SHORT_MONTHS})", "month_name"),
    ("MM", r"\d{2}", "month"),
    ("M", r"\d{1,2}", "month"),
    ("dddd", "[A-Za-z]{6,9}", None),
    ("ddd", "[A-Za-z]{3}", None),
    ("dd", r"\d{2}", "day"),
    ("d", r"\d{1,2}", "day"),
    ("HH", r"\d{2}", "hour"),
    ("H", r"\d{1,2}", "hour"),
    ("hh", r"\d{2}", "hour12"),
    ("h", r"\d{1,2}", "hour12"),
    ("mm", r"\d{2}", "minute"),
    ("m", r"\d{1,2}", "minute"),
    ("ss", r"\d{2}", "second"),
    ("s", r"\d{1,2}", "second"),
    ("tt", "[AaPp][Mm]", "ampm"),
    ("zzz", r"[+-]\d{2}:\d{2}", "offset"),
    ("zz", r"[+-]\d{2}", "offset"),
    ("z", r"[+-]\d{1,2}", "offset"),
    ("K", r"Z|[+-]\d{2}:\d{2}", "offset"),
)


class PatternError(ValueError):
    """A date-time pattern that cannot be compiled; the message says where."""


def _tokenise(pattern: str) -> list[tuple[str, str]]:
    """The pattern as (kind, text) pairs: kind is a specifier, ``f`` (fraction) or ``lit``."""
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char in "'\"":
            end = pattern.find(char, i + 1)
            if end < 0:
                raise PatternError(f"unclosed quote at position {i + 1} of {pattern!r}")
            tokens.append(("lit", pattern[i + 1 : end]))
            i = end + 1
            continue
        if char == "\\":
            if i + 1 == len(pattern):
                raise PatternError(f"{pattern!r} ends with a lone backslash")
            tokens.append(("lit", pattern[i + 1]))
            i += 2
            continue
        if char in "fF":
            run = len(pattern[i:]) - len(pattern[i:].lstrip(char))
            if run > 7:
                raise PatternError(f"at most 7 fraction digits ({char * 7}) in {pattern!r}")
            tokens.append(("f" if char == "f" else "F", str(run)))
            i += run
            continue
        for spec, _, _ in _SPECIFIERS:
            if pattern.startswith(spec, i):
                run = len(pattern[i:]) - len(pattern[i:].lstrip(spec[0]))
                if run > len(spec) and spec == _longest(spec[0]):
                    raise PatternError(
                        f"{spec[0] * run!r} at position {i + 1} of {pattern!r} is not a "
                        "specifier (too many letters)"
                    )
                tokens.append((spec, spec))
                i += len(spec)
                break
        else:
            if char.isalpha():
                raise PatternError(
                    f"{char!r} at position {i + 1} of {pattern!r} is not a date-time specifier; "
                    "put literal letters in quotes"
                )
            tokens.append(("lit", char))
            i += 1
    return tokens


def _longest(letter: str) -> str:
    return max((spec for spec, _, _ in _SPECIFIERS if spec[0] == letter), key=len)


def _zone(name: str | None) -> tzinfo:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PatternError(f"unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)") from exc


def _to_utc(moment: datetime, zone: tzinfo) -> datetime:
    """An aware moment in UTC; a naive one is first read in ``zone``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def format_utc(moment: datetime) -> str:
    """A UTC moment as the bundle writes date-times: ``2000-01-01T00:00:00.000Z``."""
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def compile_datetime(pattern: str, time_zone: str | None = None) -> Callable[[str], str]:
    """A reader of text in ``pattern`` that returns the ISO 8601 UTC form
    (:func:`format_utc`); naive values are read in ``time_zone`` (an IANA name; UTC when
    None). Raises :class:`PatternError` for a pattern it cannot compile."""
    zone = _zone(time_zone)
    if pattern in ("unixSeconds", "unixMilliseconds"):
        scale = 1.0 if pattern == "unixSeconds" else 1000.0
        return lambda text: _epoch(text, scale, pattern)
    if not pattern:
        raise PatternError("an empty date-time pattern")
    parts: list[str] = []
    seen: set[str] = set()
    for kind, text in _tokenise(pattern):
        if kind == "lit":
            parts.append(re.escape(text))
            continue
        group: str | None
        if kind in ("f", "F"):
            digits = int(text)
            quantity = f"{{{digits}}}" if kind == "f" else f"{{0,{digits}}}"
            group = "fraction"
            regex = rf"\d{quantity}"
        else:
            regex, group = next((r, g) for s, r, g in _SPECIFIERS if s == kind)
        if group is None:
            parts.append(f"(?:{regex})")
            continue
        if group in seen:
            raise PatternError(f"{pattern!r} gives the {group.replace('_', ' ')} twice")
        seen.add(group)
        parts.append(f"(?P<{group}>{regex})")
    if not seen & {"year", "year2"} or not seen & {"month", "month_name"} or "day" not in seen:
        raise PatternError(f"{pattern!r} must give the year, the month and the day")
    if "hour12" in seen and "ampm" not in seen:
        raise PatternError(f"{pattern!r} has a 12-hour clock (h) without AM/PM (tt)")
    if "hour" in seen and "ampm" in seen:
        raise PatternError(f"{pattern!r} has a 24-hour clock (H) with AM/PM (tt); use h")
    compiled = re.compile("".join(parts), re.IGNORECASE)

    def read(text: str) -> str:
        match = compiled.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"expected a date-time like {pattern!r}, got {text[:40]!r}")
        try:
            moment = _moment(match.groupdict())
            return format_utc(_to_utc(moment, zone))
        except (ValueError, OverflowError):
            raise ValueError(
                f"{text[:40]!r} matches {pattern!r} but is not a real date-time"
            ) from None

    return read


#: Specifiers a whole column can be rewritten for with one ``re.sub`` (fixed-width digits).
_REWRITABLE = {
    "yyyy": ("year", 4),
    "MM": ("month", 2),
    "dd": ("day", 2),
    "HH": ("hour", 2),
    "mm": ("minute", 2),
    "ss": ("second", 2),
}


def compile_rewrite(
    pattern: str, time_zone: str | None = None
) -> tuple[re.Pattern[str], str] | None:
    """For a pattern of fixed-width numbers and literals (``yyyy/MM/dd HH:mm:ss``,
    ``dd.MM.yyyy``) read in UTC: a multi-line regex and a template that turn a whole column,
    joined by newlines, into ``yyyy-MM-ddTHH:mm:ssZ`` (or ``.fffZ`` with ``fff``) in one C
    loop. The engine then checks every line with its own ISO column check, so a value this
    does not rewrite, or rewrites into no real date, sends the column the per-value way
    (:func:`compile_datetime`, which reads the same values to the same result). None when the
    pattern or zone needs per-value reading (names, 12-hour clocks, offsets, a time zone)."""
    if _zone(time_zone) is not UTC or pattern in ("unixSeconds", "unixMilliseconds"):
        return None
    try:
        tokens = _tokenise(pattern)
    except PatternError:
        return None
    parts: list[str] = []
    seen: set[str] = set()
    for kind, text in tokens:
        if kind == "lit":
            if "\n" in text:
                return None
            parts.append(re.escape(text))
        elif kind == "f" and text == "3" and "fraction" not in seen:
            seen.add("fraction")
            parts.append("(?P<fraction>[0-9]{3})")
        elif kind in _REWRITABLE and _REWRITABLE[kind][0] not in seen:
            group, width = _REWRITABLE[kind]
            seen.add(group)
            parts.append(f"(?P<{group}>[0-9]{{{width}}})")
        else:
            return None
    if not {"year", "month", "day"} <= seen:
        return None
    template = r"\g<year>-\g<month>-\g<day>T"
    template += ":".join(
        rf"\g<{group}>" if group in seen else "00" for group in ("hour", "minute", "second")
    )
    template += r".\g<fraction>Z" if "fraction" in seen else "Z"
    return re.compile("^" + "".join(parts) + "$", re.MULTILINE), template


def compile_iso(time_zone: str | None = None) -> Callable[[str], str]:
    """A reader of ISO 8601 text whose naive values are read in ``time_zone`` (UTC when
    None), returning the ISO 8601 UTC form."""
    zone = _zone(time_zone)

    def read(text: str) -> str:
        try:
            return format_utc(_to_utc(datetime.fromisoformat(text.strip()), zone))
        except (ValueError, OverflowError):
            raise ValueError(f"expected an ISO 8601 date-time, got {text[:40]!r}") from None

    return read


def _moment(found: dict[str, str | None]) -> datetime:
    if found.get("year") is not None:
        year = int(found["year"] or 0)
    else:
        two = int(found["year2"] or 0)
        year = 2000 + two if 2000 + two <= TWO_DIGIT_YEAR_MAX else 1900 + two
    if found.get("month_name") is not None:
        name = (found["month_name"] or "").lower()
        if name not in _MONTH_NUMBER:
            raise ValueError(name)
        month = _MONTH_NUMBER[name]
    else:
        month = int(found["month"] or 0)
    hour = int(found.get("hour") or 0)
    if found.get("hour12") is not None:
        hour = int(found["hour12"] or 0)
        if not 1 <= hour <= 12:
            raise ValueError(hour)
        hour = hour % 12 + (12 if (found.get("ampm") or "").lower() == "pm" else 0)
    fraction = found.get("fraction") or ""
    micro = int((fraction + "000000")[:6]) if fraction else 0
    moment = datetime(
        year,
        month,
        int(found["day"] or 0),
        hour,
        int(found.get("minute") or 0),
        int(found.get("second") or 0),
        micro,
    )
    offset = found.get("offset")
    if offset:
        moment = moment.replace(tzinfo=_offset(offset))
    return moment


def _offset(text: str) -> tzinfo:
    if text.upper() == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, _, minutes = text[1:].partition(":")
    if int(hours) > 14 or int(minutes or 0) > 59:
        raise ValueError(text)
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch(text: str, scale: float, pattern: str) -> str:
    try:
        number = float(text.strip())
        # timedelta rounds to the microsecond exactly; fromtimestamp(n / 1000) may land a
        # microsecond short (1700000000123 ms -> .122999) and the milliseconds would drop.
        moment = _EPOCH + timedelta(milliseconds=number * (1000.0 / scale))
    except (ValueError, OverflowError):
        raise ValueError(f"expected {pattern} (a number), got {text[:40]!r}") from None
    return format_utc(moment)


def compile_number(decimal: str = ".", thousands: str | None = None) -> Callable[[str], str]:
    """A reader that turns ``1.234,5`` (with ``decimal=","``, ``thousands="."``) into the
    plain ``1234.5`` the engine's number checks take. Thousands separators are accepted only
    in groups of three digits, so ``1.2.3`` is refused rather than guessed."""
    if decimal not in (".", ","):
        raise PatternError(f"the decimal separator must be '.' or ',', not {decimal!r}")
    if thousands is not None and (thousands == decimal or len(thousands) != 1):
        raise PatternError(f"the thousands separator must be one character other than {decimal!r}")
    sep = re.escape(thousands) if thousands else None
    integer = rf"\d{{1,3}}(?:{sep}\d{{3}})+|\d+" if sep else r"\d+"
    shape = re.compile(
        rf"(?P<sign>[+-]?)(?P<int>{integer})(?:{re.escape(decimal)}(?P<frac>\d+))?"
        r"(?P<exp>[eE][+-]?\d+)?"
    )

    def read(text: str) -> str:
        match = shape.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"expected a number with {decimal!r} for decimals"
                + (f" and {thousands!r} for thousands" if thousands else "")
                + f", got {text[:40]!r}"
            )
        whole = match["int"].replace(thousands, "") if thousands else match["int"]
        frac = f".{match['frac']}" if match["frac"] else ""
        return f"{match['sign']}{whole}{frac}{match['exp'] or ''}"

    return read


def compile_boolean(true: Iterable[str], false: Iterable[str]) -> Callable[[str], bool]:
    """A reader of declared true and false words (matched without case or surrounding
    spaces); ``true``/``false`` themselves are always read."""
    trues = {word.strip().lower() for word in true} | {"true"}
    falses = {word.strip().lower() for word in false} | {"false"}
    both = trues & falses
    if both:
        raise PatternError(f"{sorted(both)} cannot mean both true and false")

    def read(text: str) -> bool:
        word = text.strip().lower()
        if word in trues:
            return True
        if word in falses:
            return False
        raise ValueError(f"expected one of {sorted(trues | falses)}, got {text[:40]!r}")

    return read
