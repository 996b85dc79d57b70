"""Input files of records: NDJSON, a JSON array, or CSV; plain or gzip; `-` for stdin.

`read_items(path, csv_fields)` yields one `Item` per record with the line it starts on,
streaming: a JSON array is decoded element by element, never loaded whole. A record that
cannot be read (a line of invalid JSON, a CSV row of the wrong width, bytes that are not
UTF-8, a number too long, nesting too deep, a lone surrogate escape: see core.jsontext)
is an Item with an error, so the caller reports it and goes on with the next. Bytes that
are not UTF-8 are never replaced: they are decoded as surrogates and the record holding
them is refused.

NDJSON is read in chunks of whole lines (as much as the stream has, so stdin streams
line by line). A chunk of plain objects (every line begins with `{`, no `[` anywhere, no
deep nesting, no escape that may be a lone surrogate) is parsed by one `json.loads` as an
array. Any other chunk is decoded to text once and every line parsed in place by the
JSON module's C scanner, which must take it whole as exactly one value, then checked by
`jsontext.check`. A line the scanner does not take whole (blank, invalid, more than one
value) goes through `jsontext.loads` alone, so values, errors and line numbers are always
the same as one `jsontext.loads` per line (bench/inputs.py times both).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import stat
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import count, repeat
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from patientkit.core import interrupts, jsontext
from patientkit.core.jsontext import (
    ESCAPED_SURROGATE_BYTES,
    MAX_DEPTH,
    NOT_UTF8,
    RAW_SURROGATE,
    BadJson,
)
from patientkit.errors import UsageError, unreadable

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
JSON_SUFFIXES = (".json", ".ndjson", ".jsonl")
BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() removes: a line of only these is blank
# the array as a whole is broken (array_items' last item says so): nothing after is read
NOT_AN_ARRAY = "invalid JSON: expected '[' to start an array"
NOT_CLOSED = "invalid JSON: the array is not closed"
DATA_AFTER = "invalid JSON: data after the array"
NO_COMMA = "invalid JSON: expected ',' between elements"
REST_UNREAD = "; the rest of the array is unread"


class Item(NamedTuple):
    """One entry of an input: where it is (source, line), its value, and why it could not
    be read (None when it could)."""

    source: str
    line: int
    value: Any  # a JSON value, or a dict of strings for a CSV row
    error: str | None = None  # why the record could not be read


_item = partial(tuple.__new__, Item)  # Item from a 4-tuple, without Python-level __new__


READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def check_paths(paths: Iterable[str]) -> None:
    """Refuse up front (UsageError, exit 2) an input that is missing, a folder, or not
    readable. A pipe (`<(zcat …)`, a named pipe) is taken as it is: it is not opened here,
    since opening and closing it could cut off the program writing into it."""
    for path in paths:
        if path == "-":
            continue
        given = Path(path)
        if given.is_dir():
            raise UsageError(f"{path}: is a folder, not a file")
        if not given.exists():
            raise UsageError(f"{path}: no such file")
        if not os.access(given, os.R_OK):
            raise UsageError(f"{path}: cannot read it: Permission denied")


def open_input(path: str) -> IO[bytes]:
    """A buffered binary stream of a file or of stdin (`-`), gunzipped if it is gzip."""
    if path == "-":
        raw: IO[bytes] = waiting_stream(sys.stdin.buffer, owned=False)
    else:
        try:
            raw = waiting_stream(Path(path).open("rb"))  # noqa: SIM115 - read_items closes it
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a folder, not a file") from None
    stream = raw if hasattr(raw, "peek") else io.BufferedReader(cast(io.RawIOBase, raw))
    if stream.peek(2)[:2] == GZIP_MAGIC:
        return io.BufferedReader(_Steps(stream), CHUNK)
    return stream


def waiting_stream(stream: IO[bytes], owned: bool = True) -> IO[bytes]:
    """`stream` itself for a regular file (a read never waits long); for a pipe, FIFO,
    socket or terminal, a buffered stream whose reads are wait points that a Ctrl-C
    ends (core/interrupts.py: Python retries a read a signal interrupted, so a replay
    waiting on an idle pipe did not see its first Ctrl-C). Called before anything was
    read from `stream` (nothing is in its buffer)."""
    try:
        fd = stream.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return stream  # no file descriptor (a test's BytesIO): nothing waits
    raw = getattr(stream, "raw", None)
    if regular or raw is None or not hasattr(stream, "peek"):
        return stream
    waiting = io.BufferedReader(cast(io.RawIOBase, interrupts.Waiting(raw, owned)), CHUNK)
    if owned:
        cast(io.BufferedReader, stream).detach()  # the raw file is the new reader's now
    return cast(IO[bytes], waiting)


class _Steps(io.RawIOBase):
    """A gzip stream whose every raw read is one decompression step (`GzipFile.read1`).

    `GzipFile.read(n)` (what a buffered reader over a GzipFile calls) gathers several
    steps into one answer and drops what it gathered when a later step raises, so a
    truncated or corrupt gzip lost up to a chunk of whole records decompressed before
    the cut. Here a step either gives bytes or raises, so every byte decompressed before
    the error reaches the reader (who reads with `read1`, never gathering either)."""

    def __init__(self, compressed: IO[bytes]) -> None:
        self._compressed = compressed
        self._gz = gzip.GzipFile(fileobj=compressed, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._gz.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Close the gzip reader and the compressed stream under it (GzipFile leaves a
        stream it was given open: the file stayed open until collected)."""
        self._gz.close()
        self._compressed.close()
        super().close()


def _format(path: str, stream: IO[bytes]) -> str:
    """csv, array or ndjson: by the name's suffix (`.csv`; `.ndjson` and `.jsonl` are
    NDJSON whatever their first line holds, so that a first line that is a bad array does
    not turn the lines after it into one), else by the first bytes."""
    name = path.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".ndjson", ".jsonl")):
        return "ndjson"
    head = stream.peek(4096).lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
    if head.startswith(b"["):
        return "array"
    if head.startswith(b"{") or name.endswith(JSON_SUFFIXES) or not head:
        return "ndjson"
    return "csv"


def read_items(path: str, csv_fields: Sequence[str]) -> Iterator[Item]:
    """Every record of an input, in order, each with its line. Raises UsageError for an
    input that cannot be opened, and ReadError when reading fails part way (a
    truncated or corrupt gzip stream, an I/O error): the items before it were yielded."""
    for chunk in read_chunks(path, csv_fields):
        yield from chunk


def read_chunks(path: str, csv_fields: Sequence[str]) -> Iterator[list[Item]]:
    """`read_items` in lists, as they are read: NDJSON a list per chunk of whole lines
    that the stream had (so a reader of stdin still gets each line as it comes), CSV and
    JSON arrays a list per record. For callers that handle many records at once."""
    source = "<stdin>" if path == "-" else path
    try:
        stream = open_input(path)
    except READ_ERRORS as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise UsageError(f"{source}: cannot read it: {exc.strerror}") from None
        raise unreadable(source, exc) from exc
    try:
        kind = _format(path, stream)
        if kind == "csv":
            yield from map(_one, _utf8_rows(_csv_items(stream, source, csv_fields)))
        elif kind == "array":
            yield from map(_one, array_items(stream, source))
        else:
            yield from _ndjson_chunks(stream, source)
    except READ_ERRORS as exc:
        raise unreadable(source, exc) from exc
    finally:
        if path != "-":
            stream.close()


def _one(item: Item) -> list[Item]:
    return [item]


def breaks_array(reason: str | None) -> bool:
    """Whether an item's reason from `array_items` says the array itself is broken (not
    an array, not closed, no comma, data after it, an element after which nothing can be
    read), rather than that one element cannot be taken."""
    return reason is not None and (
        reason in (NOT_AN_ARRAY, NOT_CLOSED, DATA_AFTER, NO_COMMA) or reason.endswith(REST_UNREAD)
    )


def ndjson_items(stream: IO[bytes], source: str) -> Iterator[Item]:
    """The items of an NDJSON stream, one a non-blank line, each with its line number."""
    return _ndjson_items(stream, source)


def _ndjson_items(stream: IO[bytes], source: str) -> Iterator[Item]:
    for chunk in _ndjson_chunks(stream, source):
        yield from chunk


def _ndjson_chunks(stream: IO[bytes], source: str) -> Iterator[list[Item]]:
    """The items of an NDJSON stream, a list per chunk of whole lines read."""
    read = getattr(stream, "read1", stream.read)  # read1: what the stream has, up to CHUNK
    number = 0  # lines before the chunk
    parts: list[bytes] = []  # a line not ended yet
    while True:
        chunk = read(CHUNK)
        cut = chunk.rfind(b"\n") + 1
        if chunk and not cut:
            parts.append(chunk)
            continue
        if chunk:
            piece = b"".join([*parts, chunk[:cut]])
            parts = [chunk[cut:]]
        else:  # the end: a last line without its newline
            piece = b"".join(parts)
            if not piece:
                return
            piece += b"\n"
        if number == 0:
            piece = piece.removeprefix(b"\xef\xbb\xbf")
        lines = piece.count(b"\n")
        yield list(_ndjson_piece(piece, number, source, not chunk, lines))
        number += lines
        if not chunk:
            return


_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set in __init__, undeclared


def _ndjson_piece(
    piece: bytes, number: int, source: str, added_newline: bool, lines: int
) -> Iterator[Item]:
    """Whole lines at once when that is safe: every line begins with `{` and the chunk has
    no `[`, so no value can span a line break (a `,` that joins two lines inside an object
    would need a key string next, not `{`) and a line holding two values shows up as one
    value too many. Then one `json.loads` of the lines joined as an array gives every value,
    and the Items are made in C. It is also safe only when no value can be refused after
    parsing (jsontext.check): no line nests deeper than MAX_DEPTH (the chunk has fewer than
    MAX_DEPTH `{` beyond one a line) and no escape may be a lone surrogate (none at all
    without a backslash, which `in` finds faster than the pattern). Any other chunk, and
    one that is not valid UTF-8, is parsed line by line in place. `lines`: the piece's
    newlines."""
    if (
        piece[:1] == b"{"
        and piece.count(b"\n{") == lines - 1
        and b"[" not in piece
        and piece.count(b"{") - lines < MAX_DEPTH
        and (b"\\" not in piece or not ESCAPED_SURROGATE_BYTES.search(piece))
    ):
        try:
            text = piece.decode("utf-8")
            values = json.loads("[" + text[:-1].replace("\n", ",") + "]")
        except (ValueError, RecursionError):  # an invalid line, bytes that are not UTF-8
            values = None
        if values is not None and len(values) == lines:
            yield from map(_item, zip(repeat(source), count(number + 1), values, repeat(None)))
            return
    yield from _ndjson_chunk(piece, number, source, added_newline)


def _ndjson_chunk(piece: bytes, number: int, source: str, added_newline: bool) -> Iterator[Item]:
    """The items of whole lines (`piece` ends with a newline, which we `added` when the
    input's last line had none) after line `number`. Bytes that are not UTF-8 are decoded
    as surrogates (`surrogateescape`): a line holding one is "not valid UTF-8", and the
    lines around it are read as usual."""
    try:
        text, clean = piece.decode("utf-8"), True
    except UnicodeDecodeError:
        text, clean = piece.decode("utf-8", "surrogateescape"), False
    find, size, pos = text.find, len(text), 0
    while pos < size:
        number += 1
        end_of_line = find("\n", pos)
        if not clean and RAW_SURROGATE.search(text, pos, end_of_line):
            yield Item(source, number, None, NOT_UTF8)
            pos = end_of_line + 1
            continue
        try:
            value, end = _scan(text, pos)
        except (StopIteration, ValueError, RecursionError):  # no value here, or a bad one
            end = -1
        if end == end_of_line or (
            0 < end < end_of_line and not text[end:end_of_line].strip(" \t\r")
        ):
            problem = jsontext.check(value, text, pos, end)
            yield (
                Item(source, number, value)
                if problem is None
                else Item(source, number, None, problem)
            )
        else:  # the same text as the line read alone: the same value or error
            last = added_newline and end_of_line == size - 1
            item = _ndjson_line(text[pos : end_of_line + (0 if last else 1)], number, source)
            if item is not None:
                yield item
        pos = end_of_line + 1


def _ndjson_line(line: str, number: int, source: str) -> Item | None:
    """One line, the slow way: None for a blank line."""
    if not line.strip(BLANK):
        return None  # a blank line holds no record
    try:
        return Item(source, number, jsontext.loads(line))
    except BadJson as exc:
        return Item(source, number, None, exc.reason)


def _utf8_rows(items: Iterable[Item]) -> Iterator[Item]:
    """The CSV items, each row holding a byte that is not UTF-8 (decoded as a surrogate by
    `surrogateescape`, never replaced) made an invalid record "not valid UTF-8" with no
    value: nothing of it is stored or written out. A header that is not UTF-8 is an error
    of the file, like a header that lacks a field."""
    header_checked = False
    for item in items:
        value = item.value
        if value is not None:
            if not header_checked:
                header_checked = True
                names = "".join(value)
                if not names.isascii() and RAW_SURROGATE.search(names):
                    yield Item(item.source, 1, None, f"the CSV header is {NOT_UTF8}")
                    return
            text = "".join(value.values())
            if not text.isascii() and RAW_SURROGATE.search(text):
                item = Item(item.source, item.line, None, NOT_UTF8)
        elif item.error is not None and RAW_SURROGATE.search(item.error):
            item = Item(item.source, item.line, None, f"the CSV header is {NOT_UTF8}")
        yield item


def _csv_items(stream: IO[bytes], source: str, fields: Sequence[str]) -> Iterator[Item]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)  # rows as SPEC.md says: \n, \r\n or \r; [] is a blank line
    try:
        header = [name.strip() for name in next(row for row in reader if row)]
    except StopIteration:
        return
    missing = [field for field in fields if field not in header]
    if missing:
        names = ", ".join(f"'{field}'" for field in missing)
        lacks = f"the CSV header lacks {names} (it has: {','.join(header)})"
        yield Item(source, reader.line_num, None, lacks)
        return
    line = reader.line_num + 1
    try:
        for row in reader:
            if row:
                if len(row) != len(header):
                    reason = f"expected {len(header)} fields, found {len(row)}"
                    yield Item(source, line, dict(zip(header, row, strict=False)), reason)
                else:
                    yield Item(source, line, dict(zip(header, row, strict=True)))
            line = reader.line_num + 1
    except csv.Error as exc:
        yield Item(source, line, None, f"malformed CSV: {exc}; the rest of the file is unread")


def array_items(stream: IO[bytes], source: str) -> Iterator[Item]:
    """Decode a JSON array element by element from a stream of any size.

    An element that is JSON but cannot be taken (see core.jsontext: a number too long,
    nesting too deep, a lone surrogate escape, bytes that are not UTF-8 inside a string) is
    an Item with its reason, and reading goes on after it: it ends where the parser
    stopped, or, for one too deep to parse, at the bracket that closes it. An element that
    is not JSON (or holds bytes that are not UTF-8 outside its strings) ends the array: its
    Item says why and that the rest is unread, since where the next element starts cannot
    be known."""
    read = getattr(stream, "read1", stream.read)  # read1: never a gathering read (_Steps)
    decode = codecs.getincrementaldecoder("utf-8-sig")("surrogateescape").decode
    decoder = json.JSONDecoder()
    buffer, pos, line, eof, clean = "", 0, 1, False, True

    def more() -> bool:
        nonlocal buffer, pos, eof, clean
        if eof:
            return False
        while True:  # until text comes (a read may end inside a character) or the end
            data = read(CHUNK)
            chunk = decode(data, not data)
            if chunk or not data:
                break
        eof = not data
        if clean and not chunk.isascii() and RAW_SURROGATE.search(chunk):
            clean = False  # a byte that is not UTF-8 came: look for it from now on
        buffer = buffer[pos:] + chunk
        pos = 0
        return bool(chunk)

    def skip_space() -> str | None:
        """Move past white space; the next character, or None at the end of input."""
        nonlocal pos, line
        while True:
            start = pos
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                pos += 1
            line += buffer.count("\n", start, pos)
            if pos < len(buffer):
                return buffer[pos]
            if not more():
                return None

    def element() -> tuple[Any, str | None, int]:
        """The element at pos: (value, None, end), or (None, reason, end) for one that
        cannot be taken, with end -1 when reading cannot go on after it."""
        while True:
            try:
                value, end = decoder.raw_decode(buffer, pos)
                # only a number ending the text read so far may go on in the next read
                if end < len(buffer) or eof or not buffer[end - 1].isdigit():
                    if not clean and RAW_SURROGATE.search(buffer, pos, end):
                        return None, NOT_UTF8, end
                    problem = jsontext.check(value, buffer, pos, end)
                    return (value, None, end) if problem is None else (None, problem, end)
            except json.JSONDecodeError as exc:
                if eof:
                    bad_bytes = not clean and RAW_SURROGATE.search(buffer, pos, exc.pos + 1)
                    reason = NOT_UTF8 if bad_bytes else jsontext.not_json(exc)
                    return None, reason, -1
            except (ValueError, RecursionError) as exc:  # a number too long, too deep
                reason, found = jsontext.failure(buffer, pos, exc)
                if found is not None and (found < len(buffer) or eof):
                    return None, reason, found
                if eof:
                    return None, reason, -1
            more()

    if skip_space() != "[":
        yield Item(source, line, None, NOT_AN_ARRAY)
        return
    pos += 1
    state = "first"  # first: a value or ']'; value: a value; next: ',' or ']'
    while True:
        char = skip_space()
        if char is None:
            yield Item(source, line, None, NOT_CLOSED)
            return
        if char == "]" and state != "value":
            pos += 1
            if skip_space() is not None:
                yield Item(source, line, None, DATA_AFTER)
            return
        if state == "next":
            if char != ",":
                yield Item(source, line, None, NO_COMMA)
                return
            pos += 1
            state = "value"
            continue
        value, reason, end = element()
        if end < 0:
            yield Item(source, line, None, f"{reason}{REST_UNREAD}")
            return
        yield Item(source, line, value, reason)
        line += buffer.count("\n", pos, end)
        pos = end
        state = "next"
