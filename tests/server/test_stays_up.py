"""The server stays up (case 09): clients that hang up mid-download, mid-answer and
mid-body never stop `patientkit serve`; each drop is logged with its request id and
reason; afterwards every API still answers correctly."""

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from patientkit.samples.exports import generate_export
from tests.helpers import Server, default_tls

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"
COPIES = 40  # the big download: the demo export's first file, its rows repeated


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """A generated export plus `big`: one download of some MB, and its row count."""
    root = tmp_path_factory.mktemp("stays-up") / "exports"
    generate_export("demo", root, seed=0, workers=1)
    first = sorted((root / "demo").glob("*.csv"))[0]
    header, *rows = first.read_text().splitlines(keepends=True)
    big = root / "big"
    big.mkdir()
    download_id = first.stem
    (big / f"{download_id}.csv").write_text(header + "".join(rows) * COPIES)
    return root, download_id, len(rows) * COPIES


@pytest.fixture(scope="module")
def server(
    exports: tuple[Path, str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `patientkit serve` of `exports` for the module's tests: each sends records of
    a clinic of its own (C9; C7) and reads the lines logged after its mark."""
    folder = tmp_path_factory.mktemp("stays-up-served")
    served = Server(
        folder / "serve.log", "--exports", str(exports[0]), "--db", str(folder / "s.db")
    )
    yield served
    served.stop()


def raw(url: str, receive_buffer: int | None = None) -> socket.socket:
    """A TCP connection to the server of `url`; with `receive_buffer`, a receive buffer of
    that many bytes from the start (set before connecting: the window it offers is small
    from the first packet, and the data come in steadily, not after a 0.2 s stall)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


def hang_up(sock: socket.socket, reset: bool) -> None:
    if reset:  # RST rather than FIN: the harshest way to go
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def drop_download(url: str, path: str, reset: bool) -> None:
    """Read a download slowly for a moment (as `curl --limit-rate` does), then hang up
    while the server is still writing it (the answer is many times what the socket
    buffers hold: 4 MB at most for the server's, a 4 kB receive buffer here)."""
    sock = raw(url, receive_buffer=4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got, until = 0, time.monotonic() + 0.02
    while got < 4096 or time.monotonic() < until:
        chunk = sock.recv(65536)
        assert chunk, "the server closed first"
        got += len(chunk)
        time.sleep(0.005)
    hang_up(sock, reset)


def drop_before_answer(url: str, path: str, body: bytes, send: int, reset: bool) -> None:
    """Send the headers and `send` bytes of `body`, then hang up without reading."""
    sock = raw(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:send])
    time.sleep(0.02)
    hang_up(sock, reset)


def test_many_dropped_downloads_and_answers_leave_every_api_working(server, exports):
    _root, download_id, rows = exports
    mark = server.mark()
    data = f"/api/export/big/{download_id}/data"
    reading = json.dumps(
        {"id": DEVICE, "readings": [{"count": 3, "timestamp": "2021-09-29T16:09:15+01:00"}]}
    ).encode()
    record = json.dumps(
        {
            "test_id": "T-dropped",
            "patient_id": "P1",
            "clinic_id": "C9",
            "test_type": "glucose",
            "result": "5.1",
        }
    ).encode()
    for n in range(30):
        drop_download(server.url, data, reset=n % 2 == 0)
    for n in range(6):
        reset = n % 2 == 0
        drop_before_answer(server.url, "/tests", record, len(record) // 2, reset)  # half a body
        drop_before_answer(server.url, "/api/device-readings/create", reading, 10, reset)
    drop_before_answer(server.url, "/tests", record, len(record), reset=True)  # whole, no read
    time.sleep(0.5)
    assert server.process.poll() is None, server.log.read_text()[-2000:]

    with httpx.Client(verify=default_tls(), base_url=server.url, timeout=30) as http:
        assert http.get("/api/ping").json() == {"status": "ok"}
        assert "big" in http.get("/api/export").json()["data"]["export_ids"]
        with http.stream("GET", data) as answer:
            assert answer.status_code == 200
            text = "".join(answer.iter_text())
        assert len(text.splitlines()) == rows + 1  # the header and every row
        created = http.post("/api/device-readings/create", content=reading)
        assert created.status_code in (200, 201), created.text
        total = http.get(f"/api/device-readings/{DEVICE}/cumulative-count")
        assert (total.status_code, total.json()) == (200, {"cumulative_count": 3})
        again = http.post("/tests", content=record)  # the whole one sent before: landed
        assert again.status_code == 409, again.text
        fresh = http.post("/tests", content=record.replace(b"T-dropped", b"T-fresh"))
        assert (fresh.status_code, fresh.json()["test_id"]) == (200, "T-fresh"), fresh.text
        listed = http.get("/tests", params={"clinic_id": "C9"})
        assert listed.status_code == 200
        assert {r["test_id"] for r in listed.json()} == {"T-dropped", "T-fresh"}

    lines = server.log_lines()[mark:]
    dropped = [line for line in lines if line.get("dropped")]
    downloads = [
        line for line in dropped if line["route"] == "/api/export/{export_id}/{download_id}/data"
    ]
    assert len(downloads) == 30, "every dropped download is logged"
    assert all(line["request_id"] and line["level"] == "warning" for line in dropped)
    assert {line["dropped"] for line in downloads} == {"the client disconnected mid-answer"}
    bodies = [
        line for line in dropped if line["route"] != "/api/export/{export_id}/{download_id}/data"
    ]
    assert len(bodies) == 12
    assert all(line["status"] == 0 for line in bodies)
    text = server.log.read_text()
    assert "Traceback" not in text and '"level": "error"' not in text


def test_dropped_record_listings_leave_the_records_api_working(server):
    """The other streamed answer, `GET /tests?clinic_id=` (records listed as they are
    read): clients that hang up mid-listing are logged, and the API still answers."""
    mark = server.mark()
    lines = "".join(
        json.dumps(
            {
                "test_id": f"T{n}",
                "patient_id": "P1",
                "clinic_id": "C7",
                "test_type": "glucose",
                "result": "5.1 mmol/L " + "x" * 1000,  # a listing of 11 MB: more than
            }  # twice what the socket buffers hold, so a hang-up is always mid-answer
        )
        + "\n"
        for n in range(10_000)
    )
    ndjson = {"content-type": "application/x-ndjson"}
    with httpx.Client(verify=default_tls(), base_url=server.url, timeout=60) as http:
        rows = lines.splitlines(keepends=True)
        for start in range(0, 10_000, 5_000):
            part = "".join(rows[start : start + 5_000])
            created = http.post("/tests/batch", content=part, headers=ndjson)
            assert created.json()["created"] == 5_000, created.text
        for n in range(10):
            drop_download(server.url, "/tests?clinic_id=C7", reset=n % 2 == 0)
        time.sleep(0.5)
        assert server.process.poll() is None, server.log.read_text()[-2000:]
        listed = http.get("/tests", params={"clinic_id": "C7"})
        assert listed.status_code == 200
        assert len(listed.json()) == 10_000
    dropped = [line for line in server.log_lines()[mark:] if line.get("dropped")]
    assert len(dropped) == 10 and {line["route"] for line in dropped} == {"/tests"}
    assert "Traceback" not in server.log.read_text()
