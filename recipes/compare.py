"""Every way to drop the prompt, side by side: one synthesized run, every strategy trained on it, one evaluation.

    genpi run recipes/compare.py                  # the bash example: about an hour on 2 CPU cores (see below)
    genpi run recipes/compare.py --smoke          # the CI size: about 6 minutes, same steps, smaller numbers
    genpi run recipes/compare.py --prompt my_agent.txt --checker my_checks.py:protocol --out runs/compare-mine

Synthesizes a training run and held-out inputs on the embedded server (or --base-url), trains every strategy of
`genpi train --help` on the same records (GenPI and its paper's baselines, PromptIntern, on-policy distillation,
and the two soft prompts), and evaluates them all together on the same held-out inputs, with the compression
baseline (no training) and prompt caching. The last thing printed is one table: quality, recovery with its
bootstrap interval, tokens per request, time to first token, training time and break-even, per system. Everything
goes under --out; rerunning resumes every step. docs/RESULTS.md measured 33 minutes when each adapter trained 18
steps (3 epochs of 11 records); the default --min-steps 40 makes it 42, about 2.3x the 22 minutes of training
(estimated, not measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from genpi import EvalConfig, SynthConfig, TrainConfig, evaluate, synthesize, train_resumably
from genpi.config import STRATEGIES

# As the quick start: TrainConfig's defaults (docs/TRAINING.md, Defaults), only the checkpoint interval differs.
SYNTH = SynthConfig(prompt="examples/bash_agent.txt", seed_inputs="examples/bash_agent.seeds.txt", num_inputs=16,
                    max_turns=2, max_new_tokens=128, concurrency=16, seed=0)
HELDOUT = SynthConfig(prompt="examples/bash_agent.txt", seed_inputs="examples/bash_agent.heldout.txt",
                      num_inputs=16, inputs_only=True, concurrency=16, seed=1)
TRAIN = TrainConfig(save_steps=5)
# What differs per strategy (a soft prompt's learning rate is its own default, 1e-2): on-policy replies are sampled
# shorter, to bound the cost of a generate per step.
PER_STRATEGY = {"onpolicy": {"onpolicy_max_new_tokens": 48}}
EVAL = EvalConfig(checker="examples/bash_agent.checks.py:protocol", max_new_tokens=128, multiturn_turns=0,
                  latency_inputs=4, reconstruction_inputs=0, compressed=[0.5])

SMOKE = dict(train_inputs=4, heldout_inputs=2, max_tokens=64, epochs=1)


def one_table(report: dict, adapters: dict[str, Path]):
    """Per system: each quality metric, recovery of the main one [interval], input tokens, time to first token,
    training time and break-even; from report.json and each adapter's genpi.json."""
    from rich.table import Table

    from genpi.eval.report import quality_metrics

    metrics = quality_metrics(report)
    main = next((m for m in ("token_agreement", "protocol") if m in metrics), metrics[0])
    cost = report["cost"]
    latency = cost.get("latency") or {}
    infos = {}
    for path in adapters.values():
        info = json.loads((Path(path) / "genpi.json").read_text(encoding="utf-8"))
        infos[info["strategy"]] = info
    table = Table(title=f"every method, one table ({report['inputs']['n']} held-out inputs; recovery of {main})")
    for column in ("system", *metrics, f"recovery ({main}) [95% CI]", "input tokens", "first token s",
                   "train s", "break-even requests"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, system in report["systems"].items():
        m = system["metrics"]
        r = (report.get("recovery") or {}).get(name, {}).get(main)
        if r is None:
            rec = "–"
        elif not r["defined"]:
            rec = "undefined"
        else:
            ci = r.get("ratio_ci")
            rec = f"{r['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        info = infos.get(system.get("strategy") or "") if system.get("adapter") else None
        be = (cost.get("break_even") or {}).get(name, {}).get("requests")
        ttft = (latency.get(name) or {}).get("prefill_s")
        tokens = ("– (no model)" if "input_tokens" not in m else f"{m['input_tokens']:.0f}"
                  + (f" ({m['virtual_tokens']} virtual)" if m.get("virtual_tokens") else ""))
        table.add_row(name, *(f"{m[k]:.3f}" if m.get(k) is not None else "–" for k in metrics), rec, tokens,
                      f"{ttft:.3f}" if ttft is not None else "–",
                      f"{info['train_seconds']:.0f}" if info else "–", f"{be:,.0f}" if be else "–")
    cached = latency.get("prompted (cached prefix)")
    if cached:  # the prompted model's replies exactly (tests/test_eval_integration.py checks it), served from a cache
        prompted = report["systems"]["prompted"]["metrics"]
        table.add_row("prompted (cached prefix)", *(f"{prompted[k]:.3f}" if prompted.get(k) is not None else "–"
                                                    for k in metrics), "–", f"{prompted['input_tokens']:.0f}",
                      f"{cached['prefill_s']:.3f}", "–", "–")
    return table


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description="genpi: every strategy trained on one run and evaluated in one table")
    ap.add_argument("--out", default="runs/compare", help="directory for the runs, adapters and report")
    ap.add_argument("--prompt", default=SYNTH.prompt, help="the agent's prompt file")
    ap.add_argument("--seeds", default=None, help="real user inputs for training, one per line (default: the bash example's; "
                    "none for another --prompt)")
    ap.add_argument("--heldout-seeds", default=None, help="real held-out inputs, one per line (same default)")
    ap.add_argument("--checker", default=None, help="protocol checker for genpi eval (default: the bash example's; "
                    "none for another --prompt)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list of strategies to train (the first is "
                    "the evaluation's main adapter)")
    ap.add_argument("--smoke", action="store_true", help="the CI size")
    args = ap.parse_args(argv)
    out = Path(args.out)
    mine = args.prompt != SYNTH.prompt
    seeds = args.seeds if args.seeds is not None else ("" if mine else SYNTH.seed_inputs)
    heldout_seeds = args.heldout_seeds if args.heldout_seeds is not None else ("" if mine else HELDOUT.seed_inputs)
    checker = args.checker if args.checker is not None else ("" if mine else EVAL.checker)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    synth = dataclasses.replace(SYNTH, prompt=args.prompt, seed_inputs=seeds)
    heldout = dataclasses.replace(HELDOUT, prompt=args.prompt, seed_inputs=heldout_seeds)
    tcfg = TRAIN
    ecfg = dataclasses.replace(EVAL, prompt=args.prompt, checker=checker)
    if args.smoke:
        synth = dataclasses.replace(synth, num_inputs=SMOKE["train_inputs"], max_new_tokens=SMOKE["max_tokens"])
        heldout = dataclasses.replace(heldout, num_inputs=SMOKE["heldout_inputs"])
        tcfg = dataclasses.replace(tcfg, epochs=SMOKE["epochs"])
        ecfg = dataclasses.replace(ecfg, max_new_tokens=SMOKE["max_tokens"], latency_inputs=1, bootstrap=200)

    synthesize(dataclasses.replace(synth, out=out / "train"))
    synthesize(dataclasses.replace(heldout, out=out / "heldout", exclude_run=out / "train"))

    adapters = {}
    for strategy in strategies:
        cfg = dataclasses.replace(tcfg, data=out / "train", strategy=strategy, out=out / "adapters" / strategy,
                                  **PER_STRATEGY.get(strategy, {}))
        adapters[strategy] = train_resumably(cfg)

    first, *rest = strategies
    report_dir = evaluate(dataclasses.replace(ecfg, inputs=out / "heldout", adapter=[adapters[first]],
                                              baseline=[adapters[s] for s in rest], out=out / "report"))
    from genpi.progress import make_console

    report = json.loads((Path(report_dir) / "report.json").read_text(encoding="utf-8"))
    make_console().print(one_table(report, adapters))
    return report_dir


if __name__ == "__main__":  # the same as `genpi run recipes/compare.py`: one-line errors, Ctrl-C resumes
    import sys

    from genpi.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
