"""What the sandbox costs per action: the same commands in a sandbox and plainly on the host, side by side.

    python benchmarks/sandbox_overhead.py                  # every backend installed here, 30 rounds
    python benchmarks/sandbox_overhead.py --rounds 100 --backend unshare

Each round runs every command once on the host (``bash -c`` in a child process, the fixed commands below, never a
model's) and once in one long-lived sandbox per backend, in alternating order, so a drift of a shared machine
falls on all arms; then starts and closes one fresh sandbox per backend. The table gives medians, the sandbox's
extra milliseconds per action and its ratio to the host. Absolute figures depend on the machine; the difference
is the result.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from rich.table import Table

from genpi.progress import make_console
from genpi.sandbox import Limits, Sandbox, SandboxUnavailable, backends, check_available

COMMANDS = {
    "true": "true",
    "ls | wc": "ls /usr/bin | wc -l",
    "sort 100k": "seq 100000 | sort -rn | head -1",
    "write+read 1 MB": "head -c 1000000 /dev/zero > /tmp/f && wc -c < /tmp/f && rm /tmp/f",
}


def host(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(["bash", "-c", command], stdin=subprocess.DEVNULL, capture_output=True, check=True, cwd="/tmp")
    return time.perf_counter() - start


def in_box(box: Sandbox, command: str) -> float:
    start = time.perf_counter()
    action = box.run(command)
    assert action.exit_code == 0, action
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--backend", action="append", choices=["bwrap", "unshare"], help="default: every one that works here")
    args = ap.parse_args()
    console = make_console()

    names = []
    for b in args.backend or backends():
        try:
            names.append(check_available(b))
        except SandboxUnavailable as e:
            console.print(f"{b}: not usable here ({e})", highlight=False)
    boxes = {b: Sandbox(Limits(), backend=b) for b in names}
    for box in boxes.values():
        box.start()
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(args.rounds):
            arms = ["host", *names] if r % 2 == 0 else [*names, "host"]
            for label, command in COMMANDS.items():
                for arm in arms:
                    seconds = host(command) if arm == "host" else in_box(boxes[arm], command)
                    times.setdefault((arm, label), []).append(seconds)
            for b in names:
                start = time.perf_counter()
                with Sandbox(Limits(), backend=b):
                    pass
                times.setdefault((b, "start + close"), []).append(time.perf_counter() - start)
            if (r + 1) % 10 == 0 or r + 1 == args.rounds:
                console.print(f"round {r + 1}/{args.rounds}", highlight=False)
    finally:
        for box in boxes.values():
            box.close()

    table = Table(title=f"sandbox overhead per action: median ms of {args.rounds} rounds, sandbox vs host")
    table.add_column("command")
    table.add_column("host ms", justify="right")
    for b in names:
        table.add_column(f"{b} ms", justify="right")
        table.add_column(f"{b} extra ms", justify="right")
        table.add_column(f"{b} / host", justify="right")
    for label in COMMANDS:
        base = statistics.median(times[("host", label)]) * 1000
        cells = [label, f"{base:.1f}"]
        for b in names:
            ms = statistics.median(times[(b, label)]) * 1000
            cells += [f"{ms:.1f}", f"{ms - base:+.1f}", f"{ms / base:.2f}x"]
        table.add_row(*cells)
    cells = ["start + close a sandbox", "–"]
    for b in names:
        cells += [f"{statistics.median(times[(b, 'start + close')]) * 1000:.1f}", "", ""]
    table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    main()
