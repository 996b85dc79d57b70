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


@settings(max_examples=400, deadline=None)
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
