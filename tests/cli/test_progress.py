"""Progress that moves: on a terminal, `export generate` and `export count` redraw rows,
bytes, rate and time left while they run (workers report as they go); nothing is drawn
when stderr is not a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from patientkit.core.parallel import count_each
from tests.helpers import cli_env, run_cli, wait_until_reading

COLOUR = re.compile(r"\x1b\[[0-9;]*m")
MOVE = re.compile(r"\x1b\[[0-9;?]*[A-Za-ln-z]")  # cursor moves, erasing: between frames
ROWS = re.compile(r"([\d,]+) / ([\d,]+) rows")
COUNTED = re.compile(r"([\d,]+) rows +[\d.,]+ MB")
TIME_LEFT = re.compile(r"\d:\d\d:\d\d left")


def frames(screen: bytes) -> list[str]:
    """The progress lines drawn so far, without colours, in order."""
    text = COLOUR.sub("", MOVE.sub("\n", screen.decode(errors="replace").replace("\r", "\n")))
    return [line for line in text.split("\n") if "rows" in line]


def read_for(main: int, seconds: float) -> bytes:
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([main], [], [], 0.1)[0]:
            try:
                got += os.read(main, 65536)
            except OSError:
                break
    return got


def read_until(main: int, seen, timeout: float = 30) -> bytes:
    """Read the terminal until `seen(screen so far)` is true (or `timeout` seconds)."""
    got = b""
    deadline = time.monotonic() + timeout
    while not seen(got) and time.monotonic() < deadline:
        got += read_for(main, 0.1)
    return got


def rows_shown(screen: bytes) -> list[int]:
    """The rows counted so far of each progress frame drawn."""
    return [int(m[1].replace(",", "")) for m in map(ROWS.search, frames(screen)) if m]


def counted(screen: bytes) -> list[int]:
    """The rows counted so far of each `export count` frame drawn (no total known)."""
    return [int(m[1].replace(",", "")) for m in map(COUNTED.search, frames(screen)) if m]


def on_a_terminal(
    *args: str, stdin: int | None = None, columns: int = 200
) -> tuple[subprocess.Popen, int]:
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "patientkit", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=child,
        env={**cli_env(), "COLUMNS": str(columns)},
    )
    os.close(child)
    return process, main


def test_generate_progress_advances_on_a_terminal(tmp_path):
    process, main = on_a_terminal("export", "generate", "small", str(tmp_path))
    try:  # until rows were shown, then until more were (not fixed times: the machine varies)
        first = read_until(main, lambda screen: max(rows_shown(screen), default=0) > 0)
        early = max(rows_shown(first), default=0)

        def moved(screen: bytes) -> bool:
            last = frames(screen)[-1] if frames(screen) else ""
            done = all(part in last for part in ("%", "MB/s", "rows/s", "left"))
            return done and max(rows_shown(screen), default=0) > early

        second = first + read_until(main, lambda screen: moved(first + screen))
    finally:
        process.send_signal(signal.SIGINT)  # enough seen: stop it (it cleans up)
        process.communicate(timeout=30)
        os.close(main)
    seen = [ROWS.search(line) for line in frames(second)]
    counts = [int(m[1].replace(",", "")) for m in seen if m]
    assert counts, frames(second)
    assert {m[2] for m in seen if m} == {"7,805,757"}  # the plan's rows are the bar's total
    early = [int(m[1].replace(",", "")) for m in map(ROWS.search, frames(first)) if m]
    assert max(counts) > max(early, default=0) > 0  # it moved between the two reads
    assert counts == sorted(counts)
    last = frames(second)[-1]
    assert re.search(r"\d+%", last) and "MB/s" in last and "rows/s" in last and "left" in last
    assert not list(tmp_path.glob("small/.*.tmp"))  # Ctrl-C removed its temporary files


NARROW = re.compile(
    r" +\d+% [\d.]+M/7\.81M rows [\d.,]+ MB [\d.]+M rows/s +(\d+:\d\d:\d\d +|-:--:-- +)?left"
)


def with_time_left(screen: bytes) -> list[str]:
    """The lines drawn with a time left (h:mm:ss)."""
    return [line for line in frames(screen) if "%" in line and TIME_LEFT.search(line)]


def test_progress_is_one_whole_line_on_a_narrow_terminal(tmp_path):
    """At 80 columns the line keeps its percentage, rows (in millions), MB, rate and time
    left on one line: nothing wraps onto a second line, nothing is cut short."""
    process, main = on_a_terminal("export", "generate", "small", str(tmp_path), columns=80)
    try:  # until several lines with a time left were drawn (not a fixed time)
        screen = read_until(main, lambda screen: len(with_time_left(screen)) >= 5)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        os.close(main)
    drawn = [line for line in frames(screen) if "%" in line]
    assert drawn, frames(screen)
    for line in drawn:
        assert len(line.rstrip()) <= 80 and "…" not in line, line
        assert NARROW.fullmatch(line.rstrip().removeprefix("generating small")), line
    assert with_time_left(screen)  # a time left


def test_the_narrow_line_fits_to_the_end_of_the_job():
    """What the narrow terminal above is not watched long enough to draw: the line near
    the end of `export generate small` (three-digit MB, 100%, a faster rate), at 80
    columns, drawn as the Meter draws it, fits one line and the same pattern."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from patientkit.cli.progress import _columns

    total = 7_805_757
    clock = [0.0]  # the seconds rich's Progress sees
    for seconds, rows in [(9.5, 7_805_000), (0.5, 7_805_757), (3.0, 2_400_000)]:
        clock[0] = 0.0
        console = Console(file=io.StringIO(), width=80)
        progress = Progress(
            *_columns("rows", wide=False, sized=True), console=console, get_time=lambda: clock[0]
        )
        task = progress.add_task(
            "generating small", total=total, rows=0, bytes=0, total_rows=total, done=""
        )
        for fraction in (0.1, 1.0):  # two samples: a rate and a time left
            clock[0] = seconds * fraction
            done = int(rows * fraction)
            progress.update(task, completed=done, rows=done, bytes=done * 44)
        console.print(progress.make_tasks_table(progress.tasks))
        line = console.file.getvalue().rstrip("\n")
        assert len(line.rstrip()) <= 80 and "…" not in line and "\n" not in line, line
        assert NARROW.fullmatch(line.rstrip().removeprefix("generating small")), line
        assert re.search(r" [\d]{3}\.\d MB ", line), line


def test_count_progress_moves_while_stdin_is_read(tmp_path):
    """Rows go up on the screen while the input is still coming."""
    row = "P0001,2025-01-01T00:00:00Z,bp_sys,120\n"
    block = row * ((3 << 20) // len(row))  # 3 MiB: more than one read's worth
    reader, writer = os.pipe()
    process, main = on_a_terminal("export", "count", "-", stdin=reader)
    os.close(reader)
    try:  # drawn at most every 0.1 s: a block that comes 0.2 s after the last is drawn
        os.write(writer, b"patient_id,event_time,event_type,value\n")
        os.write(writer, block.encode())
        wait_until_reading(process.pid)  # all of it read: it waits for more
        time.sleep(0.2)
        os.write(writer, block.encode())  # its first read draws what the first block made
        first = read_until(main, lambda screen: max(counted(screen), default=0) > 0)
        wait_until_reading(process.pid)
        time.sleep(0.2)
        os.write(writer, block.encode())  # the input still comes: it is drawn as it is read
        most = max(counted(first), default=0)
        second = read_until(main, lambda screen: max(counted(screen), default=0) > most)
        os.close(writer)
        out, _ = process.communicate(timeout=30)
    finally:
        os.close(main)
    before, after = counted(first), counted(second)
    assert before and after, (frames(first), frames(second))
    assert max(after) > max(before) > 0
    assert process.returncode == 0
    assert b'"bp_sys": ' + str(3 * block.count("\n")).encode() in out


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(tmp_path):
    generated = run_cli("export", "generate", "demo", str(tmp_path))
    assert (generated.code, generated.err) == (0, "")
    counted = run_cli("export", "count", str(tmp_path / "demo"))
    assert counted.code == 0
    assert re.fullmatch(
        r"counted 13,698 rows, [\d.]+ MB in [\d.]+s \([\d.]+M rows/s\)\n", counted.err
    ), counted.err


def test_workers_report_rows_and_bytes_as_they_go(tmp_path):
    """The pool's channel carries (rows, bytes) while a piece is counted, not only at its
    end; what they report adds up to what was counted."""
    path = Path(tmp_path / "big.csv")
    row = "P1,2025-01-01T00:00:00Z,hr,60\n"
    rows = (12 << 20) // len(row)
    path.write_text("patient_id,event_time,event_type,value\n" + row * rows)
    heard: list[tuple[int, int]] = []
    each = count_each(
        [str(path)], workers=2, on_progress=lambda r, b: heard.append((r, b)), piece_size=6 << 20
    )
    assert each[str(path)].rows == rows
    assert sum(r for r, _ in heard) == rows
    assert len(heard) >= 4  # two pieces of 6 MiB, each told every 2 MiB
    header = len("patient_id,event_time,event_type,value\n")
    assert sum(b for _, b in heard) == path.stat().st_size - header


def test_a_job_that_tells_no_bytes_draws_no_megabytes():
    """`readings replay` and `records submit` count readings and records, not bytes: their
    line has no `0.0 MB` that never moves, at any width."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from patientkit.cli.progress import _columns

    for wide, sized in [(False, False), (True, False), (False, True), (True, True)]:
        console = Console(file=io.StringIO(), width=200 if wide else 80)
        progress = Progress(*_columns("records", wide=wide, sized=sized), console=console)
        progress.add_task("submitting", rows=123_456, bytes=0, total_rows=None, done="")
        console.print(progress.make_tasks_table(progress.tasks))
        text = console.file.getvalue()
        assert ("123,456 records" if wide else "0.12M records") in text, text
        assert ("MB" in text) == sized, text
