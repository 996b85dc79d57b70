"""The rejects (dead-letter) file: one JSON object a line for each record that was not
delivered for good, with where it came from and why, so it can be mended and sent again.

    {"source": "in.ndjson", "line": 7, "reason": "…", "record": {…}}

Lines are written and flushed as they come (a crash keeps what was written), from any
thread. Without a path nothing is written, but the count is still kept.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import IO, Any

from patientkit.errors import UsageError


class Rejects:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        if path is not None:
            try:
                self._stream = path.open("a", encoding="utf-8")
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
