"""``python -m shared infer FILE --dataset D --table T [--out DIR]``: a dataset definition and
an ingest profile for a file, from a sample of it.

It reads the first :data:`SAMPLE_BYTES` of the file (gzip too), tells its kind (CSV, NDJSON,
JSON), its encoding and, for CSV, its delimiter and whether it has a header row; then, column
by column, the narrowest Power BI type that reads every sampled value (Boolean, Int64, Double,
DateTime, else String), the null tokens it met (``NA``, ``-``, ...), the date-time pattern, the
decimal and thousands separators, the boolean words. What it had to choose between is said in
``notes``: ``01/02/2020`` read as MM/dd/yyyy because no day above 12 was seen, a column of
``0``/``1`` taken as whole numbers, codes with leading zeros kept as text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.engine.profile import DELIMITERS, PROFILE_SUFFIX
from shared.engine.textvalues import DEFAULT_NULL_TOKENS, compile_datetime, compile_number
from shared.errors import ValidationError

#: How much of the (decompressed) file is read: enough for thousands of rows, little memory.
SAMPLE_BYTES = 1024 * 1024
#: Tokens that mean "no value" in files from R, pandas, databases and spreadsheets.
NULL_CANDIDATES = DEFAULT_NULL_TOKENS | {"NaN", "nan", "None", "none", "-", "?", "n/a", "#N/A"}
#: Values a text column reads as null when inferred: what database exports write for null.
TEXT_NULL_MARKERS = frozenset({"NULL", "\\N"})
#: Pairs of boolean words; a column whose every value is one of a pair is Boolean.
BOOLEAN_PAIRS = (("true", "false"), ("yes", "no"), ("y", "n"), ("t", "f"))
#: Date-time patterns tried, in order; the first that reads every value wins. Where two read
#: every value (01/02/2020), the first is chosen and the choice is noted.
DATE_PATTERNS = (
    "yyyy/MM/dd",
    "yyyy/M/d",
    "yyyy/MM/dd HH:mm:ss",
    "yyyy-MM-dd HH:mm",
    "dd.MM.yyyy",
    "d.M.yyyy",
    "dd.MM.yyyy HH:mm",
    "dd.MM.yyyy HH:mm:ss",
    "MM/dd/yyyy",
    "M/d/yyyy",
    "dd/MM/yyyy",
    "d/M/yyyy",
    "MM/dd/yyyy HH:mm",
    "MM/dd/yyyy HH:mm:ss",
    "dd/MM/yyyy HH:mm",
    "dd/MM/yyyy HH:mm:ss",
    "M/d/yyyy h:mm tt",
    "M/d/yyyy h:mm:ss tt",
    "MMM d yyyy",
    "MMM d, yyyy",
    "MMMM d, yyyy",
    "MMMM d yyyy",
    "d MMM yyyy",
    "d MMMM yyyy",
    "dd-MMM-yyyy",
    "dd-MMM-yy",
    "yyyyMMdd",
)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class InferError(ValidationError):
    """The sample cannot be read as a table (empty, not CSV/NDJSON/JSON rows)."""


@dataclass
class Inference:
    """What was found: a Create Dataset body, a profile entry for the table, and notes."""

    kind: str
    definition: dict[str, Any]
    profile: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    rows_sampled: int = 0


def read_sample(path: Path, limit: int = SAMPLE_BYTES) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of the file, decompressed if it is gzip; and whether the
    file went on past them."""
    with path.open("rb") as handle:
        head = handle.read(2)
        handle.seek(0)
        if head == b"\x1f\x8b":
            inflater = zlib.decompressobj(wbits=47)
            out = b""
            while len(out) < limit:
                chunk = handle.read(64 * 1024)
                if not chunk:
                    break
                out += inflater.decompress(chunk, limit - len(out))
            return out[:limit], len(out) >= limit
        data = handle.read(limit + 1)
        return data[:limit], len(data) > limit


def decode(sample: bytes, notes: list[str]) -> tuple[str, str | None]:
    """The sample as text, and the encoding a profile must declare (None: UTF-8 or a BOM,
    which the readers recognise)."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return sample.decode("utf-16", errors="ignore"), None
    try:
        return sample.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3:  # a character cut by the sample's end
            return sample[: exc.start].decode("utf-8-sig"), None
    notes.append("not UTF-8: read as cp1252 (Windows Western European); declared as encoding")
    return sample.decode("cp1252", errors="replace"), "cp1252"


def infer(
    sample: bytes, name: str, dataset: str, table: str, *, truncated: bool = False
) -> Inference:
    """Infer a definition and a profile from ``sample`` (the start of the file ``name``)."""
    notes: list[str] = []
    text, encoding = decode(sample, notes)
    if truncated and "\n" in text:
        text = text[: text.rindex("\n") + 1]  # the last line may be cut
    kind = _kind(name, text)
    entry: dict[str, Any] = {}
    if encoding:
        entry["encoding"] = encoding
    comma_first = False
    if kind == "csv":
        rows, columns, dialect = _csv_rows(text, notes)
        if dialect:
            entry["csv"] = dialect
        comma_first = dialect.get("delimiter") == ";"
    else:
        rows, columns = _json_rows(text, kind)
    if not rows:
        raise InferError(f"{name}: no rows found in the first {len(sample):,} bytes")
    found_tokens: set[str] = set()
    definition_columns = []
    value_options: dict[str, dict[str, Any]] = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        data_type, options, tokens = _column(column, values, notes, comma_first)
        definition_columns.append({"name": column, "dataType": data_type})
        if data_type != "String":
            found_tokens |= tokens
        else:
            # A database's null markers are not text anyone typed; "NA" may be (a name).
            markers = sorted({v for v in values if v in TEXT_NULL_MARKERS})
            if markers:
                options = {**options, "nullTokens": markers}
                notes.append(
                    f"{column}: {', '.join(markers)} read as null in this text column (a "
                    "database's null marker); remove its nullTokens to keep them as text"
                )
        if options:
            value_options[column] = options
    extra = found_tokens - DEFAULT_NULL_TOKENS
    if extra:
        entry["nullTokens"] = sorted(DEFAULT_NULL_TOKENS | extra)
        notes.append(f"null tokens beyond the defaults: {sorted(extra)}")
    if value_options:
        entry["columns"] = value_options
    definition = {
        "name": dataset,
        "defaultMode": "Push",
        "tables": [{"name": table, "columns": definition_columns}],
    }
    return Inference(kind, definition, {"tables": {table: entry}}, notes, len(rows))


def _kind(name: str, text: str) -> str:
    lower = name.lower().removesuffix(".gz")
    for suffix, kind in ((".csv", "csv"), (".ndjson", "ndjson"), (".jsonl", "ndjson")):
        if lower.endswith(suffix):
            return kind
    stripped = text.lstrip()
    if lower.endswith(".json") or stripped.startswith("["):
        first_line = stripped.split("\n", 1)[0].strip()
        if stripped.startswith("{") and first_line.endswith("}") and "\n{" in stripped:
            return "ndjson"
        return "json"
    if stripped.startswith("{"):
        return "ndjson"
    return "csv"


def _csv_rows(
    text: str, notes: list[str]
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    lines = text.splitlines()[:200]
    best: tuple[float, str] | None = None
    for delimiter in DELIMITERS:
        counts = [len(r) for r in csv.reader(lines, delimiter=delimiter) if r]
        if not counts or max(counts) < 2:
            continue
        mode = max(set(counts), key=counts.count)
        score = counts.count(mode) / len(counts) + mode / 1000  # consistency, then width
        if best is None or score > best[0]:
            best = (score, delimiter)
    delimiter = best[1] if best else ","
    dialect: dict[str, Any] = {}
    if delimiter != ",":
        dialect["delimiter"] = delimiter
        notes.append(f"delimiter {delimiter!r} (detected; declared so no file is guessed)")
    skip = _title_lines(text, delimiter)
    if skip:
        dialect["skipLines"] = skip
        notes.append(
            f"the first {skip} line(s) have fewer fields than the rest (a title?): skipped"
        )
        text = "\n".join(text.split("\n")[skip:])
    records = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if not records:
        return [], [], dialect
    first = records[0]
    header = not any(_looks_like_data(cell) for cell in first) and len(set(first)) == len(first)
    if header:
        names = [cell.strip() or f"Column{n}" for n, cell in enumerate(first, 1)]
        body = records[1:]
    else:
        names = [f"Column{n}" for n in range(1, len(first) + 1)]
        body = records
        dialect["header"] = False
        dialect["columnNames"] = names
        notes.append("no header row (the first row holds numbers or dates): columns named")
    rows = [dict(zip(names, record, strict=False)) for record in body]
    return rows, names, dialect


def _title_lines(text: str, delimiter: str) -> int:
    """How many lines above the table are not part of it: a report's title and notes, which
    have fewer fields than the table's lines (at most 20 such lines, the table at least two
    columns wide)."""
    lines = text.split("\n")[:200]
    counts = [len(next(csv.reader([line], delimiter=delimiter), [])) for line in lines]
    present = [count for count in counts if count]
    if not present:
        return 0
    width = max(set(present), key=present.count)
    if width < 2:
        return 0
    first = next(n for n, count in enumerate(counts) if count == width)
    if first > 20 or any(count > width for count in counts[:first]):
        return 0
    return first


def _looks_like_data(cell: str) -> bool:
    text = cell.strip()
    return bool(text) and (_FLOAT.fullmatch(text) is not None or _date_pattern([text]) is not None)


def _json_rows(text: str, kind: str) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    if kind == "ndjson":
        for line in text.splitlines():
            if line.strip():
                try:
                    value = json.loads(line)
                except ValueError:
                    continue  # a damaged line: the readers dead-letter it
                if isinstance(value, dict):
                    rows.append(value)
    else:
        value = _json_prefix(text)
        rows = [row for row in value if isinstance(row, dict)]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def _json_prefix(text: str) -> list[Any]:
    """The rows of a JSON array (or ``{"rows": [...]}``) that the sample holds whole."""
    try:
        value = json.loads(text)
    except ValueError:
        decoder = json.JSONDecoder()
        start = text.find("[")
        rows: list[Any] = []
        position = start + 1
        while start >= 0:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            try:
                row, position = decoder.raw_decode(text, position)
            except ValueError:
                break
            rows.append(row)
        return rows
    if isinstance(value, dict):
        value = value.get("rows", [])
    return value if isinstance(value, list) else []


def _column(
    name: str, values: Sequence[Any], notes: list[str], comma_first: bool = False
) -> tuple[str, dict[str, Any], set[str]]:
    """(type, value options, null tokens met) for one column's sampled values."""
    tokens = {v for v in values if isinstance(v, str) and v.strip() in NULL_CANDIDATES}
    present = [v for v in values if v is not None and v not in tokens]
    if not present:
        notes.append(f"{name}: no values in the sample; String")
        return "String", {}, tokens
    if all(isinstance(v, bool) for v in present):
        return "Boolean", {}, tokens
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64", {}, tokens
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "Double", {}, tokens
    if not all(isinstance(v, str) for v in present):
        notes.append(f"{name}: values of several JSON types; String")
        return "String", {}, set()
    texts = [v.strip() for v in present]
    found = _typed_text(name, texts, notes, comma_first)
    if found is None:
        return "String", {}, set()
    return found[0], found[1], tokens


def _separators(comma_first: bool) -> list[tuple[str, str | None]]:
    """(decimal, thousands) readings to try, in order. A file split by ';' comes from a locale
    whose decimal separator is ',' (Excel picks ';' for CSV there), so ``1.234`` is read as a
    thousand before it is read as one and a bit."""
    point: list[tuple[str, str | None]] = [(".", None), (".", ",")]
    comma: list[tuple[str, str | None]] = [(",", None), (",", "."), (",", " ")]
    return comma + point if comma_first else point + comma


def _typed_text(
    name: str, texts: Sequence[str], notes: list[str], comma_first: bool = False
) -> tuple[str, dict[str, Any]] | None:
    lowered = {t.lower() for t in texts}
    for true, false in BOOLEAN_PAIRS:
        if lowered <= {true, false} and lowered != {true} and lowered != {false}:
            if true == "true":
                return "Boolean", {}
            return "Boolean", {"trueWords": [true], "falseWords": [false]}
    if all(_INT.fullmatch(t) for t in texts):
        if any(len(t.lstrip("+-")) > 1 and t.lstrip("+-").startswith("0") for t in texts):
            notes.append(f"{name}: whole numbers with leading zeros (codes?); kept as String")
            return None
        if lowered <= {"0", "1"}:
            notes.append(f"{name}: only 0 and 1; taken as Int64 (declare trueWords for Boolean)")
        if any(not -(2**63) < int(t) < 2**63 - 1 for t in texts):
            notes.append(f"{name}: whole numbers beyond Int64; Double")
            return "Double", {}
        return "Int64", {}
    for decimal, thousands in _separators(comma_first):
        read = compile_number(decimal, thousands)
        try:
            numbers = [read(t) for t in texts]
        except ValueError:
            continue
        options: dict[str, Any] = {}
        if decimal != ".":
            options["decimalSeparator"] = decimal
        if thousands and any(thousands in t for t in texts):
            options["thousandsSeparator"] = thousands
        if thousands and "thousandsSeparator" not in options:
            continue  # the plain reading already failed for another reason
        whole = all(_INT.fullmatch(n) for n in numbers)
        if options:
            notes.append(f"{name}: numbers written with {options}")
        return ("Int64" if whole else "Double"), options
    if _all_iso(texts):
        return "DateTime", {}
    pattern = _date_pattern(texts)
    if pattern is not None:
        # Only a pattern that reads the same text as another moment is worth a note
        # (MM/dd vs dd/MM), not one that differs in digits only (MM/dd vs M/d).
        chosen = [compile_datetime(pattern)(t) for t in texts]
        others = [
            p
            for p in DATE_PATTERNS
            if p != pattern
            and _reads_all(p, texts)
            and [compile_datetime(p)(t) for t in texts] != chosen
        ]
        if others:
            notes.append(
                f"{name}: {texts[0]!r} fits {pattern!r} and {others[0]!r}; chose {pattern!r} "
                "(no value tells them apart in the sample)"
            )
        notes.append(f"{name}: dates like {pattern!r}, naive, taken as UTC (set timeZone)")
        return "DateTime", {"dateFormats": [pattern]}
    return None


def _all_iso(texts: Iterable[str]) -> bool:
    try:
        for text in texts:
            if len(text) < 10 or not text[:4].isdigit():
                return False
            datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _reads_all(pattern: str, texts: Sequence[str]) -> bool:
    read = compile_datetime(pattern)
    try:
        for text in texts:
            read(text)
    except ValueError:
        return False
    return True


def _date_pattern(texts: Sequence[str]) -> str | None:
    return next((p for p in DATE_PATTERNS if _reads_all(p, texts)), None)


def write(inference: Inference, directory: Path) -> tuple[Path, Path]:
    """Write the definition and profile where ``DATASETS_DIR=directory`` finds them, adding
    the table to an existing definition (and profile) of the dataset. A table that exists
    with other columns is refused: the user decides."""
    directory.mkdir(parents=True, exist_ok=True)
    dataset = inference.definition["name"]
    (table,) = inference.definition["tables"]
    definition_path = directory / f"{dataset}.json"
    profile_path = directory / f"{dataset}{PROFILE_SUFFIX}"
    definition = _read_json(definition_path) or {**inference.definition, "tables": []}
    existing = {t["name"]: t for t in definition.get("tables", [])}
    if table["name"] in existing and existing[table["name"]] != table:
        raise InferError(
            f"{definition_path} already has a table {table['name']!r} with other columns; "
            "remove it or choose another table name"
        )
    existing[table["name"]] = table
    definition["tables"] = list(existing.values())
    profile = _read_json(profile_path) or {"tables": {}}
    profile.setdefault("tables", {}).update(inference.profile["tables"])
    definition_path.write_text(json.dumps(definition, indent=2) + "\n", encoding="utf-8")
    profile_path.write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")
    return definition_path, profile_path


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InferError(f"{path} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InferError(f"{path} is not a JSON object")
    return value


def report(inference: Inference) -> Mapping[str, Any]:
    """What the command prints: the definition, the profile and the notes."""
    return {
        "kind": inference.kind,
        "rowsSampled": inference.rows_sampled,
        "definition": inference.definition,
        "profile": inference.profile,
        "notes": inference.notes,
    }
