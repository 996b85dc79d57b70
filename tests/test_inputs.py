"""The NDJSON reader's fast path gives what one json.loads per line gives, for any input
and any way the stream is cut; stdin is read as it comes."""

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkit import inputs
from patientkit.core import jsontext
from patientkit.errors import UsageError
from patientkit.inputs import Item, read_items
from tests.helpers import examples


def reference(data: bytes, source: str = "x") -> list[Item]:
    """The plain reader: one jsontext.loads (json.loads, checked) per line."""
    found = []
    for number, line in enumerate(io.BytesIO(data), start=1):
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            found.append(Item(source, number, jsontext.loads(line)))
        except jsontext.BadJson as exc:
            found.append(Item(source, number, None, exc.reason))
    return found


class Pieces(io.RawIOBase):
    """A stream that hands out its bytes in the given sizes, like a pipe."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes = data, sizes or [1]
        self.turn = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        size = min(len(buffer), self.sizes[self.turn % len(self.sizes)], len(self.data))
        self.turn += 1
        buffer[:size] = self.data[:size]
        self.data = self.data[size:]
        return size


def fast(data: bytes, sizes: list[int]) -> list[Item]:
    stream = io.BufferedReader(Pieces(data, sizes), 16)
    return list(inputs._ndjson_items(stream, "x"))


FRAGMENTS = [
    b'{"test_id": "T1", "result": "5"}',
    b'{"a": [1,',
    b"2]}",
    b"[1",
    b"2]",
    b"3,4",
    b'"str"',
    b"1 2",
    b"  {}  ",
    b"{}\r",
    b"",
    b"   ",
    b"\x0c",
    b"\x0c{}",
    b"nul\x00l",
    b"\xef\xbb\xbf{}",
    b"\xff\xfe",
    '"é ü 中"'.encode(),
    b"NaN",
    b"-",
    b"{",
    b"}",
    b'"a',
    b'b"',
    b"1,",
    b",1",
    b"[]",
    b"null",
    b"true false",
    b'{"count": ' + b"9" * 4400 + b"}",  # more digits than int() converts
    b"[" * 1500,  # deeper than the parser recurses
    b'{"a": ' * 101 + b"1" + b"}" * 101,  # parses, but deeper than MAX_DEPTH
    b'{"a": ' * 100 + b"1" + b"}" * 100,  # just deep enough
    b'{"s": "\\ud800"}',  # a lone surrogate escape
    b'{"s": "\\ud83d\\ude00"}',  # a pair: one character
    b'{"s": "\\\\ud800"}',  # an escaped backslash, then text
    b'{"s": "Jos\xe9"}',  # Latin-1: not UTF-8
    b'{"s": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8
]


@settings(max_examples=examples(400), deadline=None)
@given(
    lines=st.lists(st.sampled_from(FRAGMENTS), max_size=12),
    ending=st.sampled_from([b"\n", b"\r\n"]),
    last_newline=st.booleans(),
    sizes=st.lists(st.integers(1, 40), max_size=5),
    bom=st.booleans(),
)
def test_the_fast_reader_matches_one_json_loads_per_line(lines, ending, last_newline, sizes, bom):
    data = ending.join(lines) + (ending if last_newline and lines else b"")
    if bom:
        data = b"\xef\xbb\xbf" + data
    assert fast(data, sizes) == reference(data)


def test_values_that_span_lines_are_errors_on_each_line():
    data = b"[1\n2]\n3,4\n"
    assert fast(data, [100]) == reference(data)
    assert [item.error for item in fast(data, [100])] == [
        "invalid JSON: Expecting ',' delimiter",
        "invalid JSON: Extra data",
        "invalid JSON: Extra data",
    ]


def test_long_lines_and_many_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "CHUNK", 64)
    lines = [json.dumps({"test_id": f"T{i}", "pad": "x" * (i % 300)}).encode() for i in range(500)]
    data = b"\n".join(lines)
    path = tmp_path / "in.ndjson.gz"
    path.write_bytes(gzip.compress(data))
    items = list(read_items(str(path), ()))
    assert items == reference(data, str(path))
    assert [item.line for item in items] == list(range(1, 501))


def test_stdin_is_read_as_it_comes():
    """A line is handed over before the next arrives: a producer that waits for the
    consumer does not deadlock."""
    child = textwrap.dedent(
        """
        import sys
        from patientkit.inputs import read_items
        for item in read_items("-", ()):
            print(item.line, item.value["n"], flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        for n in range(3):
            process.stdin.write(json.dumps({"n": n}).encode() + b"\n")
            process.stdin.flush()
            assert process.stdout.readline() == f"{n + 1} {n}\n".encode()
        process.stdin.close()
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()


def test_check_paths_takes_files_and_pipes_and_refuses_the_rest(tmp_path):
    (tmp_path / "a.ndjson").write_text("{}\n")
    os.mkfifo(tmp_path / "pipe")
    inputs.check_paths(["-", str(tmp_path / "a.ndjson"), str(tmp_path / "pipe")])
    with pytest.raises(UsageError, match=r"nope\.ndjson: no such file$"):
        inputs.check_paths([str(tmp_path / "nope.ndjson")])
    with pytest.raises(UsageError, match=r": is a folder, not a file$"):
        inputs.check_paths([str(tmp_path)])


# --- records that cannot be parsed: each is an Item with its true reason ---------------

READING_FIELDS = ("id", "count", "timestamp")
RECORD_FIELDS = ("test_id", "patient_id", "clinic_id", "test_type", "result")
GOOD = b'{"id": "55555555-5555-4555-8555-555555555555", "count": 4, "timestamp": "t"}'
SURROGATE = "lone surrogate escape (\\ud800-\\udfff without its pair), not valid in UTF-8"


def items(tmp_path, name: str, data: bytes, fields=READING_FIELDS) -> list[tuple]:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return [(item.line, item.value, item.error) for item in read_items(str(path), fields)]


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_each_unparseable_ndjson_line_has_its_true_reason(tmp_path, gz):
    lines = [
        b'{"count": ' + b"9" * 5000 + b"}",  # plain ASCII: not "not UTF-8"
        b"[" * 100_000,
        b'{"a": ' * 101 + b"1" + b"}" * 101,
        b'{"id": "\\ud800"}',
        b'{"id": "Jos\xe9"}',
        GOOD,
    ]
    assert items(tmp_path, f"in.ndjson{gz}", b"\n".join(lines)) == [
        (1, None, "count: number too large (5000 digits)"),
        (2, None, "nesting too deep (more than 100 levels of arrays and objects)"),
        (3, None, "nesting too deep (more than 100 levels of arrays and objects)"),
        (4, None, f"id: {SURROGATE}"),
        (5, None, "not valid UTF-8"),
        (6, json.loads(GOOD), None),
    ]


def test_an_ndjson_file_is_ndjson_even_if_its_first_line_is_a_bad_array(tmp_path):
    data = b"[" * 100_000 + b"\n" + GOOD + b"\n"
    assert items(tmp_path, "deep.ndjson", data) == [
        (1, None, "nesting too deep (more than 100 levels of arrays and objects)"),
        (2, json.loads(GOOD), None),
    ]
    assert items(tmp_path, "in.jsonl", b"[1, 2]\n" + GOOD)[1] == (2, json.loads(GOOD), None)


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_the_array_reader_goes_on_after_an_element_it_refuses(tmp_path, gz):
    elements = [
        b'{"count": ' + b"9" * 5000 + b"}",
        b"[" * 5000 + b"]" * 5000,  # too deep for the parser: skipped to its bracket
        b'{"a": ' * 101 + b"1" + b"}" * 101,
        b'{"id": "\\udfff"}',
        b'{"id": "Jos\xe9", "n": [1, "]"]}',
        b"-" + b"1" * 4301,
        GOOD,
    ]
    data = b"[\n" + b",\n".join(elements) + b"\n]\n"
    assert items(tmp_path, f"in.json{gz}", data) == [
        (2, None, "count: number too large (5000 digits)"),
        (3, None, "nesting too deep (more than 100 levels of arrays and objects)"),
        (4, None, "nesting too deep (more than 100 levels of arrays and objects)"),
        (5, None, f"id: {SURROGATE}"),
        (6, None, "not valid UTF-8"),
        (7, None, "number too large (4301 digits)"),
        (8, json.loads(GOOD), None),
    ]


def test_the_array_reader_says_why_it_cannot_go_on(tmp_path):
    assert items(tmp_path, "deep.json", b"[" * 100_000) == [
        (
            1,
            None,
            "nesting too deep (more than 100 levels of arrays and objects); "
            "the rest of the array is unread",
        )
    ]
    assert items(tmp_path, "bad.json", b'[\n{"a": 1},\n\xff\xfe, {"b": 2}]') == [
        (2, {"a": 1}, None),
        (3, None, "not valid UTF-8; the rest of the array is unread"),
    ]


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_a_csv_row_that_is_not_utf8_is_refused_never_replaced(tmp_path, gz):
    data = (
        b"test_id,patient_id,clinic_id,test_type,result\r\n"
        b"T1,Jos\xe9,CL,cbc,ok\r\n"
        b"T2,Jos\xc3\xa9,CL,cbc,ok\r\n"
        b"T3,P,CL,cbc,\xed\xa0\x80\r\n"
        b"T4,P,CL\xff\r\n"  # too few fields, and not UTF-8
    )
    assert items(tmp_path, f"rec.csv{gz}", data, RECORD_FIELDS) == [
        (2, None, "not valid UTF-8"),
        (3, dict(zip(RECORD_FIELDS, ["T2", "José", "CL", "cbc", "ok"], strict=True)), None),
        (4, None, "not valid UTF-8"),
        (5, None, "not valid UTF-8"),
    ]
    bad_header = b"id,count,timestamp,n\xffote\n1,2,3,4\n"
    assert items(tmp_path, "h.csv", bad_header) == [(1, None, "the CSV header is not valid UTF-8")]


JSON_ELEMENTS = st.one_of(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=6)
        | st.sampled_from(["\ud800", "\udc80x"]),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
    st.sampled_from(
        [
            b"9" * 4400,
            b'{"count": -' + b"1" * 4400 + b"}",
            b"[" * 1500 + b"]" * 1500,
            b'{"a": ' * 101 + b"1" + b"}" * 101,
            b'"Jos\xe9"',
            b'{"k\xff": 1}',
            b'"\xed\xa0\x80"',
            b'"\\ud83d\\ude00"',
        ]
    ),
)


@settings(max_examples=examples(100), deadline=None)
@given(elements=st.lists(JSON_ELEMENTS, max_size=6), gz=st.booleans())
def test_the_array_reader_gives_one_item_per_element_as_jsontext_would(elements, gz):
    """Whatever each element is (JSON, a number too long, too deep, a lone surrogate,
    bytes that are not UTF-8 in a string), there is exactly one Item for it, on its line,
    with the value or the reason jsontext.loads gives for it alone."""
    data = b"[\n" + b",\n".join(elements) + b"\n]"
    raw = io.BytesIO(gzip.compress(data) if gz else data)
    stream = io.BufferedReader(gzip.GzipFile(fileobj=raw) if gz else raw)
    expected = []
    for line, element in enumerate(elements, start=2):
        try:
            expected.append(Item("x", line, jsontext.loads(element)))
        except jsontext.BadJson as exc:
            expected.append(Item("x", line, None, exc.reason))
    assert list(inputs.array_items(stream, "x")) == expected


def storable(value) -> bool:
    """What a reader hands on can be stored as UTF-8 and written out again as JSON."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return jsontext.depth(value) <= jsontext.MAX_DEPTH


FUZZ_PIECES = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b",",
        b":",
        b"\n",
        b"\r",
        b"\r\n",
        b'"\\ud800"',
        b"9" * 4400,
        b"[" * 1200,
        b"\xe9",
        b"\xff",
        b"\xed\xa0\x80",
        b"\xef\xbb\xbf",
        b"id,count,timestamp\n",
        b"test_id,patient_id,clinic_id,test_type,result\n",
        b"a,b,c\n",
        GOOD,
        b"null",
        b"\x00",
    ]
)


@settings(max_examples=examples(150), deadline=None)
@given(
    data=st.one_of(st.binary(max_size=300), st.lists(FUZZ_PIECES, max_size=12).map(b"".join)),
    name=st.sampled_from(["in.ndjson", "in.json", "in.csv", "in", "in.jsonl"]),
    fields=st.sampled_from([READING_FIELDS, RECORD_FIELDS]),
    gz=st.booleans(),
)
def test_every_reader_gives_items_for_any_bytes(tmp_path_factory, data, name, fields, gz):
    """NDJSON, JSON array and CSV readers, of readings and records, plain and gzip: any
    input gives Items (a value, or an error saying why), on lines of the input in order,
    and whatever they hand on is storable. Nothing else is ever raised."""
    if data.startswith(b"\x1f\x8b") and not gz:
        data = b" " + data  # a broken gzip stream is another kind (read errors)
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    lines = data.count(b"\n") + data.count(b"\r") + 1
    last = 0
    for item in read_items(str(path), fields):
        assert isinstance(item, Item) and item.source == str(path)
        assert last <= item.line <= lines
        last = item.line
        assert item.error is None or (isinstance(item.error, str) and item.error)
        assert storable(item.value)
        assert storable(item.error)
