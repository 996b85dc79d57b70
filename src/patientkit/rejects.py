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
        entry = {"source": source, "line": line, "reason": reason, **extra, "record": record}
        text = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self.count += 1
            if self._stream is not None:
                self._stream.write(text)
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
