"""Inputs for prompts nobody here wrote: what the model playing the user proposes, and what the screen keeps.

    python benchmarks/input_quality.py                      # every prompt in tests/prompts/ plus the two examples
    python benchmarks/input_quality.py --inputs 16 --prompts tests/prompts/sql_agent.txt

For each prompt, ``genpi synth --inputs-only`` runs with no seed inputs on the embedded default model: the model
plays the user by role swap (docs/SYNTHESIS.md, step 1) and every proposal is screened. The table gives, per
prompt, the proposals made, the share accepted, the rejections by reason, and the first accepted inputs, so that a
person can judge whether they are real requests for that prompt (the screen only rejects what it can recognise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from genpi.progress import make_console

ROOT = Path(__file__).resolve().parent.parent


def run(prompt: Path, out: Path, inputs: int) -> dict:
    cmd = [sys.executable, "-m", "genpi", "synth", "--prompt", str(prompt), "--out", str(out), "--inputs-only",
           "--num-inputs", str(inputs), "--concurrency", "16", "--seed", "0"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("OPENAI_BASE_URL", None)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = json.loads((out / "run.json").read_text())
    calls = [json.loads(line) for line in (out / "inputs.jsonl").read_text().splitlines() if line.strip()]
    accepted = [a["input"] for c in calls for a in c.get("accepted", [])]
    rejected = dict(info["counts"].get("inputs_rejected", {}))
    rejected.pop("over --num-inputs", None)  # proposals that were fine but not needed: neither kept nor refused
    proposed = len(accepted) + sum(rejected.values())
    return {"prompt": prompt.name, "proposed": proposed, "accepted": len(accepted), "rejected": rejected,
            "share": len(accepted) / proposed if proposed else 0.0, "inputs": accepted,
            "seconds": sum(r["seconds"] for r in info.get("runs", []))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", nargs="*", default=None, help="prompt files (default: tests/prompts/* and the examples)")
    ap.add_argument("--inputs", type=int, default=16, help="inputs to accept per prompt")
    ap.add_argument("--json", default="", help="also write the results, every accepted input included, to this file")
    args = ap.parse_args(argv)
    prompts = [Path(p) for p in args.prompts] if args.prompts else (
        sorted((ROOT / "tests" / "prompts").iterdir()) + [ROOT / "examples" / "bash_agent.txt",
                                                           ROOT / "examples" / "support_agent.txt"])
    console = make_console()  # a log file gets the table unwrapped
    results = []
    with tempfile.TemporaryDirectory(prefix="genpi-inputs-") as tmp:
        for i, prompt in enumerate(prompts):
            console.print(f"{prompt.name}: proposing {args.inputs} inputs", highlight=False)
            results.append(run(prompt, Path(tmp) / str(i), args.inputs))
    table = Table(title=f"inputs proposed by the model playing the user (no seed inputs, {args.inputs} per prompt)")
    for col in ("prompt", "proposed", "accepted", "share", "rejected (reason: count)", "first accepted inputs"):
        table.add_column(col)
    for r in results:
        table.add_row(r["prompt"], str(r["proposed"]), str(r["accepted"]), f"{r['share']:.2f}",
                      ", ".join(f"{k}: {v}" for k, v in sorted(r["rejected"].items())) or "-",
                      " | ".join(x.replace("\n", " ")[:70] for x in r["inputs"][:3]))
    console.print(table)
    total_p, total_a = sum(r["proposed"] for r in results), sum(r["accepted"] for r in results)
    console.print(f"accepted {total_a} of {total_p} proposals ({total_a / max(1, total_p):.2f})", highlight=False)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
