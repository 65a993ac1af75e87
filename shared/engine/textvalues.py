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

import functools
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


# -- whole columns ------------------------------------------------------------------------------
#
# The engine's block path checks a DateTime column at once: the column joined by newlines is
# matched by one regular expression (a C loop), and a profile's date pattern in fixed-width
# numbers is rewritten for the whole column, not value by value. A column these do not vouch
# for goes through the per-value readers, which read the same values to the same result
# (tests/unit/engine/test_textvalues.py compares them).

#: Months and days with a valid date, ``sep`` between them (29 February goes the per-value way:
#: leap years). ASCII digits only: ``\d`` would take any Unicode digit.
_MONTH_DAY = (
    "(?:0[1-9]|1[0-2]){sep}(?:0[1-9]|1[0-9]|2[0-8])"
    "|(?:0[13-9]|1[0-2]){sep}(?:29|30)"
    "|(?:0[13578]|1[02]){sep}31"
)
#: Each field after the year (in ISO 8601's order), the digits it allows, and the character
#: ISO 8601 puts before it. Year 0000 goes the per-value way too (datetime refuses it).
_ISO_FIELDS = (
    ("month", None, "-"),  # with the day: _MONTH_DAY
    ("day", None, "-"),
    ("hour", "(?:[01][0-9]|2[0-3])", "T"),
    ("minute", "[0-5][0-9]", ":"),
    ("second", "[0-5][0-9]", ":"),
    ("fraction", "[0-9]{3}", "."),
)
_ISO_ORDER = ["year"] + [name for name, _, _ in _ISO_FIELDS]


def _iso_value(fields: list[str], seps: list[str]) -> str:
    """The regular expression of one ISO-order value with these fields (year, month, day and
    maybe more) and ``seps`` before each field after the year."""
    regex = "(?!0000)[0-9]{4}" + re.escape(seps[0])
    regex += "(?:" + _MONTH_DAY.format(sep=re.escape(seps[1])) + ")"
    for (name, digits, _), sep in zip(_ISO_FIELDS[2:], seps[2:], strict=False):
        if name not in fields:
            break
        regex += re.escape(sep) + (digits or "")
    return regex


_ISO_SECONDS = _iso_value(_ISO_ORDER[:6], ["-", "-", "T", ":", ":"]) + "Z"
_ISO_MILLISECONDS = _iso_value(_ISO_ORDER, ["-", "-", "T", ":", ":", "."]) + "Z"


@functools.cache
def _iso_columns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Whole columns of ``...Z`` and of ``...fffZ`` values, compiled on first use: about a
    millisecond of cold start that a process which never sees a DateTime column does not pay
    (bench figure 5a)."""
    return (
        re.compile(f"(?:{_ISO_SECONDS}\n)*{_ISO_SECONDS}"),
        re.compile(f"(?:{_ISO_MILLISECONDS}\n)*{_ISO_MILLISECONDS}"),
    )


def iso_column(joined: str, count: int) -> list[str] | None:
    """A column of ``count`` values joined by newlines, each as :func:`format_utc` writes it,
    when every value is a real UTC date-time written ``yyyy-MM-ddTHH:mm:ssZ`` or
    ``yyyy-MM-ddTHH:mm:ss.fffZ``; else None (read them one by one)."""
    seconds, milliseconds = _iso_columns()
    if seconds.fullmatch(joined):
        # Every "Z" is a value's last character: put ".000" before each.
        out = (joined.replace("Z\n", ".000Z\n")[:-1] + ".000Z").split("\n")
    elif milliseconds.fullmatch(joined):
        out = joined.split("\n")
    else:
        return None
    # A value holding a newline would shift the split: then it is not the same column.
    return out if len(out) == count else None


#: Specifiers a whole column can be rewritten for (fixed-width digits): the field each gives.
_REWRITABLE = {
    "yyyy": ("year", 4),
    "MM": ("month", 2),
    "dd": ("day", 2),
    "HH": ("hour", 2),
    "mm": ("minute", 2),
    "ss": ("second", 2),
    "fff": ("fraction", 3),
}
#: What a value written only to the day, hour or minute lacks of ``HH:mm:ss``.
_TIME_LEFT = {"day": "T00:00:00", "hour": ":00:00", "minute": ":00", "second": ""}

#: A column rewriter: (the column joined by newlines, its number of values) -> its values as
#: :func:`format_utc` writes them, or None when it cannot vouch for every one.
ColumnReader = Callable[[str, int], list[str] | None]


def compile_rewrite(pattern: str, time_zone: str | None = None) -> ColumnReader | None:
    """For a pattern of fixed-width numbers and literals (``yyyy/MM/dd HH:mm:ss``,
    ``dd.MM.yyyy``) read in UTC: a :data:`ColumnReader` that reads a whole column in it at
    once, or None when the pattern or the zone needs the per-value reader (names, 12-hour
    clocks, offsets, epochs, a time zone other than UTC). Whatever it vouches for, the
    per-value reader (:func:`compile_datetime`) reads to the same values.

    A pattern in ISO 8601's order (year first, one character between fields) is checked, real
    dates only, with one regular expression over the column, then its separators are replaced
    (``str.replace``): every loop runs in C. Another order (``dd.MM.yyyy``) is rewritten with
    ``re.sub``, then checked with :func:`iso_column`: on Python 3.11 a template with group
    references calls Python once per value, which made a profiled CSV 35% slower than a plain
    one (bench figure 1c) before the ISO-order way."""
    if _zone(time_zone) is not UTC or pattern in ("unixSeconds", "unixMilliseconds"):
        return None
    try:
        tokens = _tokenise(pattern)
    except PatternError:
        return None
    fields: list[str] = []  # field names, in the pattern's order
    literals: list[str] = [""]  # the text before each field, and after the last
    for kind, text in tokens:
        if kind == "lit":
            if "\n" in text or any(c.isdigit() for c in text):
                return None
            literals[-1] += text
            continue
        spec = "fff" if (kind, text) == ("f", "3") else kind
        if spec not in _REWRITABLE or _REWRITABLE[spec][0] in fields:
            return None
        fields.append(_REWRITABLE[spec][0])
        literals.append("")
    if not {"year", "month", "day"} <= set(fields):
        return None
    if fields == _ISO_ORDER[: len(fields)] and literals[0] == literals[-1] == "":
        replaced = _replacing(fields, literals[1:-1])
        if replaced is not None:
            return replaced
    template = r"\g<year>-\g<month>-\g<day>T"
    template += ":".join(
        rf"\g<{name}>" if name in fields else "00" for name in ("hour", "minute", "second")
    )
    template += r".\g<fraction>Z" if "fraction" in fields else "Z"
    value = "".join(
        re.escape(literals[n]) + f"(?P<{name}>[0-9]{{{_width(name)}}})"
        for n, name in enumerate(fields)
    )
    compiled = re.compile("^" + value + re.escape(literals[-1]) + "$", re.MULTILINE)
    return lambda joined, count: iso_column(compiled.sub(template, joined), count)


def _width(name: str) -> int:
    return next(width for field, width in _REWRITABLE.values() if field == name)


def _replacing(fields: list[str], seps: list[str]) -> ColumnReader | None:
    """The ISO-order reader: one check of the column (real dates), the separators replaced
    by ISO 8601's, and what the values leave out of the time added with the ``Z``. None when
    a separator is longer than one character, or one character stands in two places that ISO
    8601 writes differently."""
    table: dict[str, str] = {}
    for sep, (_, _, iso) in zip(seps, _ISO_FIELDS, strict=False):
        if len(sep) != 1 or table.get(sep, iso) != iso:
            return None
        table[sep] = iso
    swaps = [(old, new) for old, new in table.items() if old != new]
    # str.replace finds a character with memchr; str.translate looks up every character (a
    # fifth of the block path's time). Replacing one after another is one translation unless
    # a character put in is replaced again later.
    chained = any(new == old for _, new in swaps for old, _ in swaps)
    translation = str.maketrans(dict(swaps)) if chained else None
    tail = _TIME_LEFT.get(fields[-1], "") + ("Z" if fields[-1] == "fraction" else ".000Z")
    value = _iso_value(fields, seps)
    shape = re.compile(f"(?:{value}\n)*{value}")

    def read(joined: str, count: int) -> list[str] | None:
        if not shape.fullmatch(joined):
            return None
        if translation is not None:
            joined = joined.translate(translation)
        else:
            for old, new in swaps:
                joined = joined.replace(old, new)
        out = (joined.replace("\n", tail + "\n") + tail).split("\n")
        # A value holding a newline would shift the split: then it is not the same column.
        return out if len(out) == count else None

    return read


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
