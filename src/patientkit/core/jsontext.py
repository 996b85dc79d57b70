"""One JSON value from text, with a true reason for every way it cannot be taken.

Shared by the input readers (a record of NDJSON, an element of a JSON array) and the
server's body parser, so that the CLI and the server agree on what a parseable record is.
A value is refused (`BadJson`, its `reason` one short line without the data) when:

* its bytes are not valid UTF-8 (`NOT_UTF8`): never replaced by U+FFFD. Readers decode
  with `surrogateescape`, so an invalid byte shows up as a raw surrogate character in
  the text, and a value whose text holds one is refused the same way;
* it is not JSON: `invalid JSON: <the json module's message>` (see `not_json`);
* a number literal has more digits than Python converts (`sys.get_int_max_str_digits()`,
  4300 by default): `<where>: number too large (N digits)`, e.g. `count: number too
  large (5000 digits)`;
* it nests more than `MAX_DEPTH` arrays and objects (`TOO_DEEP`), however deep: the
  parser's RecursionError is caught, and a value that parsed but is deeper than the
  limit is refused too, so that what the CLI takes the server takes as well, and every
  later step (pickling for the store process, the rejects file) can handle it;
* a string or key holds a lone surrogate escape (`"\\ud800"`, an unpaired half of a
  UTF-16 pair): `<where>: lone surrogate escape (...)`. Such a string cannot be encoded
  as UTF-8, so it could be neither stored nor written back out. A valid pair
  (`"\\ud83d\\ude00"`) is one character and is taken.

`<where>` is the path of the offending value in the record (`count`, `readings[0].count`),
or nothing for the value itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

MAX_DEPTH = 100  # arrays and objects inside each other; a reading or record needs 3
NOT_UTF8 = "not valid UTF-8"
TOO_DEEP = f"nesting too deep (more than {MAX_DEPTH} levels of arrays and objects)"
LONE_SURROGATE = "lone surrogate escape (\\ud800-\\udfff without its pair), not valid in UTF-8"
MAX_KEY_SHOWN = 40  # characters of a key shown in a path

RAW_SURROGATE = re.compile("[\ud800-\udfff]")  # an invalid byte, decoded with surrogateescape
ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # may be a lone surrogate
ESCAPED_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")

_decoder = json.JSONDecoder()


class BadJson(ValueError):
    """A value that cannot be taken; `reason` says why, without the data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TooLong:
    """An integer literal too long to convert, in place of its value."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _int_or_marker(literal: str) -> object:
    try:
        return int(literal)
    except ValueError:
        return _TooLong(len(literal.lstrip("-")))


_marking_decoder = json.JSONDecoder(parse_int=_int_or_marker)


def decode(data: bytes) -> str:
    """The UTF-8 text of `data`; BadJson(NOT_UTF8) if it is not valid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson(NOT_UTF8) from None


def loads(data: bytes | str) -> Any:
    """The one JSON value of `data` (white space around it allowed), checked as above;
    BadJson with the reason otherwise. Bytes must be UTF-8 (no other encoding is
    guessed); text may hold raw surrogates from a `surrogateescape` decode."""
    text = decode(data) if isinstance(data, bytes) else data
    if not text.isascii() and RAW_SURROGATE.search(text):
        raise BadJson(NOT_UTF8)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadJson(failure(text, 0, exc)[0]) from None
    problem = check(value, text)
    if problem is not None:
        raise BadJson(problem)
    return value


def not_json(exc: json.JSONDecodeError) -> str:
    """The reason for a value the json module refused with `exc`: `invalid JSON: ` and its
    message, without the position it ends with (`Unterminated string starting at`,
    `Invalid control character at`, whose offset in a buffer means nothing to a reader
    and which would otherwise end mid-sentence), so `invalid JSON: Unterminated string`,
    `invalid JSON: Invalid control character`."""
    message = exc.msg.removesuffix(" at").removesuffix(" starting")
    return f"invalid JSON: {message}"


def failure(text: str, start: int, exc: BaseException) -> tuple[str, int | None]:
    """Why the JSON module refused the value that starts at `start` of `text` with `exc`
    (a JSONDecodeError, the int digit limit's ValueError, a RecursionError), and where
    that value ends when it is well-formed JSON all the same (a number too long, nesting
    too deep), so that a reader can go on after it; None when it is not JSON or its end is
    not in `text`."""
    if isinstance(exc, json.JSONDecodeError):
        return not_json(exc), None
    if isinstance(exc, RecursionError):
        return TOO_DEEP, value_end(text, start)
    try:
        value, end = _marking_decoder.raw_decode(text, start)
    except RecursionError:
        return TOO_DEEP, value_end(text, start)
    except ValueError:
        return f"invalid JSON: {exc}", None
    found = _path_to(value, lambda node: type(node) is _TooLong)
    if found is None:  # not the digit limit after all
        return f"invalid JSON: {exc}", None
    path, node = found
    return _at(path, f"number too large ({node.digits} digits)"), end


_BRACKET_OR_QUOTE = re.compile(r'[\[\]{}"]')
_REST_OF_STRING = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def value_end(text: str, start: int) -> int | None:
    """Where the array or object that starts at `start` of `text` ends: just after the
    bracket that closes it, strings skipped (without recursion, however deep, and without
    checking the rest of the syntax). None if `text` ends first or it is no array or
    object."""
    if text[start : start + 1] not in ("[", "{"):
        return None
    level, pos = 0, start
    while True:
        found = _BRACKET_OR_QUOTE.search(text, pos)
        if found is None:
            return None
        char, pos = found.group(), found.end()
        if char == '"':
            string = _REST_OF_STRING.match(text, pos)
            if string is None:
                return None
            pos = string.end()
        elif char in "[{":
            level += 1
        else:
            level -= 1
            if level == 0:
                return pos


def check(value: Any, text: str, start: int = 0, end: int | None = None) -> str | None:
    """Why a value parsed from `text[start:end]` cannot be taken (too deep, a lone
    surrogate escape), or None. Cheap for the usual record: the value is walked only when
    its text holds more brackets than MAX_DEPTH, or an escape of a surrogate."""
    end = len(text) if end is None else end
    if (
        end - start > MAX_DEPTH
        and text.count("[", start, end) + text.count("{", start, end) > MAX_DEPTH
        and depth(value) > MAX_DEPTH
    ):
        return TOO_DEEP
    if ESCAPED_SURROGATE.search(text, start, end):
        found = _path_to(value, _has_surrogate, keys=True)
        if found is not None:
            return _at(found[0], LONE_SURROGATE)
    return None


def depth(value: Any) -> int:
    """How many arrays and objects are nested in `value` (0 for a scalar), counted
    without recursion; it stops counting past MAX_DEPTH + 1."""
    if type(value) not in (dict, list):
        return 0
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if type(node) is dict else node
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children if type(child) in (dict, list))
    return deepest


def _has_surrogate(node: object) -> bool:
    if type(node) is not str or node.isascii():
        return False
    try:
        node.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _path_to(
    value: Any, wanted: Callable[[object], bool], keys: bool = False
) -> tuple[list[str | int], Any] | None:
    """The path to the first node (depth first, in order) for which wanted(node) holds
    (with keys=True a key counts as a node at its entry), and the node; None if none."""
    stack: list[tuple[list[str | int], Any]] = [([], value)]
    while stack:
        path, node = stack.pop()
        if wanted(node):
            return path, node
        if type(node) is dict:
            entries: Iterator[tuple[str | int, Any]] = iter(node.items())
        elif type(node) is list:
            entries = enumerate(node)
        else:
            continue
        children = []
        for key, child in entries:
            if keys and wanted(key):
                return [*path, key], key
            children.append(([*path, key], child))
        stack.extend(reversed(children))
    return None


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _at(path: list[str | int], reason: str) -> str:
    """`reason` prefixed with where: `count: …`, `readings[2].count: …`; a key that is not
    plain letters, digits, `_` or `-` is shown as a JSON string in brackets, escaped to
    ASCII, and cut to MAX_KEY_SHOWN characters."""
    if not path:
        return reason
    shown = ""
    for step in path:
        if isinstance(step, int):
            shown += f"[{step}]"
        elif _PLAIN_KEY.fullmatch(step) and len(step) <= MAX_KEY_SHOWN:
            shown += f".{step}" if shown else step
        else:
            cut = step if len(step) <= MAX_KEY_SHOWN else step[:MAX_KEY_SHOWN] + "…"
            shown += f"[{json.dumps(cut)}]"
    return f"{shown}: {reason}"
