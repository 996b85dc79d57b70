"""The export API: serves `DIR/<export_id>/<download_id>.csv[.gz]` files, streamed."""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from patientkit.core.counting import records
from patientkit.core.parallel import open_binary, read_chunks, unreadable
from patientkit.errors import PatientkitError
from patientkit.server import metrics

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUFFIXES = (".csv.gz", ".csv")


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


class Catalog:
    """The exports under a folder, read afresh on each request (a listing is cheap), with
    each download's metadata taken from its `.meta.json` or scanned once and cached."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._meta: dict[tuple[Path, float], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def export_ids(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.downloads(p.name))

    def downloads(self, export_id: str) -> dict[str, Path]:
        if self.root is None or not EXPORT_NAME.match(export_id):
            return {}
        folder = self.root / export_id
        if not folder.is_dir():
            return {}
        found = {}
        for path in folder.iterdir():
            for suffix in SUFFIXES:
                if path.name.endswith(suffix):
                    stem = path.name.removesuffix(suffix)
                    if _is_uuid(stem):
                        found[stem] = path
                    break
        return dict(sorted(found.items()))

    def metadata(self, download_id: str, path: Path) -> dict[str, Any]:
        key = (path, path.stat().st_mtime)
        with self._lock:
            if key not in self._meta:
                self._meta[key] = _sidecar(path) or _scan(download_id, path)
            return self._meta[key]


def _sidecar(path: Path) -> dict[str, Any] | None:
    name = path.name
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    meta = path.with_name(f"{name}.meta.json")
    if meta.is_file() and meta.stat().st_mtime >= path.stat().st_mtime:
        return json.loads(meta.read_text(encoding="utf-8"))
    return None


def _scan(download_id: str, path: Path) -> dict[str, Any]:
    """Metadata of a file that came without any: one pass with the csv module, rows as
    SPEC.md defines them (`core/counting.records`: any of the three line ends, blank
    lines skipped, the header the first record). Raises CsvError for malformed quoting
    and ReadError for a file that cannot be read to its end."""
    rows = 0
    patients: set[str] = set()
    events: set[str] = set()
    first = last = None
    source = path.name
    try:
        with open_binary(path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            found = records(text, source, strict=False)
            header = next(found, None)
            names = [name.strip() for name in header[1]] if header else []
            column = {name: names.index(name) for name in reversed(names)}

            def get(record: list[str], name: str) -> str:
                at = column.get(name)
                return record[at] if at is not None and at < len(record) else ""

            for _, record in found:
                rows += 1
                patients.add(get(record, "patient_id"))
                events.add(get(record, "event_type"))
                when = get(record, "event_time")
                first = when if first is None or when < first else first
                last = when if last is None or when > last else last
    except (EOFError, OSError, zlib.error) as exc:
        raise unreadable(source, exc) from None
    return {
        "id": download_id,
        "rows": rows,
        "event_types": sorted(events),
        "patients": sorted(patients),
        "start_time": first,
        "end_time": last,
    }


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"detail": f"{what} not found"}, status_code=404)


def routes(catalog: Catalog) -> list[Route]:
    def list_exports(request: Request) -> Response:
        return JSONResponse({"data": {"export_ids": catalog.export_ids()}})

    def show_export(request: Request) -> Response:
        export_id = request.path_params["export_id"]
        downloads = catalog.downloads(export_id)
        if not downloads:
            return _not_found("Export")
        return JSONResponse({"data": {"id": export_id, "download_ids": list(downloads)}})

    def _download(request: Request) -> tuple[str, Path] | Response:
        export_id = request.path_params["export_id"]
        downloads = catalog.downloads(export_id)
        if not downloads:
            return _not_found("Export")
        download_id = request.path_params["download_id"]
        if download_id not in downloads:
            return _not_found("Download")
        return download_id, downloads[download_id]

    def show_download(request: Request) -> Response:
        found = _download(request)
        if isinstance(found, Response):
            return found
        try:
            return JSONResponse({"data": catalog.metadata(*found)})
        except PatientkitError as exc:  # a file of ours we cannot read: our fault, said so
            return JSONResponse({"detail": f"Download cannot be read: {exc}"}, status_code=500)

    def download_data(request: Request) -> Response:
        found = _download(request)
        if isinstance(found, Response):
            return found
        download_id, path = found
        stream = metrics.counted_stream(
            request, _stream(path), lambda: catalog.metadata(download_id, path)["rows"]
        )
        return StreamingResponse(stream, media_type="text/csv; charset=utf-8")

    return [
        Route("/api/export", list_exports),
        Route("/api/export/{export_id}", show_export),
        Route("/api/export/{export_id}/{download_id}", show_download),
        Route("/api/export/{export_id}/{download_id}/data", download_data),
    ]


def _stream(path: Path) -> Iterator[bytes]:
    with open_binary(path) as stream:
        yield from read_chunks(stream)
