"""What synthesis yields per prompt: inputs passing the prompted-reply screen, trainable records, how dialogues end.

    python benchmarks/synth_yield.py --json docs/results/synth_yield.json     # the six prompts of docs/RESULTS.md
    python benchmarks/synth_yield.py --only bash_agent --inputs 8             # one of them, smaller

Each prompt runs ``genpi synth`` on the embedded default model with its protocol checker (``--checker``; not with
``--no-checker``) and no seed inputs (the quick start's row keeps its seeds), at the settings below. The table gives, per prompt, the share of
screened proposals that passed the reply screen, trainable records / requested, the finishes (end / max_turns /
repeat / off_role / truncated / empty / error), agent turns kept / generated, regenerated turns and seconds per trainable record, as
run.json counts them (``counts.yield``). The accepted inputs are kept in the JSON for hand labelling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from genpi.progress import make_console
from genpi.synth.pipeline import FINISHES

ROOT = Path(__file__).resolve().parent.parent
# name: (prompt, checker, seed inputs)
PROMPTS = {
    "quickstart": ("examples/bash_agent.txt", "examples/bash_agent.checks.py:protocol", "examples/bash_agent.seeds.txt"),
    "bash_agent": ("examples/bash_agent.txt", "examples/bash_agent.checks.py:protocol", ""),
    "support_agent": ("examples/support_agent.txt", "examples/support_agent.schema.json", ""),
    "json_tools": ("examples/unseen/json_tools.txt", "examples/unseen/json_tools.checks.py:protocol", ""),
    "sql_agent": ("examples/unseen/sql_agent.txt", "examples/unseen/sql_agent.checks.py:protocol", ""),
    "support_persona": ("examples/unseen/support_persona.txt", "examples/unseen/support_persona.checks.py:protocol", ""),
}


def run(name: str, out: Path, args) -> dict:
    prompt, checker, seeds = PROMPTS[name]
    cmd = [sys.executable, "-m", "genpi", "synth", "--prompt", prompt, "--out", str(out),
           *([] if args.no_checker else ["--checker", checker]), "--num-inputs", str(args.inputs), "--max-turns", str(args.max_turns), "--max-new-tokens",
           str(args.max_new_tokens), "--concurrency", "16", "--seed", "0", "--input-sampler", args.sampler]
    if seeds:
        cmd += ["--seed-inputs", seeds]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("OPENAI_BASE_URL", None)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = json.loads((out / "run.json").read_text())
    path = out / "records.jsonl"  # absent when no input passed the screens
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    calls = [json.loads(line) for line in (out / "inputs.jsonl").read_text().splitlines() if line.strip()]
    n = info["counts"]
    return {"prompt": name, "counts": n, "seconds": sum(r["seconds"] for r in info["runs"]),
            "inputs": [a["input"] for c in calls for a in c.get("accepted", [])],
            "finishes": [r["finish"] for r in records]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(PROMPTS), help="prompts to run (default: all six)")
    ap.add_argument("--inputs", type=int, default=16, help="records requested per prompt")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sampler", default="roleswap", choices=["roleswap", "magpie", "both"])
    ap.add_argument("--no-checker", action="store_true",
                    help="as the README's defaults: the reply screen asks only for a whole reply, not a passing one")
    ap.add_argument("--json", default="", help="also write the results, accepted inputs included, to this file")
    ap.add_argument("--work", default="", help="keep the run directories here (default: a temporary directory); "
                                               "rerunning with the same --work resumes them")
    args = ap.parse_args(argv)
    console = make_console()
    results = []
    with (contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="genpi-yield-")) as tmp:
        for name in args.only or list(PROMPTS):
            console.print(f"{name}: synthesizing {args.inputs} records", highlight=False)
            results.append(run(name, Path(tmp) / name, args))
            if args.json:  # written after each prompt: a long run that is stopped keeps what it measured
                Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2,
                                                      ensure_ascii=False) + "\n")
    table = Table(title=f"synthesis yield ({args.inputs} records requested, --max-turns {args.max_turns}, "
                        f"--max-new-tokens {args.max_new_tokens}, --input-sampler {args.sampler}"
                        f"{', no --checker' if args.no_checker else ''})")
    for col in ("prompt", "reply screen passed", "trainable / requested", " / ".join(FINISHES),
                "agent turns kept / generated", "regenerated", "s per trainable"):
        table.add_column(col)
    for r in results:
        n, y = r["counts"], r["counts"]["yield"]
        screened = y["inputs_screened_by_reply"]
        f = n["finish"]
        table.add_row(r["prompt"], f"{y['inputs_passing_reply_screen']} / {screened}"
                      + (f" ({y['inputs_passing_reply_screen'] / screened:.0%})" if screened else ""),
                      f"{n['trainable']} / {args.inputs} ({y['trainable_share']:.0%})",
                      " / ".join(str(f.get(k, 0)) for k in FINISHES),
                      f"{n['agent_turns']} / {y['agent_turns_generated']}", str(n["regenerated_agent_turns"]),
                      f"{y['seconds_per_trainable_record']}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
