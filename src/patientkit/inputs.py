"""Input files of records: NDJSON, a JSON array, or CSV; plain or gzip; `-` for stdin.

`read_items(path, csv_fields)` yields one `Item` per record with the line it starts on,
streaming: a JSON array is decoded element by element, never loaded whole. A record that
cannot be read (a line of invalid JSON, a CSV row of the wrong width) is an Item with an
error, so the caller reports it and goes on with the next.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from itertools import count, repeat
from pathlib import Path
from typing import IO, Any, NamedTuple

from patientkit.errors import UsageError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
JSON_SUFFIXES = (".json", ".ndjson", ".jsonl")


class Item(NamedTuple):
    source: str
    line: int
    value: Any  # a JSON value, or a dict of strings for a CSV row
    error: str | None = None  # why the record could not be read


_item = partial(tuple.__new__, Item)  # Item from a 4-tuple, without Python-level __new__


def check_paths(paths: Sequence[str]) -> None:
    """Refuse up front (UsageError, exit 2) an input that is not a readable file."""
    for path in paths:
        if path == "-":
            continue
        given = Path(path)
        if given.is_dir():
            raise UsageError(f"{path}: is a folder, not a file")
        if not given.is_file():
            raise UsageError(f"{path}: no such file")


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
    """Every record of an input, in order, each with its line."""
    source = "<stdin>" if path == "-" else path
    stream = open_input(path)
    try:
        kind = _format(path, stream)
        if kind == "csv":
            yield from _csv_items(stream, source, csv_fields)
        elif kind == "array":
            yield from _array_items(stream, source)
        else:
            yield from _ndjson_items(stream, source)
    finally:
        if path != "-":
            stream.close()


def _ndjson_items(stream: IO[bytes], source: str) -> Iterator[Item]:
    """Lines are parsed a block at a time as one JSON array (one C call for thousands of
    records); a block that does not parse as exactly one value a line is parsed line by
    line, which names the bad line."""
    number = 0
    while lines := stream.readlines(CHUNK):
        if number == 0:
            lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")
        try:
            values = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            values = None
        if values is not None and len(values) == len(lines):  # Items made in C, not per line
            yield from map(_item, zip(repeat(source), count(number + 1), values, repeat(None)))
        else:
            yield from _ndjson_lines(lines, number, source)
        number += len(lines)


def _ndjson_lines(lines: list[bytes], number: int, source: str) -> Iterator[Item]:
    for offset, line in enumerate(lines, start=number + 1):
        if not line.strip():
            continue  # a blank line holds no record
        try:
            yield Item(source, offset, json.loads(line))
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            yield Item(source, offset, None, f"invalid JSON: {_reason(exc)}")


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


def _array_items(stream: IO[bytes], source: str) -> Iterator[Item]:
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
