"""What the sandbox costs per action: the same commands in a sandbox and plainly on the host, side by side.

    python benchmarks/sandbox_overhead.py                  # every backend installed here, 30 rounds
    python benchmarks/sandbox_overhead.py --rounds 100 --backend unshare
    python benchmarks/sandbox_overhead.py --against a4cc35e  # and genpi/sandbox.py of that revision, side by side

Each round runs every command once on the host (``bash -c`` in a child process, the fixed commands below, never a
model's) and once in one long-lived sandbox per arm (a backend, of this tree or of ``--against``'s revision), in
alternating order, so a drift of a shared machine falls on all arms; then starts and closes one fresh sandbox per
arm. The table gives medians and, per arm, the extra milliseconds per action over the host. Absolute figures depend
on the machine; the differences are the result.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from genpi.progress import make_console
import genpi.sandbox
from genpi.sandbox import SandboxUnavailable, backends

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


def in_box(box, command: str) -> float:
    start = time.perf_counter()
    action = box.run(command)
    assert action.exit_code == 0, action
    return time.perf_counter() - start


def sandbox_module_at(rev: str, where: Path):
    """genpi/sandbox.py as of git revision ``rev``, imported from a copy under ``where``."""
    repo = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:genpi/sandbox.py"], capture_output=True, text=True,
                            check=True).stdout
    path = where / f"sandbox_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"sandbox_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--backend", action="append", choices=["bwrap", "unshare"], help="default: every one that works here")
    ap.add_argument("--against", metavar="REV", help="also run genpi/sandbox.py of this git revision, side by side")
    args = ap.parse_args()
    console = make_console()

    with tempfile.TemporaryDirectory() as tmp:
        modules = {"": genpi.sandbox}
        if args.against:
            modules[f"@{args.against}"] = sandbox_module_at(args.against, Path(tmp))
        arms = {}  # arm name -> (module, backend)
        for b in args.backend or backends():
            for suffix, module in modules.items():
                try:
                    arms[b + suffix] = (module, module.check_available(b))
                except SandboxUnavailable as e:
                    console.print(f"{b}{suffix}: not usable here ({e})", highlight=False)
        times = run_rounds(arms, args.rounds, console)

    names = list(arms)
    table = Table(title=f"sandbox overhead per action: median ms of {args.rounds} rounds (extra ms over the host)")
    table.add_column("command")
    table.add_column("host ms", justify="right")
    for name in names:
        table.add_column(f"{name} ms", justify="right")
    for label in COMMANDS:
        base = statistics.median(times[("host", label)]) * 1000
        cells = [label, f"{base:.1f}"]
        for name in names:
            ms = statistics.median(times[(name, label)]) * 1000
            cells.append(f"{ms:.1f} ({ms - base:+.1f})")
        table.add_row(*cells)
    table.add_row("start + close a sandbox", "–",
                  *(f"{statistics.median(times[(name, 'start + close')]) * 1000:.1f}" for name in names))
    console.print(table)


def run_rounds(arms: dict, rounds: int, console) -> dict[tuple[str, str], list[float]]:
    boxes = {name: module.Sandbox(module.Limits(), backend=b) for name, (module, b) in arms.items()}
    for box in boxes.values():
        box.start()
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(rounds):
            order = ["host", *boxes] if r % 2 == 0 else [*reversed(boxes), "host"]
            for label, command in COMMANDS.items():
                for arm in order:
                    seconds = host(command) if arm == "host" else in_box(boxes[arm], command)
                    times.setdefault((arm, label), []).append(seconds)
            for name, (module, b) in arms.items():
                start = time.perf_counter()
                with module.Sandbox(module.Limits(), backend=b):
                    pass
                times.setdefault((name, "start + close"), []).append(time.perf_counter() - start)
            if (r + 1) % 10 == 0 or r + 1 == rounds:
                console.print(f"round {r + 1}/{rounds}", highlight=False)
    finally:
        for box in boxes.values():
            box.close()
    return times


if __name__ == "__main__":
    main()
