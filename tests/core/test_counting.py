import csv
import io
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkit.core.counting import Counts, CsvCounter, CsvError, count_chunks, records
from tests.helpers import examples

HEADER = b"patient_id,event_time,event_type,value\n"


def count(data: bytes, size: int = 1 << 20, source: str = "x.csv") -> Counts:
    return count_chunks([data[i : i + size] for i in range(0, len(data), size)], source)


def count_every_way(data: bytes) -> Counts | str:
    """Count with several chunk sizes (down to one byte): all must agree."""
    results = []
    for size in (1, 2, 3, 5, 8, 64, 1 << 20):
        try:
            c = count(data, size)
            results.append((c.rows, dict(c.pairs)))
        except CsvError as exc:
            results.append(str(exc))
    assert all(r == results[0] for r in results), results
    first = results[0]
    return first if isinstance(first, str) else count(data)


def pairs(result: Counts) -> dict[tuple[str, str], int]:
    return {(p.decode(), e.decode()): n for (p, e), n in result.pairs.items()}


def test_plain_rows_are_counted_exactly():
    data = (
        HEADER + b"S001,2025-08-26T00:00:02.760570Z,spo2,97\nS001,t,spo2,98\nS002,t,heart_rate,70\n"
    )
    result = count_every_way(data)
    assert result.rows == 3
    assert pairs(result) == {("S001", "spo2"): 2, ("S002", "heart_rate"): 1}


def test_report_is_sorted_with_totals_equal_to_column_sums():
    data = HEADER + b"P2,t,b,1\nP1,t,b,1\nP1,t,a,1\nP2,t,b,1\n"
    report = count(data).report()
    assert report == {
        "patients": {"P1": {"a": 1, "b": 1}, "P2": {"b": 2}},
        "totals": {"a": 1, "b": 3},
    }
    assert list(report["patients"]) == ["P1", "P2"]
    assert list(report["patients"]["P1"]) == ["a", "b"]


def test_crlf_bom_and_columns_in_any_order():
    data = (
        b"\xef\xbb\xbfvalue,event_type,extra,patient_id\r\n"
        b"1,spo2,x,P1\r\n2,bp_sys,y,P1\r\n3,spo2,z,P2\r\n"
    )
    result = count_every_way(data)
    assert pairs(result) == {("P1", "spo2"): 1, ("P1", "bp_sys"): 1, ("P2", "spo2"): 1}


def test_quoted_fields_with_commas_newlines_and_quotes():
    data = (
        b"patient_id,event_time,event_type,value\n"
        b'"P,1","2025\n-08",spo2,"9""7"\n'
        b'P2,t,"heart\r\nrate",70\n'
        b'"P,1",t,spo2,1'  # the last line has no line end
    )
    result = count_every_way(data)
    assert pairs(result) == {("P,1", "spo2"): 2, ("P2", "heart\r\nrate"): 1}


def test_header_only_counts_nothing():
    assert count_every_way(HEADER).rows == 0
    assert count_every_way(HEADER.rstrip(b"\n")).rows == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "x.csv:1: empty file: expected a header row"),
        (b"\xef\xbb\xbf", "x.csv:1: empty file: expected a header row"),
        (b"patient_id,event_time,value\nP1,t,1\n", "x.csv:1: missing required column 'event_type'"),
        (b"patient_id,event_type,patient_id\n", "x.csv:1: column 'patient_id' appears 2 times"),
        (HEADER + b"P1,t,a,1\nP2,t,b\nP3,t,c,1\n", "x.csv:3: expected 4 fields, found 3"),
        (HEADER + b"P1,t,a,1\nP2,t,b,1,extra\n", "x.csv:3: expected 4 fields, found 5"),
        (HEADER + b"P1,t,a,1\n\nP2,t,b\n", "x.csv:4: expected 4 fields, found 3"),
        (b"\r\n\r" + HEADER + b"P1,t,a\n", "x.csv:4: expected 4 fields, found 3"),
        (HEADER.replace(b"\n", b"\r") + b"P1,t,a,1\rP2,t\r", "x.csv:3: expected 4 fields, found 2"),
        (b"\n\npatient_id,value\n", "x.csv:3: missing required column 'event_type'"),
        (b"\n\r\n\r", "x.csv:1: empty file: expected a header row"),
        (HEADER + b'P1,t,a,1\nP2,"t,b,1\nP3,t,c,1\n', "x.csv:3: unterminated quoted field"),
        (HEADER + b"P1,t,a,1\n,t,b,1\n", "x.csv:3: patient_id is empty"),
        (HEADER + b"P1,t,,1\n", "x.csv:2: event_type is empty"),
        (HEADER + b"P1,t,a,1\nP\xff,t,a,1\n", "x.csv:3: patient_id is not valid UTF-8"),
        (HEADER + b"P1,t,a,1\n" + HEADER, "x.csv:3: the header row again (concatenated files?)"),
    ],
)
def test_malformed_input_names_file_and_line(data, message):
    assert count_every_way(data) == message


def test_error_line_counts_quoted_newlines_as_lines():
    data = HEADER + b'P1,"a\nb",x,1\nP2,t,x\n'
    assert count_every_way(data) == "x.csv:4: expected 4 fields, found 3"


def test_a_neighbour_column_with_many_values_still_counts_exactly():
    # value is the last column, glued to the next row's patient_id in the fast path;
    # with a distinct value on every row the counter must change strategy, not answer wrong
    rng = random.Random(3)
    n = 60_000
    patients = rng.choices(["P1", "P2", "P3"], k=n)
    events = rng.choices(["a", "b"], k=n)
    data = (
        HEADER
        + "".join(
            f"{p},t,{e},{rng.random():.9f}\n" for p, e in zip(patients, events, strict=True)
        ).encode()
    )
    result = count(data, size=64 << 10)
    assert pairs(result) == dict(Counter(zip(patients, events, strict=True)))


# The values of random_rows' columns and their weights: a patient id is P1 or P2 nine times
# in ten, else any of the four; an event type now and then holds a line end (2%).
VALUES = {
    "patient_id": (["P1", "P2", "P,3", 'P"4'], [19, 19, 1, 1]),
    "event_type": (["spo2", "bp_sys", "heart\nrate"], [149, 149, 2]),
    "event_time": ([f"2025-08-26T00:00:{s:02d}Z" for s in range(60)], None),
    "value": ([str(v) for v in range(1, 201)], None),
}


def random_rows(rng: random.Random, columns: list[str], n: int) -> list[tuple[str, ...]]:
    """`n` rows of `columns`, drawn a column at a time (rng.choices: a tenth of the
    cost of a draw a value)."""
    drawn = [rng.choices(VALUES[c][0], weights=VALUES[c][1], k=n) for c in columns]
    return list(zip(*drawn, strict=True)) if columns else []


def test_fast_path_agrees_with_the_csv_module_on_random_files():
    rng = random.Random(11)
    for _ in range(60):
        columns = ["patient_id", "event_time", "event_type", "value"][: rng.randint(2, 4)]
        if "event_type" not in columns:
            columns.append("event_type")
        rng.shuffle(columns)
        rows = random_rows(rng, columns, rng.randint(0, 2000))
        text = io.StringIO()
        csv.writer(text, lineterminator=rng.choice(["\n", "\r\n"])).writerows([columns, *rows])
        data = text.getvalue().encode()
        p, e = columns.index("patient_id"), columns.index("event_type")
        want = Counter((r[p], r[e]) for r in rows)
        result = count(data, size=rng.choice([7, 300, 4096, 1 << 20]))
        assert pairs(result) == dict(want)
        assert result.rows == len(rows)


def test_partial_counts_merge_associatively():
    a = count(HEADER + b"P1,t,a,1\nP2,t,b,1\n")
    b = count(HEADER + b"P1,t,a,1\n")
    c = count(HEADER + b"P3,t,c,1\nP1,t,b,1\n")
    left = Counts().merge(a).merge(b).merge(c)
    right = Counts().merge(c).merge(Counts().merge(b).merge(a))
    assert left == right
    assert left.rows == 5
    assert left.report()["totals"] == {"a": 2, "b": 2, "c": 1}


def test_memory_is_bounded_by_one_record():
    counter = CsvCounter("x.csv")
    counter.feed(HEADER + b'P1,t,a,"')
    with pytest.raises(CsvError, match=r"x.csv:2: record longer than 16 MiB"):
        for _ in range(20):
            counter.feed(b"x" * (1 << 20))


CASES = Path(__file__).resolve().parents[1] / "cases"


def test_lone_cr_line_ends_are_rows_as_the_csv_module_reads_them():
    # case 07-cr-only-line-ends: it counted {} (the header "ended" at the appended \n)
    data = (
        b"patient_id,event_time,event_type,value\rP001,2025-08-26T00:00:02Z,spo2,97\r"
        b"P001,2025-08-26T00:00:03Z,spo2,98\rP002,2025-08-26T00:00:03Z,bp_sys,120\r"
    )
    case = CASES / "07-cr-only-line-ends" / "cr.csv"
    if case.is_file():
        assert case.read_bytes() == data
    result = count_every_way(data)
    assert result.rows == 3
    assert pairs(result) == {("P001", "spo2"): 2, ("P002", "bp_sys"): 1}
    assert pairs(count_every_way(data.rstrip(b"\r"))) == pairs(result)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_blank_lines_are_skipped_never_counted_never_an_error(end):
    rows = [b"P1,t,a,1", b"", b"P2,t,b,1", b"", b"", b"P1,t,a,2", b""]
    data = end + HEADER.rstrip(b"\n") + end + end.join(rows) + end
    result = count_every_way(data)
    assert result.rows == 3
    assert pairs(result) == {("P1", "a"): 2, ("P2", "b"): 1}
    # line numbers still count the blank lines
    bad = data + b"P3,t" + end
    assert count_every_way(bad) == f"x.csv:{2 + len(rows) + 1}: expected 4 fields, found 2"


def test_mixed_line_ends_and_a_crlf_split_across_every_chunk_boundary():
    data = HEADER + b'P1,t,a,1\r\nP2,t,b,1\rP1,t,a,1\n\r\nP2,t,"b\r\nc",1\r'
    result = count_every_way(data)
    assert pairs(result) == {("P1", "a"): 2, ("P2", "b"): 1, ("P2", "b\r\nc"): 1}
    assert count_every_way(data + b"P3\r") == "x.csv:8: expected 4 fields, found 1"


def test_the_fast_path_never_counts_a_chunk_it_cannot_vouch_for_as_zero():
    # a chunk of only blank lines, or with line ends the pattern does not know, is read
    # by the csv module; the rows counted always equal the reference
    for body in (b"\r\n" * 5, b"\r" * 5, b"P1,t,a,1\rP1,t,a,1\n", b"P1,t,a,1\r\r\n"):
        data = HEADER + body
        want = sum(1 for r in csv.reader(io.StringIO(data.decode(), newline="")) if r) - 1
        assert count_every_way(data).rows == want


# -- property: the counter, the csv module and the server's metadata scan agree ---------


def reference(text: str) -> tuple[int, dict[tuple[str, str], int]] | None:
    """Rows and pairs as the csv module reads text (blank lines skipped); None if the
    counter must refuse it (a malformed row, header or quoting)."""
    try:
        found = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r]
    except csv.Error:
        return None
    if not found:
        return None
    names = [n.strip() for n in found[0]]
    if any(names.count(k) != 1 for k in ("patient_id", "event_type")):
        return None
    p, e = names.index("patient_id"), names.index("event_type")
    got: Counter[tuple[str, str]] = Counter()
    for row in found[1:]:
        if len(row) != len(names) or not row[p] or not row[e]:
            return None
        if (row[p], row[e]) == ("patient_id", "event_type"):
            return None
        got[(row[p], row[e])] += 1
    return len(found) - 1, dict(got)


FIELD = st.text(alphabet='aP1é ,"\r\n', max_size=5)
LINE_END = st.sampled_from(["\n", "\r\n", "\r"])
# csv_texts' other strategies, made once (not once a draw: a lookup in hypothesis's cache
# of strategies each time, a sixth of an example's cost)
COLUMNS = st.permutations(["patient_id", "event_type", "event_time", "value"])
KEPT, RECORDS = st.integers(2, 4), st.integers(0, 12)
KEY = st.sampled_from(["P1", "P2", "P,3", 'P"4', "P\r\n5", "P\r6"])
ONE_IN_16, ONE_IN_5 = st.integers(0, 15), st.integers(0, 4)
QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
BOOLEANS = st.booleans()


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    columns = draw(COLUMNS)
    columns = columns[: draw(KEPT)]
    if "patient_id" not in columns or "event_type" not in columns:
        columns = ["patient_id", "event_type"]
    records = [columns]
    for _ in range(draw(RECORDS)):
        row = [draw(KEY) if c in ("patient_id", "event_type") else draw(FIELD) for c in columns]
        if draw(ONE_IN_16) == 0:
            row = row[:-1] or ["x", "y", "z"]  # now and then a malformed row
        records.append(row)
    out = []
    for record in records:
        while draw(ONE_IN_5) == 0:
            out.append(draw(LINE_END))  # blank lines anywhere
        style = draw(QUOTING)
        line = io.StringIO()
        csv.writer(line, quoting=style, lineterminator="").writerow(record)
        out.append(line.getvalue() + draw(LINE_END))
    text = "".join(out)
    if draw(BOOLEANS):
        text = text.rstrip("\r\n")  # the last record may lack its line end
    return text


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(text=csv_texts(), size=st.integers(1, 64))
def test_counter_equals_the_csv_module_on_random_texts(text, size):
    data = text.encode()
    want = reference(text)
    try:
        got = count(data, size)
    except CsvError:
        assert want is None, text
        return
    assert want is not None, text
    assert (got.rows, pairs(got)) == want


@settings(max_examples=examples(200), deadline=None)
@given(data=st.binary(max_size=200), size=st.integers(1, 16))
def test_any_bytes_give_counts_or_a_csv_error(data, size):
    try:
        got = count(data, size)
    except CsvError:
        return
    want = reference(data.decode("utf-8", "surrogateescape"))
    assert want is not None and (got.rows, len(pairs(got))) == (want[0], len(want[1]))


@settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(text=csv_texts())
def test_every_reader_of_csv_agrees_on_what_a_row_is(tmp_path, text):
    """One definition of a row: the counter, the server's metadata scan and the CSV inputs
    of readings and records find the same rows, on the same lines."""
    from patientkit.inputs import read_items
    from patientkit.server.exports import _scan

    want = reference(text)
    if want is None:
        return
    path = tmp_path / "x.csv"
    path.write_bytes(text.encode())
    assert count(text.encode()).rows == want[0]
    assert _scan("x", path)["rows"] == want[0]
    lines = [line for line, _ in records(io.StringIO(text, newline=""), "x.csv")][1:]
    items = list(read_items(str(path), ("patient_id", "event_type")))
    assert [item.line for item in items] == lines
    assert all(item.error is None for item in items)


def test_a_lone_cr_before_a_field_ends_the_row_in_a_crlf_looking_chunk():
    # hypothesis found it: the separators of "P1,P\r6\n" are those of one CRLF row, but the
    # csv module reads two records, the second one short
    data = b"\npatient_id,event_type\nP1,P\r6\n"
    assert count_every_way(data) == "x.csv:4: expected 2 fields, found 1"
    good = b"patient_id,event_type\r\nP1,a\r\nP2,b\rP3,c\r\n"
    assert pairs(count_every_way(good)) == {("P1", "a"): 1, ("P2", "b"): 1, ("P3", "c"): 1}
