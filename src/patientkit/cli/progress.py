"""Progress on stderr: a live rich bar on a terminal, nothing (but warnings) otherwise."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from patientkit.cli import output

if TYPE_CHECKING:  # rich.progress is imported only when a bar is drawn (on a terminal)
    from rich.progress import Progress, ProgressColumn, TaskID


WIDE = 110  # columns: from here the line has its bar, exact rows and MB/s too


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def _columns(unit: str, wide: bool, sized: bool = True) -> list[ProgressColumn]:
    """The columns of the progress line, each kept on one line (cut short, never
    wrapped onto the next): description, bar (wide only), percentage, rows (exact when
    wide, in millions otherwise), MB (when `sized`: the job tells its bytes) and the
    rates, parts done, time left. At 80 columns the narrow set fits a line whole."""
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class Counts(ProgressColumn):
        """Rows so far (of the total, when known), MB so far, and the rates."""

        def render(self, task: Task) -> Text:
            elapsed = task.elapsed or 0.0
            nbytes, rows = task.fields.get("bytes", 0), task.fields.get("rows", 0)
            total: int | None = task.fields.get("total_rows")
            mb_s = nbytes / elapsed / 1e6 if elapsed > 0 else 0.0
            rows_s = rows / elapsed if elapsed > 0 else 0.0
            if wide:
                of = f" / {total:,}" if total is not None else ""
                size = f"{nbytes / 1e6:,.1f} MB {mb_s:,.0f} MB/s " if sized else ""
                text = f"{rows:,}{of} {unit} {size}"
            else:
                of = f"/{_millions(total)}" if total is not None else ""
                size = f"{nbytes / 1e6:,.1f} MB " if sized else ""
                text = f"{_millions(rows)}{of} {unit} {size}"
            return Text(text + f"{_millions(int(rows_s))} {unit}/s", style="cyan")

    class Left(ProgressColumn):
        """The word after the time left, when a time left can be known (a total)."""

        def render(self, task: Task) -> Text:
            return Text("left" if task.total is not None else "")

    def line(template: str) -> TextColumn:
        return TextColumn(template, table_column=Column(no_wrap=True))

    one_line = Column(no_wrap=True)
    return [
        line("{task.description}"),
        *([BarColumn(bar_width=None)] if wide else []),
        TaskProgressColumn(table_column=one_line),
        Counts(table_column=one_line),
        line("{task.fields[done]}"),
        TimeRemainingColumn(table_column=one_line),
        Left(table_column=one_line),
    ]


class Meter:
    """Counts rows, bytes and finished parts, and draws them when stderr is a terminal:
    a bar with its percentage when the total (of rows, else of bytes) is known, rows so
    far, MB, rates and time left, on one line at any width (`_columns`). Drawn from the
    calling thread only (no refresh thread: worker pools fork safely), at most ten times
    a second."""

    def __init__(self, description: str, unit: str = "rows", sized: bool = True) -> None:
        """`sized`: the job reports bytes (`advance`), so MB are drawn."""
        self.description, self.unit, self.sized = description, unit, sized
        self.rows = self.bytes = self.parts_done = self.parts = 0
        self.total_rows: int | None = None
        self.total_bytes: int | None = None
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._drawn = 0.0

    def __enter__(self) -> Meter:
        if output.show_progress():
            from rich.progress import Progress

            console = output.err_console()
            self._progress = Progress(
                *_columns(self.unit, wide=console.width >= WIDE, sized=self.sized),
                console=console,
                transient=True,
                auto_refresh=False,  # no refresh thread: worker pools fork safely
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=None, bytes=0, rows=0, total_rows=None, done=""
            )
        return self

    def start(self, parts: int, rows: int | None, nbytes: int | None = None) -> None:
        """The job's size: `parts` (files, downloads), and its rows or bytes if known
        (the bar follows rows when their total is known, else bytes)."""
        self.parts, self.total_rows, self.total_bytes = parts, rows, nbytes
        if self._progress is not None and self._task is not None:
            total = rows if rows is not None else nbytes
            self._progress.update(self._task, total=total, total_rows=rows)
        self._refresh(force=True)

    def advance(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        self._refresh()

    def part_done(self) -> None:
        self.parts_done += 1
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        if self._progress is None or self._task is None:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        done = f"{self.parts_done}/{self.parts} done" if self.parts_done else ""
        by_bytes = self.total_rows is None and self.total_bytes is not None
        self._progress.update(
            self._task,
            completed=self.bytes if by_bytes else self.rows,
            rows=self.rows,
            bytes=self.bytes,
            done=done,
        )
        self._progress.refresh()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
