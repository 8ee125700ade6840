"""Progress that reads well in a terminal and in a log file: every stage of genpi reports through here.

In a terminal, a ``rich`` progress display; otherwise (a log file, CI, a pipe) one plain line per task at most
every ``interval`` seconds and when it ends, so that a long run shows it is alive without flooding the log.
"""

from __future__ import annotations

import os
import time

LOG_WIDTH = 160  # columns of tables and lines written to a log file (rich would wrap them at 80)


def make_console():
    """The console every stage prints to: the terminal's width in a terminal, otherwise (a log file, CI, a pipe)
    ``LOG_WIDTH`` columns unless ``COLUMNS`` says otherwise, so that a summary table stays one row per line."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=LOG_WIDTH)
    return console


def progress(console=None, interval: float = 10.0):
    """A context manager with ``add_task``, ``update`` and ``advance``, as ``rich.progress.Progress`` has them."""
    console = console or make_console()
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)
    return LineProgress(console, interval)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LineProgress:
    """Plain lines: ``description done/total rate elapsed``."""

    def __init__(self, console, interval: float = 10.0):
        self.console, self.interval = console, interval
        self.tasks: list[dict] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        for i, t in enumerate(self.tasks):
            if not t["printed_done"]:
                self._print(i)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": now, "last": now, "printed_done": False})
        return len(self.tasks) - 1

    def update(self, task: int, completed: float | None = None, advance: float = 0, **fields) -> None:
        t = self.tasks[task]
        if completed is not None:
            t["completed"] = completed
        t["completed"] += advance
        t["fields"].update(fields)
        done = t["total"] is not None and t["completed"] >= t["total"]
        if (done and not t["printed_done"]) or time.monotonic() - t["last"] >= self.interval:
            self._print(task)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _print(self, task: int) -> None:
        t = self.tasks[task]
        now = time.monotonic()
        t["last"] = now
        done = t["total"] is not None and t["completed"] >= t["total"]
        t["printed_done"] = t["printed_done"] or done
        count = f"{t['completed']:g}/{t['total']:g}" if t["total"] is not None else f"{t['completed']:g}"
        rate = t["fields"].get("rate") or ""
        self.console.print(f"{t['description']} {count} {rate} {duration(now - t['start'])}".replace("  ", " "),
                           markup=False, highlight=False)
