"""Streaming readers for uploaded files: CSV, NDJSON and JSON, each optionally gzip-compressed.

Readers take an iterator of byte chunks (a blob download's ``chunks()``, a file read in blocks)
and yield rows one at a time, so memory stays flat whatever the file size. A part of the file
that cannot be read becomes an :class:`Unreadable` item (with its line and the reason) in the
same stream, and reading goes on where it can: the good rows of a damaged file still arrive, and
the rest is dead-lettered with the reason.

- CSV: the first row is the header (or the profile names the columns); the delimiter is
  detected from the first line (``,`` ``;`` tab ``|``) unless the profile gives it; values stay
  text and the table schema coerces them.
- NDJSON: one JSON object per line.
- JSON: an array of rows, or ``{"rows": [...]}`` (parsed incrementally with ijson).
- gzip: by a ``.gz`` extension, a gzip content type or the gzip magic bytes; the decompressed
  size is capped (``max_bytes``) so a zip bomb is refused, not unpacked.
- Text is UTF-8, with or without a byte-order mark, or UTF-16 with one; a profile may declare
  cp1252 or latin-1 (any byte is valid in them, so they are never guessed). Other encodings
  are turned into UTF-8 as the chunks stream past.

The reader's settings come from the table's ingest profile (:mod:`shared.engine.profile`).
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import re
import types
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from itertools import chain, repeat
from typing import Any

import ijson
import msgspec

from shared.contracts import Unreadable
from shared.engine.profile import DELIMITERS, CsvDialect, TableProfile
from shared.engine.schema import LINE_KEY

FORMATS = ("csv", "ndjson", "json")
#: Decompressed bytes allowed per file by default (a 1 GB CSV compresses to ~100 MB).
DEFAULT_MAX_BYTES = 20 * 1024**3
_GZIP_MAGIC = b"\x1f\x8b"
#: Rows are flat; JSON nested deeper than this is refused (and not built).
MAX_JSON_DEPTH = 64
#: Lines turned into rows at a time (of a chunk read whole): the rows of a piece are still in
#: the CPU's cache when the engine validates them (a 1 MiB chunk is 12,000 rows of the bench).
#: 128 and 512 measured alike within the noise of a shared machine (figure 1 CSV: 2.05x to
#: 2.32x in four runs with 128, 1.90x and 2.35x with 512); 1,000-row blocks of whole chunks
#: were about 10% slower.
_PIECE_LINES = 128
#: A CSV or NDJSON line longer than this is refused: a file without newlines must not be held
#: in memory whole.
MAX_LINE_BYTES = 16 * 1024 * 1024


_PLAIN = CsvDialect()


class FormatError(ValueError):
    """The file's kind cannot be told, or its compression is unusable from the start."""


def detect(name: str, content_type: str | None = None) -> tuple[str, bool]:
    """``(format, gzipped)`` from the file name (``x.csv.gz``), else its content type."""
    lower = name.lower()
    gzipped = lower.endswith(".gz") or (content_type or "").lower() in (
        "application/gzip",
        "application/x-gzip",
    )
    stem = lower[:-3] if lower.endswith(".gz") else lower
    for suffix, kind in (
        (".csv", "csv"),
        (".tsv", "csv"),  # the delimiter is found from the first line
        (".tab", "csv"),
        (".ndjson", "ndjson"),
        (".jsonl", "ndjson"),
        (".json", "json"),
    ):
        if stem.endswith(suffix):
            return kind, gzipped
    by_type = {
        "text/csv": "csv",
        "text/tab-separated-values": "csv",
        "application/x-ndjson": "ndjson",
        "application/ndjson": "ndjson",
        "application/jsonl": "ndjson",
        "application/json": "json",
    }.get((content_type or "").split(";")[0].strip().lower())
    if by_type is None:
        raise FormatError(
            f"cannot tell the format of {name!r}: name it .csv (.tsv), .ndjson or .json "
            "(optionally .gz), or set its content type"
        )
    return by_type, gzipped


def read_rows(
    chunks: Iterable[bytes],
    kind: str,
    gzipped: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    profile: TableProfile | None = None,
) -> Iterator[dict[str, Any] | Unreadable | Any]:
    """Rows (and :class:`Unreadable` items) from a file of ``kind``, read chunk by chunk.

    The table's ``profile`` gives the encoding (None: UTF-8, or UTF-16 by its byte-order
    mark) and the CSV dialect; when it derives a line number, each CSV and NDJSON row carries
    the line it starts on under :data:`~shared.engine.schema.LINE_KEY`."""
    encoding = profile.encoding if profile is not None else None
    dialect = profile.csv if profile is not None else _PLAIN
    numbered = profile is not None and profile.numbered
    data = _Peekable(chunks)
    if gzipped or data.peek(len(_GZIP_MAGIC)).startswith(_GZIP_MAGIC):
        data = _Peekable(_gunzip(data, max_bytes))
    else:
        data = _Peekable(_capped(data, max_bytes))
    data = _transcoded(data, encoding)
    if kind == "csv":
        return chain.from_iterable(_csv(data, dialect, numbered))
    if kind == "ndjson":
        return chain.from_iterable(_ndjson(data, numbered))
    if kind == "json":
        return _json(data)
    raise FormatError(f"unknown format {kind!r}; use one of {', '.join(FORMATS)}")


class _Peekable:
    """A chunk iterator whose first non-empty chunk can be looked at before reading."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._head: bytes | None = None

    def peek(self, size: int = 1) -> bytes:
        """At least ``size`` bytes from the start (fewer only at the end of the stream)."""
        if self._head is None:
            self._head = b""
        while len(self._head) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._head += chunk
        return self._head

    def __iter__(self) -> Iterator[bytes]:
        head = self.peek()
        if head:
            yield head
        yield from self._chunks


class _StreamFailure(Exception):
    """The stream cannot go on: the rest of the file is one final Unreadable."""


class _TooBig(_StreamFailure):
    pass


class _Truncated(_StreamFailure):
    pass


class _BadText(_StreamFailure):
    pass


_NAMES = {"utf-16": "UTF-16", "cp1252": "cp1252 (Windows-1252)", "latin-1": "latin-1"}


def _transcoded(data: _Peekable, encoding: str | None) -> _Peekable:
    """``data`` as UTF-8: as it is when it already is (no BOM, or a UTF-8 one), else decoded
    from ``encoding`` (or from UTF-16 when a UTF-16 byte-order mark starts it) and encoded
    again, chunk by chunk."""
    return _Peekable(_recode(data, encoding))


def _recode(data: _Peekable, encoding: str | None) -> Iterator[bytes]:
    if encoding in (None, "utf-8-sig", "utf-8"):
        # Looked at on the first read, not before: a stream that fails at once must fail
        # inside the reader, which turns it into an Unreadable.
        if not data.peek(2).startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            yield from data
            return
        encoding = "utf-16"
    assert encoding is not None
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    for chunk in data:
        state = decoder.getstate()
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            # The text before the bad byte still goes on (its rows arrive, as with any damaged
            # file): decode up to it from the state before this chunk (exc.start counts the
            # bytes a buffered decoder held back too).
            cut = max(0, exc.start - len(state[0]))
            decoder.setstate(state)
            good = decoder.decode(chunk[:cut])
            if good:
                yield good.encode("utf-8")
            raise _BadText(
                f"the file is not {_NAMES.get(encoding, encoding)} text (byte "
                f"{offset + cut:,}); declare its encoding in the table's profile"
            ) from None
        offset += len(chunk)
        if text:
            yield text.encode("utf-8")
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _BadText(
            f"the file is not {_NAMES.get(encoding, encoding)} text: it ends inside a character"
        ) from None
    if tail:
        yield tail.encode("utf-8")


def _capped(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > max_bytes:
            raise _TooBig(f"the file is larger than {max_bytes:,} bytes")
        yield chunk


def _gunzip(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    """Decompress gzip (concatenated members too), never producing more than ``max_bytes``."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    fed = False  # whether the current member has had any input
    produced = 0
    for chunk in chunks:
        pending = chunk
        while pending:
            fed = True
            try:
                out = inflater.decompress(pending, 1 << 20)
            except zlib.error as exc:
                raise _Truncated(f"the gzip data is corrupt ({exc})") from None
            produced += len(out)
            if produced > max_bytes:
                raise _TooBig(
                    f"the file decompresses to more than {max_bytes:,} bytes (a zip bomb?)"
                )
            if out:
                yield out
            if inflater.eof:
                pending = inflater.unused_data
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
                fed = False
            else:
                pending = inflater.unconsumed_tail
    if fed and not inflater.eof:
        raise _Truncated("the gzip data ends early: the file is truncated")


def _line_blocks(data: Iterable[bytes]) -> Iterator[tuple[int, bytes] | Unreadable]:
    """Whole lines, a chunk's worth at a time: ``(number of the first line, the lines joined
    by b"\\n", without the last newline)``; a stream failure becomes a final Unreadable. A
    line longer than ``MAX_LINE_BYTES`` is reported (an Unreadable that stands for that line)
    and skipped rather than held in memory."""
    number = 0  # lines passed on (or skipped) so far
    rest = b""
    skipping = False
    try:
        for chunk in data:
            rest += chunk
            cut = rest.rfind(b"\n")
            if cut >= 0:
                block = rest[:cut]
                rest = rest[cut + 1 :]
                whole = True  # the block holds at least one line to pass on
                if skipping:  # the end of the long line: skipped
                    number += 1
                    skipping = False
                    _, newline, block = block.partition(b"\n")
                    whole = bool(newline)
                if whole:
                    yield number + 1, block
                    number += block.count(b"\n") + 1
            if len(rest) > MAX_LINE_BYTES:
                if not skipping:
                    yield Unreadable(
                        f"line {number + 1} is longer than {MAX_LINE_BYTES:,} bytes",
                        line=number + 1,
                    )
                skipping = True
                rest = b""
    except _StreamFailure as exc:
        yield Unreadable(str(exc), line=number + 1, final=True)
        return
    if rest and not skipping:
        yield number + 1, rest


def _decode(raw: bytes, number: int) -> str | Unreadable:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(
            f"line {number} is not UTF-8 (byte {exc.start}): save the file as UTF-8, or "
            'declare its encoding in the table\'s profile ("encoding": "cp1252")',
            raw[:200].decode("utf-8", errors="replace"),
            number,
        )
    return text.removeprefix("\ufeff") if number == 1 else text


#: msgspec parses JSON in C, about seven times faster than json.loads a line; it refuses
#: everything json.loads refuses and some things it accepts (NaN and Infinity literals,
#: numbers beyond a double): a chunk with any refused line is read again line by line with
#: json.loads, so what comes out is always what json.loads gives.
_decode_json = msgspec.json.Decoder().decode


def _ndjson(data: Iterable[bytes], numbered: bool = False) -> Iterator[list[Any]]:
    """The rows of each chunk's lines, in lists of up to ``_PIECE_LINES`` lines (read_rows
    chains them: a row then passes through no Python frame)."""
    for item in _line_blocks(data):
        if isinstance(item, Unreadable):
            yield [item]
            if item.final:
                return
            continue
        first, block = item
        lines = block.split(b"\n")
        for start in range(0, len(lines), _PIECE_LINES):
            piece = lines[start : start + _PIECE_LINES]
            number = first + start
            try:
                # One value a line (msgspec's own decode_lines would take "1 2" as two).
                if number == 1:
                    piece[0] = piece[0].removeprefix(codecs.BOM_UTF8)
                rows = list(map(_decode_json, piece))
            except (msgspec.MsgspecError, ValueError, RecursionError):
                yield _ndjson_lines(lines[start : start + _PIECE_LINES], number, numbered)
                continue
            if numbered:
                for line, row in enumerate(rows, number):
                    if type(row) is dict:
                        row[LINE_KEY] = line
            yield rows


def _ndjson_lines(lines: list[bytes], first: int, numbered: bool = False) -> list[Any]:
    """Lines one by one with json.loads, as they always were read."""
    out: list[Any] = []
    for number, raw in enumerate(lines, first):
        text = _decode(raw.rstrip(b"\r"), number)
        if isinstance(text, Unreadable):
            out.append(text)
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError) as exc:
            out.append(Unreadable(f"line {number} is not JSON: {exc}", text[:200], number))
            continue
        if numbered and type(row) is dict:
            row[LINE_KEY] = number
        out.append(row)
    return out


def _skipped(
    blocks: Iterator[tuple[int, bytes] | Unreadable], count: int
) -> Iterator[tuple[int, bytes] | Unreadable]:
    """``blocks`` without their first ``count`` lines (a title, notes above the header)."""
    for item in blocks:
        if count and not isinstance(item, Unreadable):
            first, block = item
            while count:
                _, newline, block = block.partition(b"\n")
                count -= 1
                first += 1
                if not newline:
                    break
            else:
                yield first, block
            continue
        yield item


def _sniff(line: bytes, quote: str) -> str:
    """The delimiter of a CSV file from its first line: the candidate found most often
    outside quotes (``,`` when none is found, or on a tie with it)."""
    q = re.escape(quote.encode())
    bare = re.sub(q + b"[^" + q + b"]*" + q, b"", line)
    counts = [(bare.count(d.encode()), -n, d) for n, d in enumerate(DELIMITERS)]
    best = max(counts)
    return best[2] if best[0] else ","


def _csv(
    data: Iterable[bytes], dialect: CsvDialect = _PLAIN, numbered: bool = False
) -> Iterator[list[Any]]:
    """Rows as dicts by the header, in lists (read_rows chains them). A chunk of plain lines
    (no quote, no carriage return, valid UTF-8, no field longer than csv allows) is split on
    the delimiter directly, which is what csv.reader does with such lines; anything else goes
    through csv.reader line by line."""
    problems: list[Unreadable] = []
    blocks = _line_blocks(data)
    if dialect.skip_lines:
        blocks = _skipped(blocks, dialect.skip_lines)
    queued: deque[tuple[int, bytes] | Unreadable] = deque()  # taken before the next block
    lines: deque[tuple[int, bytes]] = deque()  # lines not yet given to csv.reader
    # Lines not given to csv.reader (skipped, or split directly): its line_num does not count
    # them.
    split_lines = dialect.skip_lines
    delimiter = dialect.delimiter
    if delimiter is None:
        head = next(blocks, None)
        if head is not None:
            queued.append(head)
        delimiter = (
            _sniff(head[1].partition(b"\n")[0], dialect.quote) if isinstance(head, tuple) else ","
        )

    def text_lines() -> Iterator[str]:
        while True:
            while lines:
                number, raw = lines.popleft()
                text = _decode(raw.rstrip(b"\r"), number)
                if isinstance(text, Unreadable):
                    problems.append(text)
                    yield ""  # keep csv's line count in step; an empty line is skipped
                    continue
                yield text + "\n"
            item = queued.popleft() if queued else next(blocks, None)
            if item is None:
                return
            if isinstance(item, Unreadable):
                problems.append(item)
                if item.final:
                    return
                yield ""  # keep csv's line count in step
                continue
            first, block = item
            lines.extend(enumerate(block.split(b"\n"), first))

    reader = csv.reader(text_lines(), strict=True, delimiter=delimiter, quotechar=dialect.quote)
    header: list[str] | None = None if dialect.header else list(dialect.column_names)
    while True:
        if not lines:  # csv.reader is between records: the next chunk may be split
            item = queued.popleft() if queued else next(blocks, None)
            if item is not None and not isinstance(item, Unreadable):
                first, block = item
                if header is None:
                    # The header line goes through csv.reader; the rest may be split.
                    head_line, newline, after = block.partition(b"\n")
                    if newline:
                        queued.appendleft((first + 1, after))
                    queued.appendleft((first, head_line))
                else:
                    pieces = _split_csv(block, first, header, delimiter, dialect.quote, numbered)
                    if pieces is None:
                        queued.appendleft(item)
                    else:
                        split_lines += block.count(b"\n") + 1
                        yield from pieces
                        continue
            elif item is not None:
                queued.appendleft(item)
        record: list[str] | None = None
        failure: Unreadable | None = None
        finished = False
        start = reader.line_num + split_lines + 1  # the line the next record begins on
        try:
            record = next(reader)
        except StopIteration:
            finished = True
        except csv.Error as exc:
            line = reader.line_num + split_lines
            failure = Unreadable(
                f"{_lines_named(start, line)}: {exc}{_spanned(start, line)}", line=line
            )
        if problems:
            yield problems[:]
            problems.clear()
        if finished:
            return
        if failure is not None:
            yield [failure]
            continue
        if not record or record == [""]:
            continue
        if header is None:
            header = [name.strip() for name in record]
            if dialect.column_names:
                if len(dialect.column_names) != len(header):
                    yield [
                        Unreadable(
                            f"the header row has {len(header)} fields, but the profile's "
                            f"csv.columnNames gives {len(dialect.column_names)} names",
                            line=start,
                            final=True,
                        )
                    ]
                    return
                header = list(dialect.column_names)
            if len(set(header)) != len(header) or "" in header:
                yield [Unreadable("the header row has empty or repeated column names", line=start)]
                return
            continue
        if len(record) != len(header):
            line = reader.line_num + split_lines
            yield [
                Unreadable(
                    f"{_lines_named(start, line)}: {len(record)} fields, but the header has "
                    f"{len(header)}{_spanned(start, line)}",
                    delimiter.join(record)[:200],
                    line,
                )
            ]
            continue
        row: dict[str, Any] = dict(zip(header, record, strict=True))
        if numbered:
            row[LINE_KEY] = start
        yield [row]


def _lines_named(start: int, end: int) -> str:
    return f"line {end}" if end <= start else f"lines {start}-{end}"


def _spanned(start: int, end: int) -> str:
    """What a record over several lines means: a quote opened on ``start`` and not closed on
    its line took the lines after it into one field, so none of them is a row of its own. Said
    in the dead letter, so that those lines are not lost without a word."""
    if end <= start:
        return ""
    return (
        f" (a quoted field opened on line {start} runs to line {end}: those "
        f"{end - start + 1:,} lines are this one item, not rows; check the quotes on line "
        f"{start})"
    )


def _split_csv(
    block: bytes,
    first: int,
    header: list[str],
    delimiter: str = ",",
    quote: str = '"',
    numbered: bool = False,
) -> Iterator[list[Any]] | None:
    """The rows (and Unreadables) of a chunk of lines, in lists of up to ``_PIECE_LINES``
    lines, if they can be split on the delimiter without csv.reader, else None."""
    if quote.encode() in block or b"\r" in block:
        return None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    texts = text.split("\n")
    if len(text) > csv.field_size_limit() and max(map(len, texts)) > csv.field_size_limit():
        return None  # csv.reader refuses a field that long: let it say so
    return _split_pieces(texts, first, header, delimiter, numbered)


def _split_pieces(
    texts: list[str], first: int, header: list[str], delimiter: str, numbered: bool
) -> Iterator[list[Any]]:
    make = _row_maker(tuple(header))
    commas = {len(header) - 1}
    for start in range(0, len(texts), _PIECE_LINES):
        piece = texts[start : start + _PIECE_LINES]
        # Every line with the header's number of fields (an empty line is skipped, not a
        # row; with more than one column its delimiter count already says so): then the
        # piece's fields, split at once, fall into rows in order. Rows that carry their line
        # number go line by line.
        if (
            not numbered
            and set(map(str.count, piece, repeat(delimiter))) == commas
            and (commas != {0} or "" not in piece)
        ):
            yield make(delimiter.join(piece).split(delimiter))
        else:
            yield _split_lines(piece, first + start, header, delimiter, numbered)


def _split_lines(
    texts: list[str], first: int, header: list[str], delimiter: str = ",", numbered: bool = False
) -> list[Any]:
    """Lines split on the delimiter one by one: rows, Unreadables for wrong field counts."""
    width = len(header)
    out: list[Any] = []
    for number, line in enumerate(texts, first):
        record = line.split(delimiter)
        if record == [""]:
            continue
        if len(record) != width:
            out.append(
                Unreadable(
                    f"line {number}: {len(record)} fields, but the header has {width}",
                    line[:200],
                    number,
                )
            )
            continue
        row: dict[str, Any] = dict(zip(header, record, strict=True))
        if numbered:
            row[LINE_KEY] = number
        out.append(row)
    return out


@functools.lru_cache(maxsize=64)
def _row_maker(header: tuple[str, ...]) -> Callable[[list[str]], list[dict[str, Any]]]:
    """A function, generated once per header, from the fields of whole rows (in one list) to
    the rows' dicts. A comprehension that takes the fields ``len(header)`` at a time (zip
    reuses its tuple) into names and builds a dict display with constant keys is about twice
    as fast as ``dict(zip(header, line.split(",")))`` a line: no call and no list a row, and
    the dict is built at its final size. The code is compiled with placeholder keys "k0",
    "k1"... whose constant tuple is then swapped for the header: no column name is ever in
    the source text."""
    width = len(header)
    names = [f"v{n}" for n in range(width)]
    placeholders = tuple(f"k{n}" for n in range(width))
    display = ", ".join(f"{key!r}: {name}" for key, name in zip(placeholders, names, strict=True))
    source = (
        "def make(fields):\n"
        "    it = iter(fields)\n"
        f"    return [{{{display}}} for {', '.join(names)}, in zip({', '.join(['it'] * width)})]\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, "<csv row maker>", "exec"), namespace)  # see above
    maker = namespace["make"]
    maker.__code__ = _swap_constant(maker.__code__, placeholders, header)
    if maker(list(placeholders)) != [dict(zip(header, placeholders, strict=True))]:
        # This Python did not compile the keys as one constant: build the dicts with zip.
        def zipped(fields: list[str]) -> list[dict[str, Any]]:
            return [
                dict(zip(header, fields[at : at + width], strict=True))
                for at in range(0, len(fields), width)
            ]

        return zipped
    made: Callable[[list[str]], list[dict[str, Any]]] = maker
    return made


def _swap_constant(code: types.CodeType, old: tuple[str, ...], new: tuple[str, ...]) -> Any:
    """``code`` (and the code objects nested in it) with the constant ``old`` replaced."""
    consts = tuple(
        new
        if const == old
        else _swap_constant(const, old, new)
        if isinstance(const, types.CodeType)
        else const
        for const in code.co_consts
    )
    return code.replace(co_consts=consts)


class _ChunkReader(io.RawIOBase):
    """A file-like view of a chunk iterator, for ijson."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _json(data: _Peekable) -> Iterator[Any]:
    try:
        size = len(codecs.BOM_UTF8) + 1
        while True:
            head = data.peek(size)
            first = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
            if first or len(head) < size:
                break
            size = len(head) + 1
    except _StreamFailure as exc:
        yield Unreadable(f"after row 0: {exc}")
        return
    if first not in (b"[", b"{"):
        yield Unreadable('a JSON file must hold an array of rows or {"rows": [...]}', line=1)
        return

    def without_bom() -> Iterator[bytes]:
        first_chunk = True
        for chunk in data:
            yield chunk.removeprefix(codecs.BOM_UTF8) if first_chunk else chunk
            first_chunk = False

    count = 0
    try:
        for item in _items(_ChunkReader(without_bom()), rows_key=first == b"{"):
            count += 1
            yield item
    except _TooDeep as exc:
        yield Unreadable(f"after row {count}: {exc}")
    except _StreamFailure as exc:
        yield Unreadable(f"after row {count}: {exc}")
    except (ijson.JSONError, ValueError, UnicodeDecodeError) as exc:
        yield Unreadable(f"the JSON is invalid after row {count}: {exc}")


class _TooDeep(Exception):
    pass


def _items(stream: io.RawIOBase, *, rows_key: bool) -> Iterator[Any]:
    """The rows of ``[...]`` (or of ``{"rows": [...]}``), built from ijson's basic events.

    Not ``ijson.items``: it keeps a dotted prefix string per nesting level, so memory grows
    with the square of the depth (a 20 KB file nested 10,000 deep took 240 MiB). Here nesting
    past ``MAX_JSON_DEPTH`` is refused, only rows are built (other keys are skipped), numbers
    come back as int or float, and an integer too large for 64 bits stays an int.
    """
    rows_depth = 2 if rows_key else 1  # how many containers enclose a row
    stack: list[Any] = []  # open containers; None where nothing is being built
    keys: list[Any] = []
    in_rows = not rows_key
    for event, value in ijson.basic_parse(stream):
        depth = len(stack)
        if event in ("start_map", "start_array"):
            if depth >= MAX_JSON_DEPTH:
                raise _TooDeep(f"the JSON nests more than {MAX_JSON_DEPTH} levels deep")
            container: Any = None
            if in_rows and depth >= rows_depth:
                container = {} if event == "start_map" else []
                if depth > rows_depth:
                    _add(stack, keys, container)
            stack.append(container)
            keys.append(None)
        elif event in ("end_map", "end_array"):
            done = stack.pop()
            keys.pop()
            if in_rows and depth - 1 == rows_depth:
                yield done
            elif rows_key and depth == 2 and event == "end_array":
                in_rows = False  # the rows array is over; anything after it is skipped
        elif event == "map_key":
            keys[-1] = value
            if rows_key and depth == 1:
                in_rows = value == "rows"
        elif in_rows and depth >= rows_depth:
            scalar = float(value) if isinstance(value, Decimal) else value
            if depth == rows_depth:
                yield scalar  # a row that is not an object: validation says so
            else:
                _add(stack, keys, scalar)


def _add(stack: list[Any], keys: list[str | None], value: Any) -> None:
    parent = stack[-1]
    if isinstance(parent, list):
        parent.append(value)
    else:
        parent[keys[-1]] = value
