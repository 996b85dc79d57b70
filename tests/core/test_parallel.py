import gzip
from pathlib import Path

import pytest

from patientkit.core.counting import CsvError
from patientkit.core.parallel import count_files, count_piece, expand_paths, plan_file
from patientkit.errors import UsageError

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
    seen = []
    result = count_piece(plan_file(str(path), None).pieces[0], seen.append)
    assert result.error is None
    assert sum(seen) == path.stat().st_size
