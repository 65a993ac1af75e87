"""Dataset definitions and compiled row validators.

A definition is Power BI's own Create Dataset body (``datasets/<name>.json``). For each table a
:class:`RowValidator` is compiled once: a column-name -> coercer map, so validating a row is one
dictionary walk with no per-value type dispatch. It coerces what is unambiguous (numeric strings
to numbers, ``"true"``/``"false"`` to booleans, ISO 8601 and ``MM/dd/yyyy`` strings to ISO 8601
UTC date-times, the default null tokens, ``NA`` ``N/A`` ``null`` ``NULL`` ``\\N`` and empty, to
null for non-string columns) and refuses what Power BI would refuse, with the row's index, every
bad column and the reason. A table's ingest profile (:mod:`shared.engine.profile`) widens what
is read: its own null tokens, date patterns, separators and words, source columns mapped to
table columns, constant and derived columns.

Value rules: "Dataset properties", https://learn.microsoft.com/en-us/power-bi/developer/automation/api-dataset-properties
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shared import limits
from shared.engine.batching import PLAIN_FLOAT_MAX, PLAIN_FLOAT_MIN
from shared.engine.textvalues import DEFAULT_NULL_TOKENS, ColumnReader, format_utc, iso_column
from shared.errors import ConfigError, RowProblem

if TYPE_CHECKING:
    from shared.engine.profile import TableProfile

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
DOUBLE_MAX = 1.7976931348623157e308
#: Decimal is "precision=28, scale=4": at most 24 digits before the point.
DECIMAL_MAX = 1e24

TYPES = ("Int64", "Double", "Decimal", "Boolean", "DateTime", "String")
_ALIASES = {name.lower(): name for name in TYPES} | {"int": "Int64", "bool": "Boolean"}


def canonical_type(name: object) -> str | None:
    """The canonical name of a Power BI column type (case-insensitive, with aliases), or None."""
    return _ALIASES.get(name.strip().lower()) if isinstance(name, str) else None


class Rejected(ValueError):
    """A value that cannot be coerced to its column's type; the message says why."""


def _int64(value: Any) -> int:
    if type(value) is int:
        result = value
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            raise Rejected(f"expected a whole number, got {value[:40]!r}") from None
    elif type(value) is float and value.is_integer():
        result = int(value)
    else:
        raise Rejected(f"expected a whole number, got {_describe(value)}")
    if not INT64_MIN < result < INT64_MAX:
        raise Rejected("Int64.MaxValue, Int64.MinValue and values beyond them are not allowed")
    return result


def _double(value: Any) -> float:
    if type(value) is float or type(value) is int:
        try:
            result = float(value)
        except OverflowError:
            raise Rejected("the number is beyond the range of a Double") from None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise Rejected(f"expected a number, got {value[:40]!r}") from None
    else:
        raise Rejected(f"expected a number, got {_describe(value)}")
    if math.isnan(result):
        raise Rejected("NaN is not supported")
    if not -DOUBLE_MAX < result < DOUBLE_MAX:
        raise Rejected("Double.MaxValue, Double.MinValue and infinities are not allowed")
    return result


def _decimal(value: Any) -> float:
    result = _double(value)
    if abs(result) >= DECIMAL_MAX:
        raise Rejected("Decimal allows 28 digits with 4 after the point")
    return result


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "false"):
            return text == "true"
    raise Rejected(f"expected true or false, got {_describe(value)}")


_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")


def _datetime(value: Any) -> str:
    if not isinstance(value, str):
        raise Rejected(f"expected a date-time string, got {_describe(value)}")
    text = value.strip()
    try:
        match = _US_DATE.fullmatch(text)
        if match:
            month, day, year, hour, minute, second = match.groups()
            moment = datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
            )
        else:
            moment = datetime.fromisoformat(text)
        # A value without an offset is taken as UTC, the only zone the bundle writes.
        moment = moment.astimezone(UTC) if moment.tzinfo else moment
    except (ValueError, OverflowError):  # OverflowError: outside years 1-9999 once in UTC
        raise Rejected(f"expected an ISO 8601 or MM/dd/yyyy date-time, got {text[:40]!r}") from None
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _string(value: Any) -> str:
    if type(value) is str:
        result = value
    elif type(value) is bool:
        result = "True" if value else "False"  # as .NET writes booleans
    elif type(value) in (int, float):
        result = repr(value)
    else:
        raise Rejected(f"expected text, got {_describe(value)}")
    # A str of at most 2,000 code points cannot exceed 4,000 UTF-16 units: skip the encode.
    if len(result) > limits.MAX_STRING_LENGTH // 2:
        try:
            units = len(result.encode("utf-16-le")) // 2
        except UnicodeEncodeError:
            raise Rejected("text contains an unpaired surrogate") from None
        if units > limits.MAX_STRING_LENGTH:
            raise Rejected(
                f"text of {units:,} characters; Power BI allows {limits.MAX_STRING_LENGTH:,}"
            )
    return result


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {str(value)[:40]!r}"


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "Int64": _int64,
    "Double": _double,
    "Decimal": _decimal,
    "Boolean": _boolean,
    "DateTime": _datetime,
    "String": _string,
}


# --- whole columns at once ---------------------------------------------------------------------
#
# A block of rows that all have the same keys in the same order is checked column by column:
# each function below takes one column's values (a list) and returns them coerced exactly as
# the per-value coercer above (with None and the empty-string rule applied) would, using loops
# that run in C (map, min, max, sum, a regex over the joined column). It returns None, or
# raises ValueError/TypeError/OverflowError, when it cannot tell: the column is then coerced
# value by value, and a value that is refused sends the whole block through the per-row
# validator, which names the row and column. So these are shortcuts, never a second set of
# rules: every value they accept, the per-value coercer accepts with the same result (the
# property tests in tests/unit/engine/test_fast_path.py compare them).

_NONE = type(None)
_INT = frozenset({int})
_INT_OR_NONE = frozenset({int, _NONE})
_FLOAT_OR_NONE = frozenset({float, _NONE})
_NUMBER_OR_NONE = frozenset({float, int, _NONE})
_STR = frozenset({str})
_STR_OR_NONE = frozenset({str, _NONE})
_BOOL_OR_NONE = frozenset({bool, _NONE})
#: The exact texts the Boolean coercer maps without stripping or lower-casing (others go the
#: slow way); "" and None are null in a non-text column.
_BOOL_TEXT: dict[Any, bool | None] = {"true": True, "false": False, "": None, None: None}


def _with_nulls(present: list[Any], values: list[Any]) -> list[Any]:
    """``present`` (the coerced non-empty values, in order) with None put back where
    ``values`` has "" or None: a loop over the few empty places only."""
    if len(present) == len(values):
        return present
    out = present[:]
    if None in values:
        for position, value in enumerate(values):
            if value is None or value == "":
                out.insert(position, None)
    else:  # only "": list.index finds them in C
        position = -1
        for _ in range(len(values) - len(present)):
            position = values.index("", position + 1)
            out.insert(position, None)
    return out


def _in_range(present: list[Any], low: float, high: float) -> bool:
    """Whether every number is strictly inside (low, high). ``present`` may leave out zeros
    and nulls: they are in range."""
    return not present or (low < min(present) and max(present) < high)


def _finite(present: list[float]) -> bool:
    """Whether no double is NaN or infinite: their sum is finite only then (or it overflows:
    then the slow way decides)."""
    return math.isfinite(sum(present))


def _column_int64(values: list[Any]) -> list[Any] | None:
    kinds = set(map(type, values))
    if kinds <= _INT_OR_NONE:
        out = values
        present = list(filter(None, values))
    elif kinds <= _STR_OR_NONE:
        # int() strips the same whitespace str.strip() does (Py_UNICODE_ISSPACE); "" is null.
        present = list(map(int, filter(None, values)))
        out = _with_nulls(present, values)
    else:
        return None
    return out if _in_range(present, INT64_MIN, INT64_MAX) else None


def _column_number(values: list[Any], limit: float) -> tuple[list[Any], bool] | None:
    """A Double or Decimal column (``limit``: the bound of its type), and whether msgspec
    writes its doubles as json.dumps does (:func:`_plain_doubles`)."""
    kinds = set(map(type, values))
    if kinds <= _FLOAT_OR_NONE:
        out = values
        present = list(filter(None, values))
    elif kinds <= _NUMBER_OR_NONE:
        out = [None if v is None else float(v) for v in values]
        present = list(filter(None, out))
    elif kinds <= _STR_OR_NONE:
        present = list(map(float, filter(None, values)))
        out = _with_nulls(present, values)
    else:
        return None
    if not present:  # nulls and zeros only
        return out, True
    if not _finite(present):
        return None
    low, high = min(present), max(present)
    if not (-limit < low and high < limit):
        return None
    return out, _plain_range(present, low, high)


def _column_boolean(values: list[Any]) -> list[Any] | None:
    kinds = set(map(type, values))
    if kinds <= _BOOL_OR_NONE:
        return values
    if kinds <= _STR_OR_NONE:
        try:
            return list(map(_BOOL_TEXT.__getitem__, values))
        except KeyError:
            return None
    return None


def _column_string(values: list[Any]) -> list[Any] | None:
    kinds = set(map(type, values))
    if kinds == _STR:
        longest = max(map(len, values))
    elif kinds == _STR_OR_NONE:
        longest = max(map(len, filter(None, values)), default=0)
    else:
        return None
    # See _string: at most 2,000 code points cannot pass 4,000 UTF-16 units.
    return values if longest <= limits.MAX_STRING_LENGTH // 2 else None


def _column_datetime(values: list[Any]) -> list[Any] | None:
    if set(map(type, values)) != _STR:
        return None
    return iso_column("\n".join(values), len(values))


#: Double and Decimal columns: _column_number with the type's bound.
_NUMBER_LIMITS = {"Double": DOUBLE_MAX, "Decimal": DECIMAL_MAX}
_COLUMN_COERCERS: dict[str, Callable[[list[Any]], list[Any] | None]] = {
    "Int64": _column_int64,
    "Boolean": _column_boolean,
    "DateTime": _column_datetime,
    "String": _column_string,
}


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str


@dataclass(frozen=True)
class TableSchema:
    """A table's columns, with types in canonical form."""

    name: str
    columns: tuple[Column, ...]

    def validator(self, profile: TableProfile | None = None) -> RowValidator:
        return RowValidator(self, profile)

    def drift(self, live_columns: list[dict[str, Any]]) -> TableDrift:
        """How the live table's columns (Get Tables' ``columns``) differ from this schema: the
        columns only this schema has (Put Table adds them), and every live column this schema
        lacks or types otherwise (which the bundle never changes: Put Table cannot remove or
        retype a column of a table holding rows without losing them)."""
        have = {str(c.get("name")): canonical_type(c.get("dataType")) for c in live_columns}
        want = {c.name: c.data_type for c in self.columns}
        conflicts = tuple(
            f"{self.name}.{name} ({data_type}) is not in the definition"
            if name not in want
            else f"{self.name}.{name} is {data_type} in Power BI, {want[name]} in the definition"
            for name, data_type in have.items()
            if want.get(name) != data_type
        )
        return TableDrift(tuple(name for name in want if name not in have), conflicts)


@dataclass(frozen=True)
class TableDrift:
    """What :meth:`TableSchema.drift` finds: columns to add, and differences never applied."""

    added: tuple[str, ...]
    conflicts: tuple[str, ...]


#: The key readers add to each row when a profile derives a column from the line number (no
#: table column can be named so: Power BI's names are printable).
LINE_KEY = "\x00line"


@dataclass(frozen=True)
class RowContext:
    """Where a push's rows come from, for a profile's derived columns."""

    source: str | None = None
    #: The push's start, as the bundle writes date-times (:func:`format_utc`).
    ingested_at: str = field(default_factory=lambda: format_utc(datetime.now(UTC)))


def coerce(data_type: str, value: Any) -> Any:
    """``value`` as a ``data_type`` column stores it (None stays None); raises :class:`Rejected`."""
    return None if value is None else _COERCERS[data_type](value)


def _value_coercer(
    data_type: str, tokens: frozenset[str], parse: Callable[[str], Any] | None
) -> Callable[[Any], Any]:
    """One column's per-value coercion: a null token is None, text goes through the profile's
    ``parse`` (numbers too for date-times and booleans: epoch seconds, 1/0), then the type's
    own checks (ranges, NaN, lengths), so a profile widens what is read, never what is stored."""
    base = _COERCERS[data_type]
    if parse is None:

        def plain(value: Any) -> Any:
            if value is None or (type(value) is str and value in tokens):
                return None
            return base(value)

        return plain
    numbers_too = data_type in ("DateTime", "Boolean")

    def parsed(value: Any) -> Any:
        if value is None:
            return None
        kind = type(value)
        if kind is str or (numbers_too and (kind is int or kind is float)):
            text = value if kind is str else str(value)
            if text in tokens:
                return None
            try:
                value = parse(text)
            except ValueError as exc:
                raise Rejected(str(exc)) from None
        return base(value)

    return parsed


def _rewritten(rewrite: ColumnReader) -> Callable[[list[Any]], list[Any] | None]:
    """A DateTime column fast path for a profile's date pattern: the joined column read at
    once (:func:`shared.engine.textvalues.compile_rewrite`), nulls put back around it."""

    def column(values: list[Any]) -> list[Any] | None:
        # None and "" are null here (two scans in C, usually the only ones).
        present = list(filter(None, values)) if None in values or "" in values else values
        if not present:
            return values if not values or set(values) <= {None} else [None] * len(values)
        if set(map(type, present)) != _STR:
            return None
        out = rewrite("\n".join(present), len(present))
        return None if out is None else _with_nulls(out, values)

    return column


class _Fill:
    """How one table column is filled from one source value, per value and per column."""

    __slots__ = ("coerce", "column", "fast", "limit", "replace")

    def __init__(
        self,
        column: Column,
        tokens: frozenset[str],
        parse: Callable[[str], Any] | None,
        rewrite: ColumnReader | None,
    ) -> None:
        self.column = column.name
        self.coerce = _value_coercer(column.data_type, tokens, parse)
        #: Tokens the block path turns into None before its column check ("" is already null
        #: for the non-text checks; text keeps "" unless declared).
        self.replace = tokens if column.data_type == "String" else tokens - {""}
        self.limit = _NUMBER_LIMITS.get(column.data_type) if parse is None else None
        self.fast: Callable[[list[Any]], list[Any] | None] | None
        if parse is None:
            self.fast = _COLUMN_COERCERS.get(column.data_type)
        else:
            self.fast = _rewritten(rewrite) if rewrite is not None else None
        if self.limit is not None:
            self.fast = None  # numbers: _column_number with the limit


#: Per-key and per-key-order plans kept at most: hostile input must not grow them forever.
_PLAN_CACHE = 1024


class RowValidator:
    """Validates and coerces rows of one table. Build once per table and reuse.

    With an ingest profile (:class:`shared.engine.profile.TableProfile`), source columns are
    mapped to table columns (renames, case-insensitive names, ignored columns), null tokens and
    the profile's value readers apply, and constant and derived columns are added. Without one,
    the default: names as they are, and the default null tokens for non-text columns.
    """

    def __init__(
        self,
        table: TableSchema,
        profile: TableProfile | None = None,
        context: RowContext | None = None,
    ) -> None:
        self.table = table
        self.profile = profile
        self.context = context or RowContext()
        rules = profile.columns if profile is not None else {}
        #: Source key -> its fill, None (ignored) or why it is refused (unknown).
        self._fills: dict[Any, _Fill | str | None] = {}
        self._folded: dict[str, _Fill] = {}
        #: (column, its type, derived, constant) of the columns the profile fills.
        self._extras: list[tuple[str, str, str | None, Any]] = []
        self._filled_by_profile: set[str] = set()
        self.match_case = profile.match_case if profile is not None else True
        self._ignore = set(profile.ignore) if profile is not None else set()
        if not self.match_case:
            self._ignore = {name.casefold() for name in self._ignore}
        self._identity = True
        for column in table.columns:
            rule = rules.get(column.name)
            if rule is None:
                tokens = DEFAULT_NULL_TOKENS if column.data_type != "String" else frozenset()
                fill = _Fill(column, tokens, None, None)
                source: str | None = column.name
            else:
                tokens = rule.null_tokens
                if column.data_type != "String":
                    tokens = tokens | {""}  # an empty field is null in a non-text column
                fill = _Fill(column, tokens, rule.parse, rule.rewrite)
                source = rule.source
                if source is None:
                    self._extras.append(
                        (column.name, column.data_type, rule.derived, rule.constant)
                    )
                    self._filled_by_profile.add(column.name)
                    self._identity = False
                    continue
                if source != column.name:
                    self._identity = False
            assert source is not None
            self._fills[source] = fill
            if not self.match_case:
                self._folded[source.casefold()] = fill
        self._fills[LINE_KEY] = None
        self._targets = {c.name for c in table.columns}
        # Without exact names, two keys of a row can reach one column ("Temp" and "TEMP").
        self._identity = self._identity and self.match_case
        self._block_plans: dict[tuple[str, ...], Any] = {}
        self._row_types: dict[tuple[str, ...], Callable[..., Any]] = {}

    def with_context(self, context: RowContext) -> RowValidator:
        """This validator for rows from ``context`` (derived columns), sharing its plans."""
        if not self._extras or context == self.context:
            return self
        other = copy.copy(self)
        other.context = context
        return other

    def _fill_for(self, key: Any) -> _Fill | str | None:
        """The fill of a source key: its column's, a case-insensitive match's, None for an
        ignored column, or the reason it is refused."""
        if key in self._fills:
            return self._fills[key]
        found: _Fill | str | None = self._unknown(key)
        if isinstance(key, str):
            folded = key.casefold() if not self.match_case else key
            if folded in self._ignore:
                found = None
            elif folded in self._folded:
                found = self._folded[folded]
        if len(self._fills) < _PLAN_CACHE:
            self._fills[key] = found
        return found

    def _unknown(self, key: Any) -> str:
        name = str(key)[:100]
        if key in self._targets:
            how = (
                "is filled by the profile"
                if key in self._filled_by_profile
                else "reads another column of the file"
            )
            return (
                f"the column {name!r} is not read: table {self.table.name!r} column {name!r} "
                f"{how}; list {name!r} in the profile's 'ignore' to drop it"
            )
        return f"table {self.table.name!r} has no column {name!r}"

    def _extra_values(self, line: Any, index: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for column, data_type, derived, constant in self._extras:
            if derived is None:
                values[column] = constant
            elif derived == "ingestionTime":
                values[column] = self.context.ingested_at
            elif derived == "sourceFile":
                values[column] = self.context.source
            else:
                number = line if isinstance(line, int) else index + 1
                values[column] = _line_value(data_type, number)
        return values

    def __call__(self, row: Any, index: int) -> dict[str, Any] | RowProblem:
        """The row as it will be sent, or its problems: one :class:`RowProblem` whose column
        is the first bad column and whose reason names every bad column, so that whoever
        mends the row sees all of it at once (a file's row often has several)."""
        if not isinstance(row, dict):
            return RowProblem(index, f"a row must be a JSON object, got {_describe(row)}")
        fills = self._fills
        out: dict[str, Any] = {}
        bad: list[tuple[str, str]] = []
        for key, value in row.items():
            fill = fills.get(key)
            if fill is None:
                if key in fills:
                    continue  # ignored
                fill = self._fill_for(key)
                if fill is None:
                    continue
            if isinstance(fill, str):
                bad.append((key, fill))
                continue
            target = fill.column
            if not self._identity and target in out:
                bad.append((key, f"a second column of the row is read into {target!r}"))
                continue
            try:
                out[target] = fill.coerce(value)
            except Rejected as exc:
                bad.append((key, str(exc)))
        if self._extras:
            out.update(self._extra_values(row.get(LINE_KEY), index))
        if not bad:
            return out
        if len(bad) == 1:
            return RowProblem(index, bad[0][1], bad[0][0])
        reasons = "; ".join(f"{str(column)[:100]}: {reason}" for column, reason in bad)
        return RowProblem(index, f"{len(bad)} columns refused: {reasons}", bad[0][0])

    def _block_plan(self, keys: tuple[str, ...]) -> list[tuple[int, _Fill]] | None:
        """Which source position fills which column, for rows with these keys in this order;
        None when a key is unknown or two keys fill one column (the per-row path says so)."""
        if keys in self._block_plans:
            plan: list[tuple[int, _Fill]] | None = self._block_plans[keys]
            return plan
        plan = []
        seen: set[str] = set()
        for position, key in enumerate(keys):
            found = self._fill_for(key)
            if found is None:
                continue
            if isinstance(found, str) or found.column in seen:
                plan = None
                break
            seen.add(found.column)
            plan.append((position, found))
        if len(self._block_plans) < _PLAN_CACHE:
            self._block_plans[keys] = plan
        return plan

    def check_block(
        self, rows: list[Any], first: int = 0
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """Many rows at once: what :meth:`__call__` returns for each, when every row has the
        same columns in the same order and none has a problem; else None (check them one by
        one). ``first`` is the first row's index (derived line numbers). Also whether every
        value is plain JSON for msgspec (see :func:`shared.engine.batching.pack_blocks`):
        only doubles can fail that."""
        if not rows or type(rows[0]) is not dict:
            return None
        keys = tuple(rows[0])
        width = len(keys)
        plan = self._block_plan(keys) if keys else []
        if plan is None or (not plan and not self._extras):
            return None  # a key the rows cannot have (the per-row path names it), or no column
        # Every row a dict (an exact one: what __call__ would see) with exactly these keys
        # (iterating a dict gives its keys, in order).
        if set(map(type, rows)) != {dict} or (
            list(chain.from_iterable(rows)) != list(keys) * len(rows)
        ):
            return None
        values = list(chain.from_iterable(map(dict.values, rows)))
        names: list[str] = []
        columns: list[list[Any]] = []
        plain = True
        for position, fill in plan or ():
            column = values[position::width]
            out: list[Any] | None = None
            try:
                if fill.replace and not fill.replace.isdisjoint(column):
                    column = [None if v in fill.replace else v for v in column]
                if fill.limit is not None:
                    number = _column_number(column, fill.limit)
                    if number is not None:
                        out, plain = number[0], plain and number[1]
                elif fill.fast is not None:
                    out = fill.fast(column)
            except (ValueError, TypeError, OverflowError):
                out = None
                column = values[position::width]
            if out is None:
                try:
                    out = list(map(fill.coerce, column))
                except Rejected:
                    return None
                if fill.limit is not None and plain:
                    plain = _plain_doubles(out)
            names.append(fill.column)
            columns.append(out)
        if self._extras:
            lines = (
                values[keys.index(LINE_KEY) :: width]
                if LINE_KEY in keys
                else range(first + 1, first + len(rows) + 1)
            )
            same = self._extra_values(None, first)  # every value but the line number
            for column_name, data_type, derived, _ in self._extras:
                names.append(column_name)
                if derived == "lineNumber":
                    columns.append([_line_value(data_type, n) for n in lines])
                else:
                    value = same[column_name]
                    columns.append([value] * len(rows))
                    if derived is None and type(value) is float and plain:
                        plain = _plain_doubles([value])
        return list(map(self._row_type(tuple(names)), *columns)), plain

    def _row_type(self, keys: tuple[str, ...]) -> Callable[..., Any]:
        """A msgspec Struct whose fields are ``keys`` in order: it encodes as the dict of those
        keys would, and costs a sixth of a dict to build (its fields hold only scalars, so
        the garbage collector need not track it)."""
        row_type = self._row_types.get(keys)
        if row_type is None:
            fields = [f"f{n}" for n in range(len(keys))]  # column names need not be identifiers
            row_type = msgspec.defstruct(
                "Row", fields, rename=dict(zip(fields, keys, strict=True)), gc=False
            )
            if len(self._row_types) < _PLAN_CACHE:
                self._row_types[keys] = row_type
        return row_type


def _line_value(data_type: str, number: int) -> Any:
    """A derived line number as a column of ``data_type`` stores it."""
    return str(number) if data_type == "String" else coerce(data_type, number)


def _plain_doubles(values: list[Any]) -> bool:
    """Whether msgspec writes these coerced doubles as json.dumps does (0 or 1e-4 <= |x| < 1e16;
    see shared.engine.batching)."""
    present = list(filter(None, values))  # nulls and zeros are plain
    return not present or _plain_range(present, min(present), max(present))


def _plain_range(present: list[float], low: float, high: float) -> bool:
    """:func:`_plain_doubles` for non-zero doubles whose least and greatest are known."""
    if not (low > -PLAIN_FLOAT_MAX and high < PLAIN_FLOAT_MAX):
        return False
    if low >= PLAIN_FLOAT_MIN or high <= -PLAIN_FLOAT_MIN:  # all of one sign, away from 0
        return True
    return bool(min(map(abs, present)) >= PLAIN_FLOAT_MIN)


@dataclass(frozen=True)
class DatasetDefinition:
    """A Create Dataset body and the table schemas compiled from it."""

    name: str
    body: dict[str, Any]
    tables: dict[str, TableSchema] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any, source: str = "definition") -> DatasetDefinition:
        """Check a Create Dataset body; a malformed one is a :class:`ConfigError`."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ConfigError(source, "a dataset definition needs a 'name' and 'tables'")
        tables: dict[str, TableSchema] = {}
        tables_in = body.get("tables") or []
        if not isinstance(tables_in, list):
            raise ConfigError(source, "'tables' must be an array")
        for table in tables_in:
            if (
                not isinstance(table, dict)
                or not isinstance(table.get("name"), str)
                or not isinstance(table.get("columns") or [], list)
            ):
                raise ConfigError(source, "every table needs a 'name' and a 'columns' array")
            columns = []
            for column in table.get("columns") or []:
                data_type = (
                    canonical_type(column.get("dataType")) if isinstance(column, dict) else None
                )
                if data_type is None or not isinstance(column.get("name"), str):
                    raise ConfigError(
                        source,
                        f"table {table['name']!r}: column {column!r} needs a 'name' and a "
                        "dataType of Int64, Double, Decimal, Boolean, DateTime or String",
                    )
                columns.append(Column(column["name"], data_type))
            if not columns:
                raise ConfigError(source, f"table {table['name']!r} has no columns")
            if len(columns) > limits.MAX_COLUMNS:
                raise ConfigError(
                    source, f"table {table['name']!r} has more than {limits.MAX_COLUMNS} columns"
                )
            tables[table["name"]] = TableSchema(table["name"], tuple(columns))
        if not tables or len(tables) > limits.MAX_TABLES:
            raise ConfigError(source, f"a dataset needs 1 to {limits.MAX_TABLES} tables")
        return cls(body["name"], body, tables)


def load_definitions(directory: Path) -> dict[str, DatasetDefinition]:
    """Every ``*.json`` definition in ``directory``, by dataset name (not the ingest profiles,
    ``*.profile.json``, nor the routing files, ``*.destinations.json``, that may stand beside
    them: see :mod:`shared.engine.profile` and :mod:`shared.engine.routing`)."""
    definitions: dict[str, DatasetDefinition] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name.endswith((".profile.json", ".destinations.json")):
            continue
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(path), f"cannot read the definition: {exc}") from exc
        definition = DatasetDefinition.from_body(body, str(path))
        if definition.name in definitions:
            raise ConfigError(str(path), f"a second definition of dataset {definition.name!r}")
        definitions[definition.name] = definition
    return definitions
