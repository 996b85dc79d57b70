"""Progress on stderr: a live rich bar on a terminal, nothing (but warnings) otherwise."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from patientkit.cli import output

if TYPE_CHECKING:  # rich.progress is imported only when a bar is drawn (on a terminal)
    from rich.progress import Progress, ProgressColumn, TaskID


def _rate() -> ProgressColumn:
    """A column: MB/s of the bytes kept in the task's fields."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed = task.elapsed or 0.0
            nbytes = task.fields.get("bytes", 0)
            rate = nbytes / elapsed / 1e6 if elapsed > 0 else 0.0
            return Text(f"{nbytes / 1e6:,.0f} MB {rate:,.0f} MB/s", style="cyan")

    return Rate()


class Meter:
    """Counts rows, bytes and finished parts, and draws them when stderr is a terminal."""

    def __init__(self, description: str, unit: str = "rows") -> None:
        self.description, self.unit = description, unit
        self.rows = self.bytes = self.parts_done = self.parts = 0
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._drawn = 0.0

    def __enter__(self) -> Meter:
        if output.show_progress():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.fields[expected]} " + self.unit),
                _rate(),
                TextColumn("{task.fields[done]}"),
                TimeElapsedColumn(),
                console=output.err_console(),
                transient=True,
                auto_refresh=False,  # no refresh thread: worker pools fork safely
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=None, bytes=0, expected="?", done=""
            )
        return self

    def start(self, parts: int, rows: int | None) -> None:
        self.parts = parts
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, total=rows, expected=f"{rows:,}" if rows is not None else "?"
            )
        self._refresh()

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
        done = f"{self.parts_done}/{self.parts} done" if self.parts else ""
        self._progress.update(self._task, completed=self.rows, bytes=self.bytes, done=done)
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
