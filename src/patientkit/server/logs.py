"""Server logs on stderr, never a record's contents, a token or a query value.

Two formats of the same events: `json` (one JSON object a line: what scripts and tests
read; the default when stderr is not a terminal) and `text` (a line for people: the
`serving` event as one sentence, each request as `time method route status bytes ms id`;
the default on a terminal). `quiet` keeps warnings and errors only, and the one line
that says where the server listens."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = logging.getLogger("patientkit.server")


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object a line (time in UTC, level, event, fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, sort_keys=False)


class TextFormatter(logging.Formatter):
    """A line for people: `serving` as a sentence, requests compact, others key=value."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        event = record.getMessage()
        if event == "serving":
            return serving_line(fields)
        if event == "stopped":
            return f"stopped serving on {fields.get('url')}"
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        if event == "request":
            line = (
                f"{clock} {level}{fields.pop('method', '')} {fields.pop('route', '')} "
                f"{fields.pop('status', '')} {fields.pop('bytes', 0):,} B "
                f"{fields.pop('ms', 0)} ms"
            )
            request_id = fields.pop("request_id", None)
            if fields.get("chaos") is None:
                fields.pop("chaos", None)
            rest = " ".join(f"{key}={value}" for key, value in fields.items())
            return line + (f" {rest}" if rest else "") + (f" [{request_id}]" if request_id else "")
        rest = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        line = f"{clock} {level}{event}" + (f" {rest}" if rest else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def serving_line(fields: dict[str, Any]) -> str:
    """`serving exports from DIR, readings and records in STORE on URL — Ctrl-C to stop`."""
    what = f"readings and records in {fields.get('db')}"
    if fields.get("exports"):
        what = f"exports from {fields['exports']}, {what}"
    chaos = f" (chaos {fields['chaos']:g})" if fields.get("chaos") else ""
    return f"serving {what} on {fields.get('url')}{chaos} — Ctrl-C to stop"


class _Quiet(logging.Filter):
    """Warnings and errors, and the one `serving` line (it says where to connect)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage() == "serving"


PEOPLE_EVENTS = frozenset({"serving", "request", "stopped"})


class _OneLineARequest(logging.Filter):
    """For people: the `request` line of each request, not the handlers' own info events
    about it (they are in the JSON logs, for correlation by request id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage() in PEOPLE_EVENTS


LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(
    fmt: str = "json", quiet: bool = False, level: str = "info", chaos: bool = False
) -> None:
    """Send our logs and uvicorn's to stderr, as JSON lines (`fmt` "json") or lines for
    people ("text": uvicorn's start-up and shut-down chatter is left out). `level` (a key
    of LEVELS) is the least level written; with `quiet`, only warnings, errors and the
    `serving` line. With `chaos`, uvicorn's complaint about an answer chaos cut on
    purpose is left out (each process of `serve --workers N` configures its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    if quiet:
        handler.addFilter(_Quiet())
    elif fmt == "text":
        handler.addFilter(_OneLineARequest())
    least = LEVELS[level]
    for name in ("patientkit.server", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.filters[:] = [QuietCuts()] if chaos and name == "uvicorn.error" else []
        quieter = name == "uvicorn.error" and fmt == "text"
        logger.setLevel(max(least, logging.WARNING) if quieter else least)
        logger.propagate = False
    if least > logging.INFO:  # the `serving` and `stopped` lines say where, whatever the level
        handler.addFilter(_AtLeast(least))
        logging.getLogger("patientkit.server").setLevel(logging.INFO)


class QuietCuts(logging.Filter):
    """Drops uvicorn's complaint about the answers that Chaos cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


class _AtLeast(logging.Filter):
    def __init__(self, least: int) -> None:
        super().__init__()
        self.least = least

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.least or record.getMessage() in ("serving", "stopped")


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    LOGGER.log(level, event, extra={"fields": fields})
