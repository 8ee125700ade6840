"""Synthesis throughput of this checkout against an earlier commit, side by side in one run.

    python benchmarks/synth_throughput.py                        # against 747dcf1 (transformers serve), quick start settings
    python benchmarks/synth_throughput.py --baseline HEAD~3 --records 16 --repeats 3

The baseline commit is exported to a temporary directory and installed into a temporary virtual environment that
shares this one's packages (what it lacks, such as the serving extra of transformers, comes from the index); each arm runs ``python -m genpi synth`` of its own code as a child
process with the embedded server it starts itself, on the same seed inputs and settings (the quick start's: bash
example, 10 records: its 8 seed inputs, then proposed ones; 2 agent turns, 64 new tokens per call, 8 requests in flight), into a fresh run directory.
The arms alternate (baseline, current, baseline, current, ...), so a slow drift of a shared machine falls on both;
records/min, trainable records/min (records that kept an agent turn) and tokens/s come from each run's own ``run.json`` (time in synthesis, server start excluded), pooled
per arm. Absolute figures depend on the machine and its load: the ratio is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from genpi.progress import make_console

ROOT = Path(__file__).resolve().parent.parent


def install_baseline(rev: str, where: Path) -> str:
    """A Python that imports genpi from commit ``rev`` (everything else from this environment)."""
    tree = where / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # Dependencies this environment lacks (the baseline's server may need others) come from the package index.
    subprocess.run([python, "-m", "pip", "install", "-q", str(tree)], check=True)
    return python


def run_arm(python: str, out: Path, args, seeds: Path, cwd: Path) -> dict:
    cmd = [python, "-m", "genpi", "synth", "--prompt", str(ROOT / args.prompt), "--out", str(out),
           "--num-inputs", str(args.records), "--seed-inputs", str(seeds), "--max-turns", str(args.max_turns),
           "--concurrency", str(args.concurrency), "--seed", "0"]
    # The same setting under the name each version knows (it was --max-tokens before --max-new-tokens).
    knows_new = "--max-new-tokens" in subprocess.run([python, "-m", "genpi", "synth", "--help"], cwd=cwd,
                                                     capture_output=True, text=True).stdout
    cmd += ["--max-new-tokens" if knows_new else "--max-tokens", str(args.max_tokens)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("OPENAI_BASE_URL", None)
    started = time.monotonic()
    subprocess.run(cmd, check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = json.loads((out / "run.json").read_text())
    run = info["runs"][-1]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    # Counted from the records, the same way for both arms (older versions' run.json has no yield).
    trainable = sum(r["finish"] != "error" and any(m["role"] == "assistant" for m in r["dialogue"]) for r in records)
    return {"records": run["new_records"], "trainable": trainable, "seconds": run["seconds"], "wall": time.monotonic() - started,
            "completion_tokens": run["completion_tokens"], "prompt_tokens": run["prompt_tokens"],
            "cached_prompt_tokens": run.get("cached_prompt_tokens", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="747dcf1", help="commit to compare against")
    ap.add_argument("--prompt", default="examples/bash_agent.txt")
    ap.add_argument("--seeds", default="examples/bash_agent.seeds.txt")
    ap.add_argument("--records", type=int, default=10, help="records per run (seed inputs first, then proposed)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args()

    console = make_console()
    totals: dict[str, list[dict]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        console.print(f"installing {args.baseline} into a temporary environment")
        pythons = {"baseline": install_baseline(args.baseline, tmp / "base"), "current": sys.executable}
        seeds = tmp / "seeds.txt"
        seeds.write_text((ROOT / args.seeds).read_text())
        for rep in range(args.repeats):
            for arm in ("baseline", "current"):
                r = run_arm(pythons[arm], tmp / f"run-{arm}-{rep}", args, seeds, cwd=tmp)
                totals[arm].append(r)
                console.print(f"repeat {rep} {arm:<8}: {r['records']} records ({r['trainable']} trainable) in {r['seconds']:.1f} s "
                              f"({r['wall']:.1f} s with server start), {r['completion_tokens']} tokens out, "
                              f"{r['prompt_tokens']} in ({r['cached_prompt_tokens']} reused)")
    table = Table(title=f"synth throughput: {args.baseline} vs this checkout ({args.prompt}, {args.records} records, "
                        f"{args.max_turns} turns, {args.max_tokens} tokens, concurrency {args.concurrency}, "
                        f"x{args.repeats})")
    for col in ("arm", "records/min", "trainable records/min", "tokens/s out", "prompt tokens computed", "prompt tokens reused"):
        table.add_column(col, justify="right")
    rates = {}
    for arm, runs in totals.items():
        n, sec = sum(r["records"] for r in runs), sum(r["seconds"] for r in runs)
        tok = sum(r["completion_tokens"] for r in runs)
        computed = sum(r["prompt_tokens"] - r["cached_prompt_tokens"] for r in runs)
        reused = sum(r["cached_prompt_tokens"] for r in runs)
        trainable = sum(r["trainable"] for r in runs)
        rates[arm] = (n / sec * 60, trainable / sec * 60, tok / sec)
        table.add_row(arm, f"{rates[arm][0]:.2f}", f"{rates[arm][1]:.2f}", f"{rates[arm][2]:.1f}", str(computed), str(reused))
    ratio = lambda i: f"{rates['current'][i] / rates['baseline'][i]:.2f}x" if rates["baseline"][i] else "-"  # noqa: E731
    table.add_row("current / baseline", ratio(0), ratio(1), ratio(2), "", "")
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": totals}, indent=2) + "\n")


if __name__ == "__main__":
    main()
