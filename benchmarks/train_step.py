"""Cost of one GenPI training step per supervised token: the joint step against the behaviour-only step.

    python benchmarks/train_step.py --threads 1
    python benchmarks/train_step.py --data runs/bash --batches 4 --rounds 3 --json /tmp/bench/train_step.json

On the same batches, in one run, with the conditions interleaved (each batch runs every condition, in an order
that rotates from round to round, so that drifting machine load hits all of them alike), it times forward plus
backward of:

* ``behaviour``: behaviour rows only (seqkd);
* ``joint``: behaviour and prompt-generation sequences in one forward pass (genpi), packed into shared rows as
  ``genpi train`` packs them;
* ``joint, padded``: the same with one right-padded row per sequence (``--no-packing``);
* ``two-pass``: the same rows as two forward/backward passes, behaviour then prompt generation (the paper's design);
* ``behaviour+kl`` and ``joint+kl``: the same with the KL term (one extra no-grad teacher forward).

It prints medians per condition, time per supervised token, and the ratios. Without ``--data`` it builds
records of realistic lengths from ``--prompt`` (the text is filler: only lengths matter for speed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("behaviour", "joint", "joint, padded", "two-pass", "behaviour+kl", "joint+kl")
WORDS = ("the train ticket refund delay station platform card app booking seat change time journey help please "
         "your order number today tomorrow morning evening passenger service cancel return check status").split()


def filler(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """Records with the lengths synthesis gives on the example prompts: two agent turns, reasons of a paragraph."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        text = filler(rng, 25)
        dialogue = [{"role": "user", "content": text}, {"role": "assistant", "content": filler(rng, 60)},
                    {"role": "user", "content": filler(rng, 30)}, {"role": "assistant", "content": filler(rng, 60)}]
        records.append({"id": f"bench{i}", "index": i, "input": text, "as_is": filler(rng, 60),
                        "to_be": dialogue[1]["content"], "reason": filler(rng, 60), "dialogue": dialogue,
                        "finish": "max_turns", "meta": {}})
    return records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="", help="a synthesis run directory (default: synthetic records)")
    ap.add_argument("--prompt", default=str(ROOT / "examples" / "support_agent.txt"), help="prompt without --data")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=2, help="records per batch")
    ap.add_argument("--batches", type=int, default=2, help="distinct batches")
    ap.add_argument("--rounds", type=int, default=2, help="timed passes over the batches (after one warm-up pass)")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from rich.table import Table
    from genpi.config import TrainConfig
    from genpi.models import load_model, load_tokenizer
    from genpi.progress import make_console
    from genpi.prompt import load_prompt
    from genpi.training.collator import GenPICollator
    from genpi.training.run import load_training_run
    from genpi.training.trainer import GenPIConfig, GenPITrainer, attention_cost
    from genpi.training.views import build_examples

    if args.threads:
        torch.set_num_threads(args.threads)
    console = make_console()
    load_start = os.getloadavg()[0]
    tok = load_tokenizer(args.model)
    need = args.batch_size * args.batches
    if args.data:
        _, prompt, records = load_training_run(args.data)
        source = args.data
    else:
        prompt, records = load_prompt(args.prompt), synthetic_records(need)
        source = f"{Path(args.prompt).name} + {need} synthetic records"
    examples, stats = build_examples(tok, records, prompt, max_length=args.max_length, teacher=True)
    if len(examples) < need:
        raise SystemExit(f"only {len(examples)} usable records, {need} needed: lower --batches or --batch-size")
    batches = [examples[i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.batches)]

    defaults = TrainConfig()
    lora = LoraConfig(r=defaults.lora_r, lora_alpha=defaults.lora_alpha, lora_dropout=defaults.lora_dropout,
                      target_modules=defaults.lora_target, task_type="CAUSAL_LM")
    sft_args = GenPIConfig(output_dir="/tmp/genpi-bench", per_device_train_batch_size=args.batch_size, bf16=False,
                           report_to="none", use_cpu=not torch.cuda.is_available(), w_kl=1.0)
    base = load_model(args.model)
    collate = GenPICollator(tok.pad_token_id, attention_cost=attention_cost(base.config), max_width=args.max_length)
    collate_padded = GenPICollator(tok.pad_token_id, pack=False)
    trainer = GenPITrainer(model=base, args=sft_args, train_dataset=Dataset.from_list(examples),
                           data_collator=collate, processing_class=tok, peft_config=lora)
    model = trainer.model
    model.train()

    def only(batch_examples, keys):
        return [{k: e[k] for k in ("id", "input_ids", "labels", *keys)} for e in batch_examples]

    def pg_rows(batch_examples):  # prompt-generation rows on their own: scored as plain next-token loss
        return [{"id": e["id"], "input_ids": e["pg_input_ids"], "labels": e["pg_labels"]} for e in batch_examples]

    def step(parts):
        """Forward + backward of each (batch, weights) part; returns seconds."""
        start = time.perf_counter()
        for batch, weights in parts:
            trainer.w_sft, trainer.w_pg, trainer.w_kl = weights
            trainer.compute_loss(model, batch).backward()
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    plans = []
    for b in batches:
        beh = collate(only(b, ()))
        plans.append({
            "behaviour": [(beh, (1.0, 0.0, 0.0))],
            "joint": [(collate(only(b, ("pg_input_ids", "pg_labels"))), (0.7, 0.3, 0.0))],
            "joint, padded": [(collate_padded(only(b, ("pg_input_ids", "pg_labels"))), (0.7, 0.3, 0.0))],
            "two-pass": [(beh, (0.7, 0.0, 0.0)), (collate(pg_rows(b)), (0.3, 0.0, 0.0))],
            "behaviour+kl": [(collate(only(b, ("teacher_input_ids", "teacher_labels"))), (1.0, 0.0, 1.0))],
            "joint+kl": [(collate(b), (0.7, 0.3, 1.0))],
            "tokens": {
                "behaviour": int((beh["labels"] != -100).sum()),
                "prompt_generation": sum(sum(lab != -100 for lab in e["pg_labels"]) for e in b),
            },
        })
    times = {c: [] for c in CONDITIONS}  # seconds per supervised token, one value per (round, batch)
    steps = {c: [] for c in CONDITIONS}
    for r in range(args.rounds + 1):
        for i, plan in enumerate(plans):
            order = CONDITIONS[(r + i) % len(CONDITIONS):] + CONDITIONS[:(r + i) % len(CONDITIONS)]
            for cond in order:
                seconds = step(plan[cond])
                if r == 0:
                    continue  # warm-up
                tokens = plan["tokens"]["behaviour"] + (0 if cond.startswith("behaviour") else
                                                        plan["tokens"]["prompt_generation"])
                steps[cond].append(seconds)
                times[cond].append(seconds / tokens)
            console.print(f"round {r}{' (warm-up)' if r == 0 else ''}, batch {i}: done", style="dim")

    med = {c: statistics.median(times[c]) for c in CONDITIONS}
    med_step = {c: statistics.median(steps[c]) for c in CONDITIONS}
    rows = [e for b in batches for e in b]
    beh_tokens = sum(p["tokens"]["behaviour"] for p in plans)
    pg_tokens = sum(p["tokens"]["prompt_generation"] for p in plans)
    table = Table(title=f"training step: {source}, {args.batches} batches x {args.batch_size} records, "
                        f"{args.rounds} rounds (medians)")
    for col in ("condition", "step (s)", "ms / supervised token", "vs behaviour (per token)"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for c in CONDITIONS:
        table.add_row(c, f"{med_step[c]:.2f}", f"{1000 * med[c]:.2f}", f"{med[c] / med['behaviour']:.2f}x")
    console.print(table)
    ratios = {
        "joint / behaviour, per supervised token": med["joint"] / med["behaviour"],
        "two-pass / joint, per step (same sequences)": med_step["two-pass"] / med_step["joint"],
        "padded / packed joint, per step": med_step["joint, padded"] / med_step["joint"],
        "KL overhead: behaviour+kl / behaviour, per step": med_step["behaviour+kl"] / med_step["behaviour"],
        "KL overhead: joint+kl / joint, per step": med_step["joint+kl"] / med_step["joint"],
    }
    for name, value in ratios.items():
        console.print(f"{name}: {value:.2f}x")
    lengths = {
        "behaviour rows (tokens)": statistics.median(len(e["input_ids"]) for e in rows),
        "prompt-generation rows": statistics.median(len(e["pg_input_ids"]) for e in rows),
        "teacher rows": statistics.median(len(e["teacher_input_ids"]) for e in rows),
    }
    console.print("median lengths: " + ", ".join(f"{k} {v:g}" for k, v in lengths.items())
                  + f"; supervised tokens per round: behaviour {beh_tokens}, prompt generation {pg_tokens}")
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
                  f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"source": source, "median_s_per_token": med, "median_step_s": med_step,
                                               "ratios": ratios, "lengths": lengths, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
