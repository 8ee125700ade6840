"""Progress and tables in a log file: plain lines at an interval, tables unwrapped."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from genpi.progress import LOG_WIDTH, make_console, progress


def test_a_log_file_gets_one_line_per_interval_and_one_when_done():
    out = io.StringIO()
    with progress(Console(file=out, width=120), interval=3600) as bars:
        task = bars.add_task("records", total=3, rate="")
        for _ in range(3):
            bars.advance(task)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("records 3/3")  # the interval never passed: only the end


def test_a_console_that_is_not_a_terminal_does_not_wrap_tables_at_80_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # pytest's captured stdout is not a terminal
    assert not console.is_terminal and console.width == LOG_WIDTH
    table = Table()
    for name in ("metric", "prompted", "unprompted", "genpi:genpi", "genpi:genpi_pg1", "seqkd", "seqkd_kl"):
        table.add_column(name)
    with console.capture() as cap:
        console.print(table)
    assert "genpi:genpi_pg1" in cap.get()  # at 80 columns rich cuts it to "genpi:ge…"
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100  # the user's setting wins
