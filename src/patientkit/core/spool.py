"""The buffer's spool: an append-only journal of tracked-but-unsettled events.

File format (all integers big-endian)::

    file    = MAGIC record*
    MAGIC   = b"PKSPOOL1\\n"
    record  = kind:1 byte | length:u32 | crc32(kind + body):u32 | body[length]
    kind T  = tracked events; body = (seq:u64 | size:u32 | payload[size])*
    kind S  = settled events; body = (first_seq:u64 | count:u32)*

An event is unsettled when a T record holds its seq and no S record covers it. Records
are only ever appended; a record that is cut short or fails its CRC ends the journal (a
process killed in the middle of a write leaves such a tail) and is ignored on recovery.
Opening a journal recovers the unsettled events and rewrites the file with only them
(temp file, fsync, rename, fsync of the folder). While the buffer runs, the journal is
truncated when nothing in it is live, and rewritten when settled records dominate a
large file. One process at a time: an exclusive `flock` on `PATH.lock` guards the file.

`Journal` is the file; it is not thread-safe. `SpoolWriter` is what `BatchBuffer` holds:
a journal, the lock that serialises every call on it, the encoding of events to payloads,
and the bookkeeping of how many journaled events are live, which decides when the file is
truncated or compacted.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from patientkit.core.clock import Clock
from patientkit.errors import PatientkitError, UsageError

if TYPE_CHECKING:
    from patientkit.core.buffer import BatchBuffer

logger = logging.getLogger(__name__)

MAGIC = b"PKSPOOL1\n"
_RECORD = struct.Struct(">cII")
_ITEM = struct.Struct(">QI")
_TRACKED = b"T"
_SETTLED = b"S"
_MAX_RECORD_ITEMS = 4096
_COMPACT_BYTES = 1 << 20  # a journal past this size, mostly settled records, is rewritten

E = TypeVar("E")


class SpoolError(PatientkitError):
    """The spool file cannot be read or written."""


class SpoolLocked(UsageError):
    """Another live buffer holds the spool."""


def _record(kind: bytes, body: bytes) -> bytes:
    return _RECORD.pack(kind, len(body), zlib.crc32(kind + body)) + body


def _tracked_records(items: Sequence[tuple[int, bytes]]) -> Iterator[bytes]:
    """T records for (seq, payload) items, at most `_MAX_RECORD_ITEMS` a record."""
    for start in range(0, len(items), _MAX_RECORD_ITEMS):
        body = b"".join(
            _ITEM.pack(seq, len(payload)) + payload
            for seq, payload in items[start : start + _MAX_RECORD_ITEMS]
        )
        yield _record(_TRACKED, body)


def _settled_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and ranges[-1][0] + ranges[-1][1] == seq:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + 1)
        elif not ranges or seq >= ranges[-1][0] + ranges[-1][1]:
            ranges.append((seq, 1))
    return ranges


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """An open, locked journal file."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._file = path.open("ab", buffering=0)
        self.size = self._file.tell()
        self.closed = False
        self._dirty = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> tuple[Journal, list[tuple[int, bytes]]]:
        """Lock and recover the journal at `path`; return it and its unsettled events."""
        path = Path(path)
        lock_path = path.with_name(path.name + ".lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open spool lock {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolLocked(
                f"spool {path} is in use by another live buffer (lock {lock_path} is held)"
            ) from None
        try:
            live = _recover(path)
            _rewrite(path, live)
            return cls(path, lock_fd), live
        except OSError as exc:
            os.close(lock_fd)
            raise SpoolError(f"cannot prepare spool {path}: {exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise

    def append_tracked(self, items: Sequence[tuple[int, bytes]]) -> None:
        """Append T records for (seq, payload) items; not yet synced."""
        self._write(b"".join(_tracked_records(items)))

    def append_settled(self, seqs: Iterable[int]) -> None:
        """Append an S record covering `seqs`; not yet synced."""
        body = b"".join(_ITEM.pack(first, count) for first, count in _settled_ranges(seqs))
        if body:
            self._write(_record(_SETTLED, body))

    def sync(self) -> None:
        """fsync what was appended since the last sync (nothing to do if nothing was)."""
        if self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False

    def truncate(self) -> None:
        """Drop every record (nothing in the journal is live) and sync."""
        os.ftruncate(self._file.fileno(), len(MAGIC))
        self.size = len(MAGIC)
        os.fsync(self._file.fileno())
        self._dirty = False

    def rewrite(self, items: Sequence[tuple[int, bytes]]) -> None:
        """Replace the journal by one holding only `items` (atomic: temp file + rename)."""
        self._file.close()
        _rewrite(self.path, items)
        self._file = self.path.open("ab", buffering=0)
        self.size = self._file.tell()
        self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._file.close()
        finally:
            os.close(self._lock_fd)

    def forget(self) -> None:
        """In a process forked from the owner: close this process's copies of the file
        and lock descriptors without writing anything. The owner keeps its lock (an
        `flock` lasts while any copy of its descriptor is open, so a child that kept
        them would hold the spool locked after the owner let go)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError("short write to spool")
            view = view[written:]
        self.size += len(data)
        self._dirty = True


def _recover(path: Path) -> list[tuple[int, bytes]]:
    """Read the journal: the unsettled (seq, payload) items, in seq order."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolError(f"cannot read spool {path}: {exc.strerror}") from exc
    if not data:
        return []
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            return []  # killed while writing the header
        raise SpoolError(f"{path} is not a patientkit spool (bad header)")
    tracked: dict[int, bytes] = {}
    pos = len(MAGIC)
    while pos < len(data):
        if pos + _RECORD.size > len(data):
            break
        kind, length, crc = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        body = data[start : start + length]
        if kind not in (_TRACKED, _SETTLED) or len(body) < length:
            break
        if zlib.crc32(kind + body) != crc:
            break
        _apply(kind, body, tracked, path, pos)
        pos = start + length
    if pos < len(data):
        logger.warning(
            "spool %s: ignored a torn record at the end (%d bytes at offset %d)",
            path,
            len(data) - pos,
            pos,
        )
    return sorted(tracked.items())


def _apply(kind: bytes, body: bytes, tracked: dict[int, bytes], path: Path, pos: int) -> None:
    at = 0
    while at < len(body):
        if at + _ITEM.size > len(body):
            raise SpoolError(f"spool {path}: malformed record at offset {pos}")
        first, size = _ITEM.unpack_from(body, at)
        at += _ITEM.size
        if kind == _TRACKED:
            if at + size > len(body):
                raise SpoolError(f"spool {path}: malformed record at offset {pos}")
            tracked[first] = body[at : at + size]
            at += size
        else:
            for seq in range(first, first + size):
                tracked.pop(seq, None)


def _rewrite(path: Path, items: Sequence[tuple[int, bytes]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(MAGIC)
        for record in _tracked_records(items):
            out.write(record)
        out.flush()
        os.fsync(out.fileno())
    try:
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def json_encode(event: Any) -> bytes:
    """The default spool encoding: compact JSON, UTF-8."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class SpoolWriter(Generic[E]):
    """A buffer's journal: events in as T records, settled ones out as S records.

    `lock` serialises every call on the journal. `append` and `sync` expect the caller to
    hold it (the buffer reads its own state between them); `settle`, `close` take it.
    `live` counts journaled events not settled yet, `settled` the S-recorded ones since
    the last rewrite: when nothing is live the file is truncated, and when settled
    records dominate a file past `_COMPACT_BYTES` it is rewritten with only the live
    events. Raises SpoolError / SpoolLocked (from `open`) and OSError from writes.
    """

    def __init__(self, journal: Journal, encode: Callable[[E], bytes], live: int) -> None:
        self.journal = journal
        self.lock = threading.Lock()
        self._encode = encode
        self.live = live
        self.settled = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        encode: Callable[[E], bytes],
        decode: Callable[[bytes], E],
    ) -> tuple[SpoolWriter[E], list[tuple[int, E]]]:
        """Lock and recover the spool at `path`: the writer, and the unsettled
        (seq, event) pairs in seq order. SpoolError if a payload cannot be decoded."""
        journal, items = Journal.open(path)
        try:
            events = [(seq, decode(payload)) for seq, payload in items]
        except Exception as exc:
            journal.close()
            raise SpoolError(
                f"spool {journal.path}: cannot decode a recovered event ({type(exc).__name__})"
            ) from exc
        if items:
            logger.info("spool %s: recovered %d undelivered events", journal.path, len(items))
        return cls(journal, encode, len(items)), events

    @property
    def path(self) -> Path:
        return self.journal.path

    @property
    def closed(self) -> bool:
        return self.journal.closed

    def encoded(self, event: E) -> bytes | str:
        """The event's spool payload, or why `encode` cannot make one."""
        try:
            payload = self._encode(event)
        except Exception as exc:
            return f"cannot be written to the spool: {type(exc).__name__}: {exc}"
        if not isinstance(payload, bytes):
            return f"cannot be written to the spool: encode returned {type(payload).__name__}"
        return payload

    def append(self, start: int, events: Sequence[E]) -> dict[int, str]:
        """Lock held: journal `events`, whose seqs run from `start`, not yet synced.
        Returns {seq: reason} for the events `encode` failed on (not journaled)."""
        items: list[tuple[int, bytes]] = []
        unencodable: dict[int, str] = {}
        for seq, event in enumerate(events, start=start):
            payload = self.encoded(event)
            if isinstance(payload, bytes):
                items.append((seq, payload))
            else:
                unencodable[seq] = payload
        if items:
            self.journal.append_tracked(items)
            self.live += len(items)
        if unencodable:
            logger.warning("%d events cannot be written to the spool", len(unencodable))
        return unencodable

    def sync(self) -> None:
        """Lock held: fsync what was appended (nothing once closed)."""
        if not self.journal.closed:
            self.journal.sync()

    def settle(self, seqs: Sequence[int], live: Callable[[], list[tuple[int, E]]]) -> None:
        """Record that `seqs` were settled, and sync. `live()` gives every journaled,
        unsettled (seq, event) pair, asked only when the journal is compacted."""
        journal = self.journal
        with self.lock:
            if journal.closed:
                return
            self.live -= len(seqs)
            self.settled += len(seqs)
            if self.live <= 0:
                journal.truncate()
                self.live = self.settled = 0
                return
            journal.append_settled(seqs)
            if journal.size > _COMPACT_BYTES and self.settled > self.live:
                encoded = [(seq, self.encoded(event)) for seq, event in live()]
                items = [(seq, data) for seq, data in encoded if isinstance(data, bytes)]
                journal.rewrite(items)
                self.live, self.settled = len(items), 0
            else:
                journal.sync()

    def close(self, last: Callable[[], None] | None = None) -> None:
        """Run `last()` (lock held: journal what is left), sync, close; once."""
        with self.lock:
            if self.journal.closed:
                return
            try:
                if last is not None:
                    last()
                self.journal.sync()
            finally:
                self.journal.close()

    def forget(self) -> None:
        """In a forked child: let go of the parent's descriptors (see `Journal.forget`)."""
        self.journal.forget()


class SpoolSyncer:
    """A daemon thread that calls `sync()` every `interval` seconds (by `clock`) until
    `stop()`, so that the durability of tracked events does not wait for a slow sink. When
    `sync` raises, it calls `failed(exc)` and ends."""

    def __init__(
        self,
        sync: Callable[[], None],
        interval: float,
        clock: Clock,
        failed: Callable[[BaseException], None],
    ) -> None:
        self._sync, self._interval, self._clock, self._failed = sync, interval, clock, failed
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="patientkit-buffer-spool", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End the thread and wait for it (a `sync` under way finishes first)."""
        with self._lock:
            self._stopped = True
            self._wakeup.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    deadline = self._clock.now() + self._interval
                    while not self._stopped and self._clock.now() < deadline:
                        self._clock.wait(self._wakeup, deadline)
                    if self._stopped:
                        return
                self._sync()
        except BaseException as exc:
            self._failed(exc)


# --- the buffer's side: what of its queue is journaled -----------------------------------
# These reach into `BatchBuffer`'s queue (under its lock): the seq of the first event not
# journaled yet (`_journaled_upto`), and the events `encode` failed on (`_unencodable`).


def journal_new_events(buffer: BatchBuffer[E], spool: SpoolWriter[E]) -> None:
    """Journal the events `buffer` tracked and did not journal yet (spool lock held)."""
    with buffer._lock:
        start = max(buffer._journaled_upto, buffer._taken)
        snapshot = buffer._pending.copy()  # atomic, unlike iterating a deque others append to
        events = list(itertools.islice(snapshot, start - buffer._taken, None))
    if not events:
        return
    unencodable = spool.append(start, events)
    with buffer._lock:  # together: the flusher must see both or neither
        buffer._unencodable.update(unencodable)
        buffer._journaled_upto = start + len(events)


def live_pairs(buffer: BatchBuffer[E]) -> list[tuple[int, E]]:
    """Every journaled, unsettled (seq, event) of `buffer`, for a compaction (spool lock
    held)."""
    with buffer._lock:
        pairs = [pair for unit in buffer._work for pair in unit.pairs()]
        journaled_count = max(0, buffer._journaled_upto - buffer._taken)
        journaled = itertools.islice(buffer._pending.copy(), journaled_count)
        pairs.extend(enumerate(journaled, start=buffer._taken))
        unencodable = set(buffer._unencodable)
    return [(seq, event) for seq, event in pairs if seq not in unencodable]
