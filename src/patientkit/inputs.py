"""Input files of records: NDJSON, a JSON array, or CSV; plain or gzip; `-` for stdin.

`read_items(path, csv_fields)` yields one `Item` per record with the line it starts on,
streaming: a JSON array is decoded element by element, never loaded whole. A record that
cannot be read (a line of invalid JSON, a CSV row of the wrong width) is an Item with an
error, so the caller reports it and goes on with the next.

NDJSON is read in chunks of whole lines (as much as the stream has, so stdin streams
line by line). A chunk of plain objects (every line begins with `{`, no `[` anywhere) is
parsed by one `json.loads` as an array. Any other chunk is decoded to text once and every
line parsed in place by the JSON module's C scanner, which must take it whole as exactly
one value. A line the scanner does not take whole (blank, invalid, more than one value)
and a chunk that is not UTF-8 go through `json.loads` line by line, so values, errors and
line numbers are always the same as one `json.loads` per line (bench/inputs.py times both).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from itertools import count, repeat
from pathlib import Path
from typing import IO, Any, NamedTuple

from patientkit.errors import InputError, UsageError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
JSON_SUFFIXES = (".json", ".ndjson", ".jsonl")


class Item(NamedTuple):
    source: str
    line: int
    value: Any  # a JSON value, or a dict of strings for a CSV row
    error: str | None = None  # why the record could not be read


_item = partial(tuple.__new__, Item)  # Item from a 4-tuple, without Python-level __new__


class UnreadableInput(InputError):
    """An input that could not be read to its end (exit 1): a truncated or corrupt
    compressed file, an I/O error part way. What was read before it stands; the message
    names the input and says what is wrong, in one line."""


def read_error(source: str, exc: BaseException) -> UnreadableInput:
    """The one message for an input whose reading failed part way with `exc` (an
    OSError, EOFError or zlib.error raised while reading `source`)."""
    if isinstance(exc, EOFError):  # gzip: "Compressed file ended before the end-of-stream …"
        return UnreadableInput(f"{source}: truncated or corrupt: {exc}")
    if isinstance(exc, zlib.error | gzip.BadGzipFile):
        return UnreadableInput(f"{source}: truncated or corrupt: {exc}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UnreadableInput(f"{source}: cannot read it to the end: {reason or type(exc).__name__}")


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
        raw: IO[bytes] = sys.stdin.buffer
    else:
        try:
            raw = Path(path).open("rb")  # noqa: SIM115 - read_items closes it
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a folder, not a file") from None
    stream = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[arg-type]
    if stream.peek(2)[:2] == GZIP_MAGIC:  # type: ignore[attr-defined]
        return io.BufferedReader(gzip.GzipFile(fileobj=stream, mode="rb"), CHUNK)  # type: ignore[arg-type]
    return stream


def _format(path: str, stream: IO[bytes]) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    head = stream.peek(4096).lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
    if head.startswith(b"["):
        return "array"
    if head.startswith(b"{") or name.endswith(JSON_SUFFIXES) or not head:
        return "ndjson"
    return "csv"


def read_items(path: str, csv_fields: Sequence[str]) -> Iterator[Item]:
    """Every record of an input, in order, each with its line. Raises UsageError for an
    input that cannot be opened, and UnreadableInput when reading fails part way (a
    truncated or corrupt gzip stream, an I/O error): the items before it were yielded."""
    source = "<stdin>" if path == "-" else path
    try:
        stream = open_input(path)
    except READ_ERRORS as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise UsageError(f"{source}: cannot read it: {exc.strerror}") from None
        raise read_error(source, exc) from exc
    try:
        kind = _format(path, stream)
        if kind == "csv":
            yield from _csv_items(stream, source, csv_fields)
        elif kind == "array":
            yield from array_items(stream, source)
        else:
            yield from _ndjson_items(stream, source)
    except READ_ERRORS as exc:
        raise read_error(source, exc) from exc
    finally:
        if path != "-":
            stream.close()


def _ndjson_items(stream: IO[bytes], source: str) -> Iterator[Item]:
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
        yield from _ndjson_piece(piece, number, source, added_newline=not chunk)
        number += piece.count(b"\n")
        if not chunk:
            return


_scan = json.JSONDecoder().scan_once


def _ndjson_piece(piece: bytes, number: int, source: str, added_newline: bool) -> Iterator[Item]:
    """Whole lines at once when that is safe: every line begins with `{` and the chunk has
    no `[`, so no value can span a line break (a `,` that joins two lines inside an object
    would need a key string next, not `{`) and a line holding two values shows up as one
    value too many. Then one `json.loads` of the lines joined as an array gives every value,
    and the Items are made in C. Any other chunk is parsed line by line in place."""
    lines = piece.count(b"\n")
    if piece[:1] == b"{" and piece.count(b"\n{") == lines - 1 and b"[" not in piece:
        try:
            values = json.loads(b"[" + piece[:-1].replace(b"\n", b",") + b"]")
        except ValueError:  # an invalid line, or bytes that are not UTF-8
            values = None
        if values is not None and len(values) == lines:
            yield from map(_item, zip(repeat(source), count(number + 1), values, repeat(None)))
            return
    yield from _ndjson_chunk(piece, number, source, added_newline)


def _ndjson_chunk(piece: bytes, number: int, source: str, added_newline: bool) -> Iterator[Item]:
    """The items of whole lines (`piece` ends with a newline, which we `added` when the
    input's last line had none) after line `number`."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        lines = piece.split(b"\n")[:-1]
        for index, line in enumerate(lines):
            number += 1
            ends = b"" if added_newline and index == len(lines) - 1 else b"\n"
            item = _ndjson_line(line + ends, number, source)
            if item is not None:
                yield item
        return
    find, size, pos = text.find, len(text), 0
    while pos < size:
        number += 1
        end_of_line = find("\n", pos)
        try:
            value, end = _scan(text, pos)
        except (StopIteration, ValueError):  # no value here, or an invalid one
            end = -1
        if end == end_of_line or (
            0 < end < end_of_line and not text[end:end_of_line].strip(" \t\r")
        ):
            yield Item(source, number, value)
        else:  # the same bytes as the line read alone: the same value or error
            last = added_newline and end_of_line == size - 1
            line = text[pos : end_of_line + (0 if last else 1)].encode()
            item = _ndjson_line(line, number, source)
            if item is not None:
                yield item
        pos = end_of_line + 1


def _ndjson_line(line: bytes, number: int, source: str) -> Item | None:
    """One line, the slow way: None for a blank line."""
    if not line.strip():
        return None  # a blank line holds no record
    try:
        return Item(source, number, json.loads(line))
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        return Item(source, number, None, f"invalid JSON: {_reason(exc)}")


def _reason(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"


def _csv_items(stream: IO[bytes], source: str, fields: Sequence[str]) -> Iterator[Item]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    missing = [field for field in fields if field not in header]
    if missing:
        names = ", ".join(f"'{field}'" for field in missing)
        yield Item(source, 1, None, f"the CSV header lacks {names} (it has: {','.join(header)})")
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
    """Decode a JSON array element by element from a stream of any size."""
    reader = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict")
    decoder = json.JSONDecoder()
    buffer, pos, line, eof = "", 0, 1, False

    def more() -> bool:
        nonlocal buffer, pos, eof
        if eof:
            return False
        chunk = reader.read(CHUNK)
        eof = not chunk
        buffer = buffer[pos:] + chunk
        pos = 0
        return not eof

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

    try:
        if skip_space() != "[":
            yield Item(source, line, None, "invalid JSON: expected '[' to start an array")
            return
        pos += 1
        state = "first"  # first: a value or ']'; value: a value; next: ',' or ']'
        while True:
            char = skip_space()
            if char is None:
                yield Item(source, line, None, "invalid JSON: the array is not closed")
                return
            if char == "]" and state != "value":
                pos += 1
                if skip_space() is not None:
                    yield Item(source, line, None, "invalid JSON: data after the array")
                return
            if state == "next":
                if char != ",":
                    yield Item(source, line, None, "invalid JSON: expected ',' between elements")
                    return
                pos += 1
                state = "value"
                continue
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, pos)
                    if end < len(buffer) or eof:
                        break  # a number at the very end of the buffer may go on
                except json.JSONDecodeError as exc:
                    if eof:
                        yield Item(source, line, None, f"invalid JSON: {exc.msg}")
                        return
                more()
            yield Item(source, line, value)
            line += buffer.count("\n", pos, end)
            pos = end
            state = "next"
    except UnicodeDecodeError:
        yield Item(source, line, None, "invalid JSON: not UTF-8 text; the rest is unread")
