"""Inference cost of the bash agent: the prompted base model vs an internalized adapter, same inputs, one run.

    python benchmarks/inference_cost.py --adapter adapters/bash
    python benchmarks/inference_cost.py --requests 8 --max-new-tokens 32      # without --adapter: see below

Each input is sent as a lone request (batch of 1) to both systems in alternating order (prompted first, then the
adapter first, ...), with greedy decoding of exactly ``--max-new-tokens`` tokens (the end-of-turn token ignored),
so both systems do the same decoding work and the ratios isolate what the prompt's tokens cost. Reported: input
tokens per request, time to first token (prefill), end-to-end latency, decode time per token, and the analytic
FLOPs (2 * params * tokens); medians over the requests, ratios prompted / adapter.

Without ``--adapter`` a fresh LoRA adapter in the shape ``genpi train`` makes by default (rank, alpha and target
modules of ``TrainConfig``) is attached: latency does not depend on the adapter's weight values, only on its
shape, and fixed-length decoding removes the effect of what it answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fresh_adapter(out: Path, prompt_hash: str) -> Path:
    """An untrained LoRA adapter with ``genpi train``'s default shape, saved with a genpi.json."""
    from peft import LoraConfig, get_peft_model

    from genpi.adapter import AdapterInfo
    from genpi.config import TrainConfig
    from genpi.models import load_model, quiet_peft

    c = TrainConfig()
    with quiet_peft():
        model = get_peft_model(load_model("default"), LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha,
                                                                 target_modules=c.lora_target, task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    AdapterInfo(strategy="untrained", base_model="default", prompt_hash=prompt_hash).write(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default=str(ROOT / "examples" / "bash_agent.txt"), help="prompt file")
    parser.add_argument("--inputs", default=str(ROOT / "examples" / "bash_agent.seeds.txt"),
                        help="file of inputs, one per line (or JSONL with an input field)")
    parser.add_argument("--adapter", default="", help="adapter directory from `genpi train` (default: a fresh one)")
    parser.add_argument("--model", default="", help="base model (default: the adapter's, else the embedded default)")
    parser.add_argument("--requests", type=int, default=8, help="inputs timed, each on both systems")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens decoded per request, exactly")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch
    from rich.table import Table

    from genpi.eval.cost import flops_per_request, measure_latency, ratio
    from genpi.eval.generation import Generator
    from genpi.eval.heldout import load_heldout
    from genpi.eval.systems import build_systems
    from genpi.progress import make_console
    from genpi.prompt import load_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    console = make_console()
    prompt = load_prompt(args.prompt)
    inputs = load_heldout(args.inputs, limit=args.requests).items
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or str(fresh_adapter(Path(tmp) / "fresh", prompt.hash))
        systems, base_model = build_systems(prompt, [adapter], [], args.model)
        prompted, internalized = systems[0], systems[2]
        gen = Generator(base_model, systems)
        conversations = [[{"role": "user", "content": item.input}] for item in inputs]
        load_before = os.getloadavg()
        latency = measure_latency(gen, prompt, prompted, internalized, conversations, args.max_new_tokens,
                                  fixed_length=True)
        load_after = os.getloadavg()
        adapter_params = gen.adapter_params(internalized)

    a, b = latency[prompted.name], latency[internalized.name]
    flops = {prompted.name: flops_per_request(gen.n_params, a["input_tokens"], a["output_tokens"]),
             internalized.name: flops_per_request(gen.n_params + adapter_params, b["input_tokens"], b["output_tokens"])}
    rows = [
        ("input tokens per request", "input_tokens", "{:.0f}"),
        ("time to first token (s)", "prefill_s", "{:.3f}"),
        ("end-to-end (s)", "e2e_s", "{:.3f}"),
        ("decode per token (s)", "decode_per_token_s", "{:.4f}"),
    ]
    table = Table(title=f"inference cost: {Path(args.prompt).name}, {len(conversations)} requests, "
                        f"{args.max_new_tokens} tokens decoded each (medians)")
    for col in ("", prompted.name, internalized.name, "prompted / adapter"):
        table.add_column(col, justify="right" if col else "left")
    results = {"command": shlex.join(["python", "benchmarks/inference_cost.py"] + (argv if argv is not None else sys.argv[1:])),
               "model": base_model, "params": gen.n_params, "adapter": args.adapter or "fresh (untrained) LoRA",
               "adapter_params": adapter_params, "requests": len(conversations), "max_new_tokens": args.max_new_tokens,
               "torch_threads": torch.get_num_threads(), "load_average": [load_before[0], load_after[0]],
               "systems": {prompted.name: a, internalized.name: b}, "ratios": {}}
    for label, key, fmt in rows:
        r = ratio(a[key], b[key])
        results["ratios"][key] = r
        table.add_row(label, fmt.format(a[key]), fmt.format(b[key]), f"{r:.2f}x")
    r = ratio(flops[prompted.name], flops[internalized.name])
    results["ratios"]["flops"] = r
    results["flops_per_request"] = flops
    table.add_row("GFLOPs per request (2·params·tokens)", f"{flops[prompted.name] / 1e9:.1f}",
                  f"{flops[internalized.name] / 1e9:.1f}", f"{r:.2f}x")
    console.print(table)
    console.print(f"model {base_model} ({gen.n_params / 1e6:.1f}M parameters, adapter {adapter_params / 1e6:.2f}M, "
                  f"not merged); adapter: {results['adapter']}; torch threads {results['torch_threads']}; "
                  f"1-min load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs",
                  highlight=False)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
