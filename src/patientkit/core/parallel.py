"""Count local CSV files on all cores.

Every file is a piece; a large plain file is cut into byte ranges at line ends (`\\n`,
`\\r\\n` taken whole, or a lone `\\r`: see core/counting.py), one piece each, so that one
big file uses every core too. A cut at a line end is only a record boundary when an even
number of quote characters comes before it (RFC 4180 quoting keeps quotes paired), which
each piece's quote count lets us check afterwards: a file whose cut fell inside a quoted
field is counted again as one piece. Pieces return their counts, lines and quotes, and at
most one error, which the caller places by line.

A file that cannot be read to its end (a truncated or corrupt gzip, a read error) is an
InputError naming it: its counts would be partial, so none are returned.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from patientkit.core import workers
from patientkit.core.counting import (
    BOM,
    Columns,
    Counts,
    CsvCounter,
    CsvError,
    read_header,
    record_end,
)
from patientkit.errors import UsageError, unreadable

CHUNK = 1 << 20
MIN_PIECE = 8 << 20  # no piece smaller than this
PIECES_PER_WORKER = 8  # enough pieces that no worker idles at the end
GZIP_MAGIC = b"\x1f\x8b"

Progress = Callable[[int, int], None]  # rows counted and bytes read since the last call
SEND_EVERY = 2 * CHUNK  # a worker tells the parent of its progress this often (bytes)


@dataclass(frozen=True)
class Piece:
    """A byte range of one file to count: the whole file, or a range that starts at a line
    end (then `columns` is the file's header, read once)."""

    path: str
    start: int = 0
    end: int | None = None  # None: to the end of the file
    columns: Columns | None = None  # None: the piece starts with the header


@dataclass
class PieceResult:
    """What a worker counted in one piece: counts, lines and quote characters seen, and the
    first malformed row, if any."""

    counts: Counts
    lines: int
    quotes: int
    error: tuple[int, str] | None = None  # (line counted from the piece's start, reason)


def is_gzip(path: str | Path) -> bool:
    if str(path).endswith(".gz"):
        return True
    with Path(path).open("rb") as stream:
        return stream.read(2) == GZIP_MAGIC


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing gzip (by extension or content)."""
    return cast(IO[bytes], gzip.open(path, "rb")) if is_gzip(path) else Path(path).open("rb")


def sniff_gzip(stream: IO[bytes]) -> IO[bytes]:
    """A peekable binary stream (like sys.stdin.buffer), decompressed if it is gzip."""
    peek = getattr(stream, "peek", None)
    if peek is not None and peek(2)[:2] == GZIP_MAGIC:
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    return stream


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given, and the *.csv / *.csv.gz files of folders, sorted by name."""
    files: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.name.endswith((".csv", ".csv.gz")))
            if not found:
                raise UsageError(f"{given}: no .csv or .csv.gz files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(given)
        elif not path.exists():
            raise UsageError(f"{given}: no such file or folder")
        else:
            raise UsageError(f"{given}: not a regular file or folder")
    return files


def read_chunks(stream: IO[bytes], start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes of stream from start to end (None: to its end), in chunks of CHUNK."""
    if start:
        stream.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
        chunk = stream.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def count_stream(chunks: Iterator[bytes], counter: CsvCounter, progress: Progress | None) -> Counts:
    """Feed chunks to counter and finish it. Raises CsvError, or ReadError when the
    chunks fail to come (a truncated gzip, an I/O error)."""
    counts = counter.counts
    try:
        for chunk in chunks:
            rows = counts.rows
            counter.feed(chunk)
            if progress is not None:
                progress(counts.rows - rows, len(chunk))
    except (EOFError, OSError, zlib.error) as exc:
        raise unreadable(counter.source, exc) from None
    return counter.finish()


def count_piece(piece: Piece, progress: Progress | None = None) -> PieceResult:
    """Count one piece; a malformed row ends it with an error instead of an exception.
    Raises ReadError when the file cannot be read to the end of the piece."""
    counter = CsvCounter(piece.path, columns=piece.columns)
    try:
        with open_binary(piece.path) as stream:
            counts = count_stream(read_chunks(stream, piece.start, piece.end), counter, progress)
    except CsvError as exc:
        return PieceResult(counter.counts, counter.lines, counter.quotes, (exc.line, exc.reason))
    except OSError as exc:  # opening it
        raise unreadable(piece.path, exc) from None
    return PieceResult(counts, counter.lines, counter.quotes)


@dataclass(frozen=True)
class FilePlan:
    """How one file is counted: its pieces, and the header lines and quotes they leave out."""

    path: str
    pieces: list[Piece]
    header_lines: int = 0  # lines of the header when the pieces do not include it
    header_quotes: int = 0


def plan_file(path: str, piece_size: int | None) -> FilePlan:
    """Cut a plain file into ranges of about piece_size bytes at line ends after its header
    (piece_size None: one piece)."""
    size = Path(path).stat().st_size
    pieces = 1 if piece_size is None else size // piece_size
    if pieces <= 1 or is_gzip(path):
        return FilePlan(path, [Piece(path)])
    with Path(path).open("rb") as stream:
        head = stream.read(CHUNK)
        bom = len(BOM) if head.startswith(BOM) else 0
        cut = record_end(head[bom:])
        if not cut:
            return FilePlan(path, [Piece(path)])  # the header alone fills a chunk
        columns, header_end, header_lines = read_header(head[bom : bom + cut], path)
        if columns is None:
            return FilePlan(path, [Piece(path)])  # blank lines fill the first chunk
        starts = [bom + header_end]
        for i in range(1, pieces):
            start = after_line_end(stream, size * i // pieces)
            if start >= size or start <= starts[-1]:
                break
            starts.append(start)
    ends: list[int | None] = [*starts[1:], None]
    return FilePlan(
        path,
        [Piece(path, s, e, columns) for s, e in zip(starts, ends, strict=True)],
        header_lines,
        head.count(b'"', bom, bom + header_end),
    )


def after_line_end(stream: IO[bytes], position: int) -> int:
    """The offset just after the first line end at or after position: a `\\n`, a
    `\\r\\n` taken whole (never cut between its two bytes), or a lone `\\r`; the end of
    the stream if none follows."""
    stream.seek(position)
    while block := stream.read(1 << 16):
        ends = [i for i in (block.find(b"\n"), block.find(b"\r")) if i >= 0]
        if ends:
            end = min(ends)
            if block[end] == ord("\r"):
                following = block[end + 1 : end + 2]
                if not following:
                    stream.seek(position + end + 1)
                    following = stream.read(1)
                if following == b"\n":
                    end += 1
            return position + end + 1
        position += len(block)
    return position


def settle(plan: FilePlan, results: list[PieceResult]) -> Counts | None:
    """Merge a file's pieces, or raise its first error with its line in the whole file.

    Returns None when a cut turned out to fall inside a quoted field, or when a piece
    before the last failed (its end may be such a cut): count the file again whole.
    """
    total = Counts()
    lines, quotes = plan.header_lines, plan.header_quotes
    for index, result in enumerate(results):
        if quotes % 2 or (result.error is not None and index < len(results) - 1):
            return None
        if result.error is not None:
            line, reason = result.error
            raise CsvError(plan.path, lines + line, reason)
        total.merge(result.counts)
        lines += result.lines
        quotes += result.quotes
    return total


def count_files(
    paths: list[str],
    workers: int | None = None,
    on_progress: Progress | None = None,
    piece_size: int | None = None,
) -> Counts:
    """Count local files on up to `workers` processes, merged; see count_each."""
    total = Counts()
    for counts in count_each(paths, workers, on_progress, piece_size).values():
        total.merge(counts)
    return total


def count_each(
    paths: list[str],
    workers: int | None = None,
    on_progress: Progress | None = None,
    piece_size: int | None = None,
) -> dict[str, Counts]:
    """Count local files on up to `workers` processes: each file's counts, by path.

    Files are cut into pieces of about piece_size bytes (default: enough pieces to keep
    every worker busy to the end, none under MIN_PIECE). Raises the first CsvError by
    file order, ReadError for a file that cannot be read to its end, UsageError for a
    missing path.
    """
    files = expand_paths(paths)
    workers = max(1, workers or os.cpu_count() or 1)
    if piece_size is None and workers > 1:
        total_size = sum(Path(path).stat().st_size for path in files)
        piece_size = max(MIN_PIECE, total_size // (workers * PIECES_PER_WORKER))
    plans = [plan_file(path, piece_size) for path in files]
    jobs = [piece for plan in plans for piece in plan.pieces]
    each: dict[str, Counts] = {}
    with _Runner(min(workers, len(jobs)), on_progress) as runner:
        results = runner.map(jobs)
        for plan in plans:
            got, results = results[: len(plan.pieces)], results[len(plan.pieces) :]
            counts = settle(plan, got)
            if counts is None:
                counts = settle(
                    FilePlan(plan.path, [Piece(plan.path)]), runner.map([Piece(plan.path)])
                )
            assert counts is not None
            each.setdefault(plan.path, Counts()).merge(counts)
    return each


def _count_in_worker(piece: Piece) -> PieceResult:
    """Count a piece in a worker process, sending (rows, bytes) home every SEND_EVERY
    bytes, as it goes: the parent's progress moves while the piece is counted."""
    pending = [0, 0]

    def forward(rows: int, nbytes: int) -> None:
        pending[0] += rows
        pending[1] += nbytes
        if pending[1] >= SEND_EVERY:
            workers.send((pending[0], pending[1]))
            pending[0] = pending[1] = 0

    try:
        return count_piece(piece, forward if workers.listening() else None)
    finally:
        if pending[1] or pending[0]:
            workers.send((pending[0], pending[1]))


class _Runner:
    """Counts pieces in this process (one worker) or in a pool of processes."""

    def __init__(self, processes: int, on_progress: Progress | None) -> None:
        self.on_progress = on_progress
        heard = None if on_progress is None else lambda message: on_progress(*message)
        self.pool = workers.WorkerPool(processes, heard) if processes > 1 else None

    def map(self, pieces: list[Piece]) -> list[PieceResult]:
        if self.pool is None:
            return [count_piece(piece, self.on_progress) for piece in pieces]
        return self.pool.map(_count_in_worker, pieces)

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.__exit__(*exc)
