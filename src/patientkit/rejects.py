"""The rejects (dead-letter) file: one JSON object a line for each record that was not
delivered for good, with where it came from and why, so it can be mended and sent again.

    {"source": "in.ndjson", "line": 7, "reason": "…", "record": {…}}

Each run writes the file afresh (`append=True`, the CLI's --append, adds to it). Lines
are written and flushed as they come (a crash keeps what was written), from any thread.
Without a path nothing is written, but the count is still kept.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from patientkit.errors import UsageError


def _same_file(one: Path, other: Path) -> bool:
    try:
        return one.samefile(other)
    except OSError:  # one of them does not exist (yet)
        return False


# made once: json.dumps with options builds a new encoder on every call
_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)
_ASCII = json.JSONEncoder(allow_nan=False, default=str)
UNWRITABLE = "the record holds NaN or Infinity, which JSON cannot write: see its input line"


def entry_line(entry: dict[str, Any], record: Any) -> str:
    """One line of the file: `entry` with the record last, as strict JSON in UTF-8.

    Text is written as it is where it can be; a string that UTF-8 cannot hold (a lone
    surrogate: a file name's byte that is not UTF-8, decoded by Python with
    surrogateescape) is written as its `\\udcXX` escape, which reads back as the same
    string, so nothing is lost or replaced. A record holding NaN or an infinity (which
    strict JSON has no way to write) is written as null with `record_error` saying so,
    its source, line and reason kept: the line stays JSON that any reader takes."""
    full = {**entry, "record": record}
    try:
        text = _STRICT.encode(full)
    except ValueError:  # NaN or an infinity in the record
        full = {**entry, "record": None, "record_error": UNWRITABLE}
        text = _STRICT.encode(full)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: written as its escape
            text = _ASCII.encode(full)
    return text + "\n"


class Rejects:
    """The rejects file at `path` (None: count only). Each run writes it afresh; with
    `append` the lines are added after what the file holds. Raises UsageError (exit 2)
    if it cannot be opened, or if it is one of the `inputs` (writing it afresh would
    destroy the records about to be read)."""

    def __init__(self, path: Path | None, append: bool = False, inputs: Iterable[str] = ()) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        if path is not None:
            for name in inputs:
                if name != "-" and _same_file(path, Path(name)):
                    raise UsageError(
                        f"{path} is both an input and the rejects file: name another file"
                    )
            try:
                self._stream = path.open("a" if append else "w", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror}") from None

    def write(self, source: str, line: int, reason: str, record: Any, **extra: Any) -> None:
        """Add one line; it is always valid UTF-8 JSON (see `entry_line`). Without a file,
        only counted: nothing is encoded (an interrupted replay may hand back 250,000)."""
        if self.path is None:
            with self._lock:
                self.count += 1
            return
        text = entry_line({"source": source, "line": line, "reason": reason, **extra}, record)
        with self._lock:
            self.count += 1
            if self._stream is not None:
                self._stream.write(text)
                self._stream.flush()

    def write_many(self, entries: Iterable[tuple[str, int, str, Any]]) -> None:
        """Add (source, line, reason, record) entries at once, in one write: the readings
        handed back after Ctrl-C may be hundreds of thousands, to write within a second."""
        if self.path is None:
            self.write_lines([""] * sum(1 for _ in entries))
            return
        self.write_lines(
            [
                entry_line({"source": source, "line": line, "reason": reason}, record)
                for source, line, reason, record in entries
            ]
        )

    def write_lines(self, lines: list[str]) -> None:
        """Add lines made by the caller, each one entry as `entry_line` makes it."""
        with self._lock:
            self.count += len(lines)
            if self._stream is not None:
                self._stream.write("".join(lines))
                self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
