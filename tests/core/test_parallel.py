import csv
import gzip
import io
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.core.counting import CsvError
from patientkit.core.parallel import (
    after_line_end,
    count_files,
    count_piece,
    expand_paths,
    plan_file,
)
from patientkit.core.workers import WorkerDied, WorkerPool
from patientkit.errors import ReadError, UsageError
from tests.helpers import examples

HEADER = b"patient_id,event_time,event_type,value\n"


def write(path: Path, rows: list[bytes], header: bytes = HEADER) -> Path:
    path.write_bytes(header + b"".join(rows))
    return path


def rows(n: int, start: int = 0) -> list[bytes]:
    return [
        f"P{i % 3},2025-08-26T00:00:00.{i:06d}Z,{'ab'[i % 2]},{i % 90}\n".encode()
        for i in range(start, start + n)
    ]


def test_a_file_cut_into_pieces_counts_the_same_as_whole(tmp_path):
    path = write(tmp_path / "a.csv", rows(20_000))
    plan = plan_file(str(path), piece_size=50_000)
    assert len(plan.pieces) > 5
    assert plan.pieces[0].start == len(HEADER)
    whole = count_files([str(path)], workers=1)
    split = count_files([str(path)], workers=2, piece_size=50_000)
    assert split == whole
    assert whole.rows == 20_000


def test_a_cut_inside_a_quoted_field_is_detected_and_counted_whole(tmp_path):
    # one huge quoted field full of line ends: cuts will fall inside it
    quoted = b'P9,"' + b"line\n" * 40_000 + b'",a,1\n'
    path = write(tmp_path / "q.csv", [*rows(1000), quoted, *rows(1000, 1000)])
    split = count_files([str(path)], workers=2, piece_size=30_000)
    assert split == count_files([str(path)], workers=1)
    assert split.rows == 2001


def test_errors_in_a_later_piece_name_the_line_in_the_whole_file(tmp_path):
    good = rows(30_000)
    bad = [*good[:25_000], b"P1,t,a\n", *good[25_000:]]
    path = write(tmp_path / "bad.csv", bad)
    with pytest.raises(CsvError) as caught:
        count_files([str(path)], workers=2, piece_size=40_000)
    assert str(caught.value) == f"{path}:25002: expected 4 fields, found 3"


def test_folders_gzip_and_the_first_error_by_file_order(tmp_path):
    write(tmp_path / "b.csv", rows(10))
    with gzip.open(tmp_path / "a.csv.gz", "wb") as out:
        out.write(HEADER + b"".join(rows(5)))
    (tmp_path / "notes.txt").write_text("not a csv")
    assert expand_paths([str(tmp_path)]) == [str(tmp_path / "a.csv.gz"), str(tmp_path / "b.csv")]
    assert count_files([str(tmp_path)], workers=2).rows == 15
    write(tmp_path / "c.csv", [b"P1,t\n"])
    write(tmp_path / "d.csv", [b"P1\n"])
    with pytest.raises(CsvError, match=r"c.csv:2: expected 4 fields, found 2"):
        count_files([str(tmp_path)], workers=2)


def test_missing_paths_and_empty_folders_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        expand_paths([str(tmp_path / "nope.csv")])
    with pytest.raises(UsageError, match=r"no \.csv or \.csv\.gz files"):
        expand_paths([str(tmp_path)])


def test_progress_reports_every_byte(tmp_path):
    path = write(tmp_path / "a.csv", rows(50_000))
    seen: list[tuple[int, int]] = []
    result = count_piece(plan_file(str(path), None).pieces[0], lambda r, b: seen.append((r, b)))
    assert result.error is None
    assert sum(b for _, b in seen) == path.stat().st_size
    assert sum(r for r, _ in seen) == result.counts.rows == 50_000  # rows too, as they come
    assert len(seen) > 1


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_cuts_fall_on_record_ends_under_every_line_end(tmp_path, end):
    path = write(
        tmp_path / "a.csv", [r.replace(b"\n", end) for r in rows(5000)], HEADER.replace(b"\n", end)
    )
    plan = plan_file(str(path), piece_size=7_001)
    assert len(plan.pieces) > 10
    data = path.read_bytes()
    for piece in plan.pieces[1:]:
        assert data[piece.start - 1 : piece.start] in (b"\n", b"\r")
        assert data[piece.start : piece.start + 1] not in (b"\n", b"\r")  # never inside \r\n
    assert count_files([str(path)], workers=2, piece_size=7_001) == count_files([str(path)], 1)
    assert count_files([str(path)], workers=1).rows == 5000


def test_after_line_end_takes_a_crlf_whole_even_across_a_read(tmp_path):
    data = b"ab\r\ncd\ref\n" + b"x" * 70_000 + b"\r" + b"\n" + b"y\r"
    path = tmp_path / "d"
    path.write_bytes(data)
    with path.open("rb") as stream:
        assert after_line_end(stream, 0) == 4
        assert after_line_end(stream, 3) == 4  # between \r and \n: after the \n
        assert after_line_end(stream, 4) == 7
        assert after_line_end(stream, 10) == 10 + 70_000 + 2
        assert after_line_end(stream, len(data) - 1) == len(data)
        assert after_line_end(stream, len(data)) == len(data)


LINE_ENDS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from([b"P1", b"P2", b'"P\r\n3"', b'"P,4"']),
            st.sampled_from([b"a", b"b", b'"c\rd"']),
            LINE_ENDS,
            st.integers(0, 3),
        ),
        max_size=300,
    ),
    piece_size=st.integers(40, 2_000),
    header_end=LINE_ENDS,
)
def test_byte_ranges_count_as_the_whole_file_and_the_csv_module(
    tmp_path, records, piece_size, header_end
):
    body = b"".join(
        blank * end + b"%s,t,%s,1%s" % (patient, event, end)
        for patient, event, end, blank in records
    )
    path = tmp_path / "r.csv"
    path.write_bytes(HEADER.replace(b"\n", header_end) + body)
    text = path.read_bytes().decode()
    found = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    want = Counter((r[0].encode(), r[2].encode()) for r in found)
    split = count_files([str(path)], workers=1, piece_size=piece_size)
    assert (split.rows, split.pairs) == (len(found), want)


def test_a_truncated_gzip_is_a_read_error_in_a_worker_too(tmp_path):
    whole = gzip.compress(HEADER + b"".join(rows(100_000)))
    (tmp_path / "a.csv.gz").write_bytes(whole[: len(whole) // 2])
    write(tmp_path / "b.csv", rows(10))
    for workers in (1, 2):
        with pytest.raises(ReadError, match=r"a.csv.gz: cannot read it to the end: truncated"):
            count_files([str(tmp_path)], workers=workers)


def test_a_worker_that_dies_is_an_error_not_a_hang():
    with WorkerPool(2) as pool, pytest.raises(WorkerDied, match="ended unexpectedly"):
        pool.map(os._exit, [0, 0, 0])
    with WorkerPool(2) as pool, pytest.raises(CsvError, match="x:1: y") as raised:
        pool.map(_raise_csv_error, [1])  # our errors pickle whole, whatever __init__ takes
    assert (raised.value.line, raised.value.reason) == (1, "y")
    with WorkerPool(2) as pool, pytest.raises(RuntimeError, match="Unpicklable: z"):
        pool.map(_raise_unpicklable, [1])  # one that does not pickle arrives all the same


class Unpicklable(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}{b}")

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("not this one")


def _raise_csv_error(_: int) -> None:
    raise CsvError("x", 1, "y")


def _raise_unpicklable(_: int) -> None:
    raise Unpicklable("z", "")


def test_the_pool_leaves_no_process_behind():
    def gone(pid: int) -> bool:
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"

    with WorkerPool(2) as pool:
        pids = pool.map(_pid, range(6))
        assert len(set(pids)) == 2
    with pytest.raises(KeyboardInterrupt), WorkerPool(2) as pool:
        pids += pool.map(_pid, range(2))
        raise KeyboardInterrupt  # as Ctrl-C mid-job: every worker stopped on the way out
    assert all(gone(pid) for pid in pids)
    mine = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert not set(map(int, mine)) & set(pids)


def _pid(_: int) -> int:
    return os.getpid()
