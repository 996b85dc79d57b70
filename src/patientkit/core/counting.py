"""Streaming count of (patient_id, event_type) pairs in RFC 4180 CSV.

Bytes go in through `CsvCounter.feed(chunk)`; `finish()` returns a `Counts`. Nothing but
the current chunk and the unfinished record after it is held in memory.

Each chunk is cut at its last record boundary and counted by one of two paths:

* the fast path, for the common chunk with no quotes: one C-level `translate` keeps only
  the separator bytes, and if they are exactly (columns - 1) commas then a line end, row
  after row, the chunk is vouched for; it is then split into fields in one call and the
  key columns are taken by slicing (`fields[i::columns]`) and counted by `Counter`,
  with no Python code running per row;
* the csv module, for any chunk the fast path cannot vouch for (quotes, a short or long
  row, a blank line, mixed line ends, an empty key). It reads the chunk record by record
  and names the exact line of a malformed row.

What a row is (SPEC.md), here and wherever patientkit reads CSV: records end with `\\n`,
`\\r\\n` or a lone `\\r`, as the csv module reads text opened with `newline=""`; a blank line
is not a row (skipped, never counted, never an error), before the header too; the last
record may lack its line end. `line_ends` counts physical lines the csv module's way and
`record_end` cuts at record boundaries under all three line ends, so both paths, the byte
ranges of `core/parallel.py`, the server's metadata scan (`records`) and the CSV inputs
agree on every row and every line number.

The fast path proves what it counted: its separator pattern shows that every record of
the chunk is one line of exactly `width` fields, so the rows it counts are the chunk's
line ends; a chunk with no row in that pattern (n == 0) or whose keys do not add up to n
goes to the csv module. No chunk is ever counted as zero without being read.

Partial counts merge associatively (`Counts.merge`), so files and byte ranges can be
counted apart, in any order, in other processes.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from patientkit.errors import InputError

REQUIRED = ("patient_id", "event_type")
BOM = b"\xef\xbb\xbf"
MAX_RECORD = 16 << 20  # one record may span chunks, but not without bound
GLUED_KEYS = 4096  # distinct glued keys a chunk may have before gluing is given up
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD))  # a record may be that long
_SEPARATORS = b',\n\r"'
_NOT_SEPARATORS = bytes(b for b in range(256) if b not in _SEPARATORS)

Pair = tuple[bytes, bytes]
_HEADER_KEY: Pair = (b"patient_id", b"event_type")


class CsvError(InputError):
    """A malformed CSV record, named by source and line."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass(frozen=True)
class Columns:
    """Where the key columns are in a header of `width` columns."""

    width: int
    patient: int
    event: int

    @classmethod
    def from_header(cls, names: list[str], source: str, line: int = 1) -> Columns:
        names = [name.strip() for name in names]
        for required in REQUIRED:
            found = names.count(required)
            if found == 0:
                raise CsvError(source, line, f"missing required column '{required}'")
            if found > 1:
                raise CsvError(source, line, f"column '{required}' appears {found} times")
        return cls(len(names), names.index("patient_id"), names.index("event_type"))


@dataclass
class Counts:
    """Counted pairs and rows; merging is associative and commutative."""

    pairs: Counter[Pair] = field(default_factory=Counter)
    rows: int = 0

    def merge(self, other: Counts) -> Counts:
        self.pairs.update(other.pairs)
        self.rows += other.rows
        return self

    def report(self) -> dict[str, dict[str, object]]:
        """SPEC.md's aggregation document: patients and totals, sorted by name."""
        patients: dict[str, Counter[str]] = {}
        totals: Counter[str] = Counter()
        for (patient, event), n in self.pairs.items():
            e = event.decode()
            patients.setdefault(patient.decode(), Counter())[e] += n
            totals[e] += n
        return {
            "patients": {p: dict(sorted(patients[p].items())) for p in sorted(patients)},
            "totals": dict(sorted(totals.items())),
        }


class CsvCounter:
    """Counts one CSV stream fed as byte chunks.

    With `columns` given, the stream has no header (a byte range of a larger file) and
    line numbers start at `first_line`.
    """

    def __init__(self, source: str, columns: Columns | None = None, first_line: int = 1) -> None:
        self.source = source
        self.columns = columns
        self.counts = Counts()
        self.lines = first_line - 1  # physical lines fully consumed
        self.quotes = 0  # quote characters seen, for the parity check of byte ranges
        self._tail = b""
        self._started = columns is not None
        self._glued = True

    # -- feeding ----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        if not self._started:
            if len(data) < len(BOM) and BOM.startswith(data):
                self._tail = data
                return
            self._started = True
            data = data.removeprefix(BOM)
        cut = record_end(data)
        if cut:
            self._tail = data[cut:]
            self._consume(data[:cut])  # all of data when cut == len(data): no copy
        else:
            self._tail = data
        if len(self._tail) > MAX_RECORD:
            raise CsvError(
                self.source,
                self.lines + 1,
                f"record longer than {MAX_RECORD >> 20} MiB (an unterminated quote?)",
            )

    def finish(self) -> Counts:
        """Count what is left (a last line without a line end) and return the counts."""
        tail, self._tail = self._tail, b""
        if tail:
            if tail.count(b'"') % 2:
                raise CsvError(self.source, self.lines + 1, "unterminated quoted field")
            self._consume(tail + b"\n")
        if self.columns is None:
            raise CsvError(self.source, 1, "empty file: expected a header row")
        return self.counts

    # -- counting -------------------------------------------------------------------------

    def _consume(self, body: bytes) -> None:
        """Count complete records (body ends at a record boundary)."""
        if self.columns is None:
            body = self._read_header(body)
            if not body:
                return
        if not self._fast(body):
            self._slow(body)

    def _read_header(self, body: bytes) -> bytes:
        """Take the header (after any blank lines) off body; what follows it."""
        self.columns, end, lines = read_header(body, self.source, self.lines + 1)
        self.quotes += body.count(b'"', 0, end)
        self.lines += lines
        return body[end:]

    def _fast(self, body: bytes) -> bool:
        columns = self.columns
        assert columns is not None
        plain = _plain_rows(body, columns.width)
        if plain is None:
            return False
        n, body = plain  # n rows, each one line: exactly the line ends of body
        if self._glued:
            chunk = _count_glued(body, columns)
            if len(chunk) > max(GLUED_KEYS, n // 4):
                self._glued = False  # the column beside a key varies too much to glue
        else:
            chunk = _count_split(body, columns)
        if chunk.total() != n or not _keys_ok(chunk):
            return False  # let the slow path read it and name the line
        self.counts.pairs.update(chunk)
        self.counts.rows += n
        self.lines += n
        return True

    def _slow(self, body: bytes) -> None:
        columns = self.columns
        assert columns is not None
        text = body.decode("utf-8", "surrogateescape")
        pairs: Counter[Pair] = Counter()
        for line, record in records(io.StringIO(text, newline=""), self.source, self.lines):
            if len(record) != columns.width:
                reason = f"expected {columns.width} fields, found {len(record)}"
                raise CsvError(self.source, line, reason)
            patient, event = record[columns.patient], record[columns.event]
            if (patient, event) == REQUIRED:
                raise CsvError(self.source, line, "the header row again (concatenated files?)")
            for name, value in (("patient_id", patient), ("event_type", event)):
                problem = _key_problem(value)
                if problem:
                    raise CsvError(self.source, line, f"{name} {problem}")
            pairs[(_encode(patient), _encode(event))] += 1
        self.counts.pairs.update(pairs)
        self.counts.rows += pairs.total()
        self.lines += line_ends(body)
        self.quotes += body.count(b'"')


def records(
    lines: Iterable[str], source: str, before: int = 0, strict: bool = True
) -> Iterator[tuple[int, list[str]]]:
    """The rows of CSV text as SPEC.md defines them: (line number, fields) per record,
    blank lines skipped. `lines` is text split as `newline=""` splits it (a file or
    StringIO opened so); `before` is the number of lines that came before it.

    Raises CsvError naming the line for malformed quoting (with `strict`, the csv
    module's strict mode: a quote must close a field).
    """
    reader = csv.reader(lines, strict=strict)
    line = before + 1
    try:
        for record in reader:
            if record:  # [] is a blank line: not a row
                yield line, record
            line = before + reader.line_num + 1
    except csv.Error as exc:
        raise CsvError(source, line, f"malformed quoting: {exc}") from None


def line_ends(data: bytes) -> int:
    """Physical lines ended in data, as the csv module counts them: each `\\n`, `\\r\\n`
    and lone `\\r` ends one (data must not end between the two bytes of a `\\r\\n`)."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _plain_rows(body: bytes, width: int) -> tuple[int, bytes] | None:
    """(rows, body with LF line ends) when body is n >= 1 rows of exactly `width` fields,
    no quotes, no blank line, one kind of line end, checked in C: the separators alone
    must repeat one row's pattern. Then each row is one line and n is body's line ends."""
    seps = body.translate(None, _NOT_SEPARATORS)
    commas = b"," * (width - 1)
    n = len(seps) // width
    if n and seps == (commas + b"\n") * n:
        return n, body
    if n and seps == (commas + b"\r") * n:
        return n, body.replace(b"\r", b"\n")
    n = len(seps) // (width + 1)
    if n and seps == (commas + b"\r\n") * n and body.count(b"\r\n") == n:
        return n, body.replace(b"\r\n", b"\n")  # (each \r right before its \n: "a\rb\n" is two)
    return None


def _count_split(body: bytes, columns: Columns) -> Counter[Pair]:
    """Every field its own object: line ends become commas, key columns are slices."""
    fields = body.replace(b"\n", b",").split(b",")
    del fields[-1]
    width = columns.width
    return Counter(
        zip(fields[columns.patient :: width], fields[columns.event :: width], strict=True)
    )


def _count_glued(body: bytes, columns: Columns) -> Counter[Pair]:
    """Split on commas only, a quarter fewer objects: a row's last field and the next row's
    first come glued as one ("97\\nS004"). Count the glued keys, then cut the glue once
    per distinct key rather than once per row."""
    fields = body.split(b",")
    step = columns.width - 1

    def column(index: int) -> tuple[list[bytes], Callable[[bytes], bytes] | None]:
        if index == 0:
            return fields[0:-1:step], _after_line_end
        if index == step:
            return fields[step::step], _before_line_end
        return fields[index::step], None

    patients, unglue_patient = column(columns.patient)
    events, unglue_event = column(columns.event)
    glued = Counter(zip(patients, events, strict=True))
    if unglue_patient is None and unglue_event is None:
        return glued
    chunk: Counter[Pair] = Counter()
    for (patient, event), n in glued.items():
        if unglue_patient is not None:
            patient = unglue_patient(patient)
        if unglue_event is not None:
            event = unglue_event(event)
        chunk[(patient, event)] += n
    return chunk


def _after_line_end(field: bytes) -> bytes:
    return field.rpartition(b"\n")[2]


def _before_line_end(field: bytes) -> bytes:
    return field.partition(b"\n")[0]


def read_header(body: bytes, source: str, first_line: int = 1) -> tuple[Columns | None, int, int]:
    """Parse the header record at the start of body (which ends at a record boundary),
    after any blank lines; `first_line` is the line number body starts at.

    Returns the columns (None when body is blank lines only), the offset just after the
    header and the lines taken. Raises CsvError for a malformed header.
    """
    start = blank = 0
    while start < len(body) and body[start] in b"\r\n":
        step = 2 if body.startswith(b"\r\n", start) else 1
        start += step
        blank += 1
    if start == len(body):
        return None, start, blank
    end = _first_record_end(body, start)
    text = body[start:end].decode("utf-8", "surrogateescape")
    line = first_line + blank
    try:
        names = next(csv.reader(io.StringIO(text, newline="")))
    except (csv.Error, StopIteration) as exc:
        raise CsvError(source, line, f"malformed header: {exc}") from None
    columns = Columns.from_header(names, source, line)
    return columns, end, blank + line_ends(body[start:end])


def _first_record_end(data: bytes, start: int) -> int:
    """Offset just after the first record end at or after start outside quotes (data
    ends at a record boundary, so there is one)."""
    quotes = 0
    position = start
    while True:
        found = [i for i in (data.find(b"\n", position), data.find(b"\r", position)) if i >= 0]
        if not found:
            return len(data)
        end = min(found)
        quotes += data.count(b'"', position, end)
        position = end + (2 if data.startswith(b"\r\n", end) else 1)
        if quotes % 2 == 0:
            return position


def record_end(data: bytes) -> int:
    """Offset just after the last record end of data (a line end outside quotes), or 0.

    A `\\r` as data's last byte is not taken: the `\\n` of a `\\r\\n` may come next, and a
    cut between the two would make a blank line of it. Data is taken to start at a record
    boundary (quotes pair up from its start).
    """
    end = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1))
    if end < 0 or b'"' not in data:
        return end + 1
    quotes_before = data.count(b'"', 0, end)
    while quotes_before % 2:  # that line end is inside a quoted field: step back
        previous = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end))
        if previous < 0:
            return 0
        quotes_before -= data.count(b'"', previous, end)
        end = previous
    return end + 1


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _key_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def _keys_ok(pairs: Counter[Pair]) -> bool:
    """Whether the keys of a fast-counted chunk are sound; if not, the slow path will
    name the line: an empty key, invalid UTF-8, or the header repeated."""
    for patient, event in pairs:
        if not patient or not event or (patient, event) == _HEADER_KEY:
            return False
        try:
            patient.decode()
            event.decode()
        except UnicodeDecodeError:
            return False
    return True


def count_chunks(chunks: Iterable[bytes], source: str) -> Counts:
    """Count a whole CSV stream given as byte chunks."""
    counter = CsvCounter(source)
    for chunk in chunks:
        counter.feed(chunk)
    return counter.finish()
