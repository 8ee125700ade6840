"""Synthesis throughput at concurrency 1 vs 8 against the embedded server, measured side by side in one run.

    python benchmarks/synth_throughput.py                       # 8 records per arm, bash example
    python benchmarks/synth_throughput.py --records 16 --prompt examples/support_agent.txt

One `transformers serve` process serves every arm. The arms run in the order 1, 8, 1, 8 on the same seed inputs
(so the inputs step makes no calls and both arms do the same work), each into a fresh run directory; the ratio
of the pooled rates is the result. Absolute figures depend on the machine and its load: only the ratio is
meant to be compared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from genpi.config import SynthConfig
from genpi.models import resolve_model
from genpi.synth.client import OpenAIChatClient
from genpi.synth.pipeline import synthesize
from genpi.synth.server import LocalServer

SEEDS = {
    "examples/bash_agent.txt": "examples/bash_agent.seeds.txt",
    "examples/support_agent.txt": "examples/support_agent.seeds.txt",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="examples/bash_agent.txt")
    ap.add_argument("--records", type=int, default=8, help="records per arm and repetition")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    model = resolve_model("default")
    seeds = [l.strip() for l in Path(SEEDS[args.prompt]).read_text().splitlines() if l.strip()]
    console = Console()
    totals = {1: [0, 0, 0.0], 8: [0, 0, 0.0]}  # records, completion tokens, seconds
    with tempfile.TemporaryDirectory() as tmp, LocalServer(model, log_path=Path(tmp) / "server.log") as server:
        client = OpenAIChatClient(base_url=server.base_url, timeout=1800)
        seed_file = Path(tmp) / "seeds.txt"
        # Repeated seed lines would be deduplicated: number them so every arm has `records` distinct inputs.
        seed_file.write_text("\n".join(f"{s} (case {i})" for i, s in enumerate((seeds * 8)[: args.records])) + "\n")
        for rep in range(args.repeats):
            for conc in (1, 8):
                config = SynthConfig(prompt=args.prompt, out=f"{tmp}/run-{conc}-{rep}", num_inputs=args.records,
                                     seed_inputs=str(seed_file), max_turns=args.max_turns, max_tokens=args.max_tokens,
                                     concurrency=conc, seed=rep, model=model)
                start = time.monotonic()
                records = synthesize(config, client=client, console=Console(quiet=True))
                seconds = time.monotonic() - start
                info = json.loads(Path(config.out, "run.json").read_text())
                tokens = info["runs"][-1]["completion_tokens"]
                totals[conc][0] += len(records)
                totals[conc][1] += tokens
                totals[conc][2] += seconds
                console.print(f"repeat {rep} concurrency {conc}: {len(records)} records, {tokens} tokens, {seconds:.1f} s")
    table = Table(title=f"synth throughput ({args.prompt}, {args.records} records x {args.repeats} per arm)")
    for col in ("concurrency", "records/min", "tokens/s"):
        table.add_column(col, justify="right")
    rates = {}
    for conc, (n, tok, sec) in totals.items():
        rates[conc] = (n / sec * 60, tok / sec)
        table.add_row(str(conc), f"{rates[conc][0]:.2f}", f"{rates[conc][1]:.2f}")
    table.add_row("ratio 8/1", f"{rates[8][0] / rates[1][0]:.2f}x", f"{rates[8][1] / rates[1][1]:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
