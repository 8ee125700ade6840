"""Behaviour, not format: the loss ablation and a data-scaling curve, judged by teacher fidelity and action agreement.

    genpi run recipes/fidelity.py                 # the bash agent (docs/RESULTS.md gives its time and figures)
    genpi run recipes/fidelity.py --smoke         # the CI size: same steps, smaller numbers
    genpi run recipes/fidelity.py --prompt my_agent.txt --checker my_checks.py:protocol --out runs/fidelity-mine

Synthesizes one training run from the prompt alone (no seed inputs) and held-out inputs (another seed), then trains
on the same records every strategy of the ablation (GenPI, SeqKD, SeqKD+KL, GenPI+KL, on-policy mixed with GenPI,
prompt tuning; `--onpolicy` adds on-policy alone, slow on a CPU), and GenPI on the first 8, 16 and 32 records (`--scaling`
for others), all with `genpi train`'s defaults; one evaluation
scores them all side by side with the constant baselines. The last things printed are one table (token agreement,
KL to the teacher, action agreement, protocol, each with its recovery and 95% interval) and the scaling chart
(fidelity.png). Everything goes under --out; rerunning resumes every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from genpi import EvalConfig, SynthConfig, TrainConfig, evaluate, synthesize, train_resumably

SYNTH = SynthConfig(prompt="examples/bash_agent.txt", num_inputs=40, max_turns=2, max_new_tokens=128, concurrency=16,
                    seed=0)
HELDOUT = SynthConfig(prompt="examples/bash_agent.txt", num_inputs=32, inputs_only=True, concurrency=16, seed=1)
TRAIN = TrainConfig(save_steps=10)  # genpi train's defaults
# name -> TrainConfig changes; on-policy samples replies of an agent turn's length
ABLATION = {"genpi": {"strategy": "genpi"}, "seqkd": {"strategy": "seqkd"}, "seqkd_kl": {"strategy": "seqkd_kl"},
            "genpi_kl": {"strategy": "genpi_kl"},
            "onpolicy+genpi": {"strategy": "onpolicy", "w_sft": 0.7, "w_pg": 0.3, "onpolicy_max_new_tokens": 64},
            "prompt_tuning": {"strategy": "prompt_tuning"}}
ONPOLICY = {"onpolicy": {"strategy": "onpolicy", "onpolicy_max_new_tokens": 64}}
ABLATION_RECORDS = 32
SCALING = (8, 16, 32)  # GenPI on the first N records (40 inputs give about 35 records)
EVAL = EvalConfig(checker="examples/bash_agent.checks.py:protocol", max_new_tokens=128, multiturn_turns=0,
                  reconstruction_inputs=0, latency_inputs=0)
COLUMNS = ("token_agreement", "teacher_kl", "action", "action_name", "protocol")

SMOKE = dict(train_inputs=6, heldout_inputs=3, max_tokens=64, scaling=(3, 6), ablation_records=6, max_steps=2)


def subset(run: Path, out: Path, n: int) -> Path:
    """The first ``n`` records of a synthesis run as a run directory of their own (run.json copied)."""
    if not (out / "records.jsonl").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "run.json", out / "run.json")
        lines = (run / "records.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        tmp = out / "records.jsonl.tmp"
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(out / "records.jsonl")
    return out


def fidelity_table(report: dict):
    """Per system: each behaviour metric with its recovery [95% interval], and protocol, from report.json."""
    from rich.table import Table

    from genpi.eval.report import label

    columns = [c for c in COLUMNS if any(c in s["metrics"] for s in report["systems"].values())]
    table = Table(title=f"fidelity on {report['inputs']['n']} held-out inputs: value, recovery [95% CI]")
    table.add_column("system")
    for c in columns:
        table.add_column(label(c), justify="right")
    for name, system in report["systems"].items():
        cells = []
        for c in columns:
            value = system["metrics"].get(c)
            r = (report.get("recovery") or {}).get(name, {}).get(c)
            cell = "–" if value is None else f"{value:.3f}"
            if r and r["defined"]:
                ci = r.get("ratio_ci")
                cell += f"  {r['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            cells.append(cell)
        table.add_row(name, *cells)
    return table


def plot_scaling(report: dict, names: dict[int, str], path: Path) -> None:
    """Recovery of token agreement and of KL, and action agreement, against the number of training records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(names)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for metric, style in (("token_agreement", "C0-o"), ("teacher_kl", "C1-s"), ("action", "C2-^")):
        ys = [((report["recovery"].get(names[x]) or {}).get(metric) or {}).get("ratio") for x in xs]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], style, label=f"recovery of {metric}")
    constant = (report["recovery"].get("constant") or {}).get("action", {}).get("ratio")
    if constant is not None:
        ax.axhline(constant, color="C2", linestyle=":", label="constant reply, action")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("training records (GenPI, genpi train's defaults)")
    ax.set_ylabel("recovery (1 = the prompted model)")
    ax.set_title(f"data scaling on {report['inputs']['n']} held-out inputs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description="genpi: loss ablation and data scaling, judged by behaviour")
    ap.add_argument("--out", default="runs/fidelity", help="directory for the runs, adapters and report")
    ap.add_argument("--prompt", default=SYNTH.prompt, help="the agent's prompt file")
    ap.add_argument("--checker", default=None, help="checker naming the reply's action (default: the bash example's; "
                    "none for another --prompt)")
    ap.add_argument("--scaling", default=",".join(map(str, SCALING)), help="comma list of record counts for GenPI's "
                    "scaling curve (more than the run holds: raise the run's inputs with --num-inputs)")
    ap.add_argument("--num-inputs", type=int, default=SYNTH.num_inputs, help="inputs synthesized for training")
    ap.add_argument("--ablation", default=",".join(ABLATION), help="comma list of the ablation's systems to train "
                    f"(of {', '.join(ABLATION)})")
    ap.add_argument("--ablation-records", type=int, default=ABLATION_RECORDS, help="records the ablation trains on")
    ap.add_argument("--onpolicy", action="store_true", help="also train on-policy distillation alone")
    ap.add_argument("--smoke", action="store_true", help="the CI size")
    args = ap.parse_args(argv)
    out = Path(args.out)
    checker = args.checker if args.checker is not None else ("" if args.prompt != SYNTH.prompt else EVAL.checker)
    synth, heldout, tcfg = dataclasses.replace(SYNTH, num_inputs=args.num_inputs), HELDOUT, TRAIN
    ecfg = dataclasses.replace(EVAL, prompt=args.prompt, checker=checker)
    scaling = tuple(int(n) for n in args.scaling.split(",") if n.strip())
    ablation_records = args.ablation_records
    chosen = [a.strip() for a in args.ablation.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ABLATION))
    if unknown or "genpi" not in chosen:
        ap.error(f"--ablation {args.ablation}: give genpi and any of {', '.join(ABLATION)}")
    ablation = {**{a: ABLATION[a] for a in chosen}, **(ONPOLICY if args.onpolicy else {})}
    if args.smoke:
        synth = dataclasses.replace(synth, num_inputs=SMOKE["train_inputs"], max_new_tokens=SMOKE["max_tokens"])
        heldout = dataclasses.replace(heldout, num_inputs=SMOKE["heldout_inputs"])
        tcfg = dataclasses.replace(tcfg, max_steps=SMOKE["max_steps"])
        ecfg = dataclasses.replace(ecfg, max_new_tokens=SMOKE["max_tokens"], bootstrap=200)
        scaling, ablation_records = SMOKE["scaling"], SMOKE["ablation_records"]

    # --- synthesize
    synthesize(dataclasses.replace(synth, prompt=args.prompt, out=out / "train"))
    synthesize(dataclasses.replace(heldout, prompt=args.prompt, out=out / "heldout", exclude_run=out / "train"))

    # --- train
    adapters, scaled = {}, {}
    for n in sorted({*scaling, ablation_records}):
        data = subset(out / "train", out / f"train-{n}", n)
        for name, changes in (ablation if n == ablation_records else {"genpi": ABLATION["genpi"]}).items():
            tag = f"{name}-{n}"
            adapters[tag] = train_resumably(dataclasses.replace(tcfg, data=data, out=out / "adapters" / tag, **changes))
        if n in scaling:
            scaled[n] = adapters[f"genpi-{n}"]

    # --- evaluate (one run: every adapter against the same teacher replies and constant baselines)
    first, *rest = adapters.values()
    report_dir = evaluate(dataclasses.replace(ecfg, inputs=out / "heldout", adapter=[first, *rest],
                                              train_run=str(out / "train"), out=out / "report"))
    from genpi.progress import make_console

    report = json.loads((Path(report_dir) / "report.json").read_text(encoding="utf-8"))
    system_of = {str(Path(s["adapter"]).resolve()): name for name, s in report["systems"].items() if s.get("adapter")}
    names = {n: system_of[str(Path(p).resolve())] for n, p in scaled.items()}
    plot_scaling(report, names, Path(report_dir) / "fidelity.png")
    make_console().print(fidelity_table(report))
    return report_dir


if __name__ == "__main__":  # the same as `genpi run recipes/fidelity.py`: one-line errors, Ctrl-C resumes
    import sys

    from genpi.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
