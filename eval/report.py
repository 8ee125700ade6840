"""The evaluation report: ``report.json``, ``report.png`` and the tables printed in the terminal.

``report.json``::

    {"systems":  {name: {"kind", "adapter", "strategy", "student_context", "metrics": {metric: value},
                         "failures": {"protocol" | "multiturn_protocol": {reason: count}}}},
     "recovery": {system: {metric: {"ratio", "defined", "reason", "gap", "gap_ci", "ratio_ci", "n"}}},
     "cost":     {"params", "input_token_ratio", "latency": {...}, "flops_per_request", "break_even": {...}, ...},
     "commands": [...], "versions": {...}, ...}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from genpi.eval.cost import CACHED, merged_name
from genpi.eval.fidelity import FORCED, LOWER_IS_BETTER

COST_METRICS = ("input_tokens", "output_tokens", "flops_per_request", "virtual_tokens")


BEHAVIOUR = (*FORCED, "action", "action_name", "execution_agreement")


def quality_metrics(report: dict) -> list[str]:
    """The quality metrics present in the report: behaviour (teacher-forced, then actions), single-turn text and
    format, multi-turn, reconstruction, then tasks; within the text ones, ROUGE-L, exact match, then protocol."""
    present = []
    for system in report["systems"].values():
        for name in system["metrics"]:
            if name not in present and name not in COST_METRICS:
                present.append(name)

    def key(name: str):
        if name in BEHAVIOUR:
            return 0, BEHAVIOUR.index(name)
        group = 4 if name == "task_success" else 3 if name == "prompt_reconstruction" else 2 if name.startswith("multiturn_") else 1
        return group, {"rouge_l": 0, "exact_match": 1}.get(name.removeprefix("multiturn_"), 2)

    return sorted(present, key=key)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def label(metric: str) -> str:
    """A metric's row label: lower-is-better metrics say so."""
    return f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def tables(report: dict) -> list:
    """Rich tables, one column per system (systems are few, metrics many): quality, recovery, and cost."""
    from rich.table import Table

    names = list(report["systems"])
    metrics = quality_metrics(report)
    quality = Table(title=f"genpi eval: {report['inputs']['n']} held-out inputs ({report['inputs']['source']})")
    quality.add_column("metric")
    for name in names:
        quality.add_column(name, justify="right")
    for m in metrics:
        quality.add_row(label(m), *(_fmt(report["systems"][n]["metrics"].get(m)) for n in names))

    recovery = Table(title="recovery = (S - S_unprompted) / (S_prompted - S_unprompted) [95% bootstrap interval]")
    recovery.add_column("metric")
    trained = list(report["recovery"])
    for name in trained:
        recovery.add_column(name, justify="right")
    for m in metrics:
        cells = []
        for name in trained:
            r = report["recovery"][name].get(m)
            if r is None:
                cells.append("–")
            elif not r["defined"]:
                cells.append("undefined")
            else:
                ci = r.get("ratio_ci")
                cells.append(f"{r['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        if any(c != "–" for c in cells):
            recovery.add_row(label(m), *cells)

    cost = report["cost"]
    latency = cost.get("latency") or {}
    costs = Table(title=f"cost per request ({cost['params'] / 1e6:.0f}M parameters, prompt {cost['prompt_tokens']} tokens)")
    costs.add_column("")
    names = [n for n in names if report["systems"][n]["kind"] != "constant"]  # no model runs: no cost
    for name in names:
        costs.add_column(name, justify="right")
    per_system = {n: report["systems"][n]["metrics"] for n in names}
    flops = {n: m.get("flops_per_request") for n, m in per_system.items()}
    break_even = cost.get("break_even") or {}
    costs.add_row("input tokens", *(_fmt(per_system[n].get("input_tokens"), 1) for n in names))
    if any(per_system[n].get("virtual_tokens") for n in names):
        costs.add_row("of which a soft prompt's", *(_fmt(per_system[n].get("virtual_tokens") or None) for n in names))
    costs.add_row("output tokens", *(_fmt(per_system[n].get("output_tokens"), 1) for n in names))
    costs.add_row("GFLOPs (2·params·tokens)", *(_fmt(flops[n] / 1e9 if flops[n] else None, 2) for n in names))
    if any(latency.get(n) for n in names):  # measured only with --latency-inputs
        costs.add_row("time to first token s (median)", *(_fmt((latency.get(n) or {}).get("prefill_s")) for n in names))
        costs.add_row("end-to-end s (median)", *(_fmt((latency.get(n) or {}).get("e2e_s")) for n in names))
    costs.add_row("break-even requests", *(
        _fmt(round(break_even[n]["requests"]) if (break_even.get(n) or {}).get("requests") else None) for n in names))
    out = [quality, recovery, costs] if trained else [quality, costs]
    if latency.get(CACHED):
        merged = merged_name(cost["compared"])
        soft = [n for n in names if report["systems"][n]["metrics"].get("virtual_tokens") and n != cost["compared"]]
        arms = ["prompted", CACHED, cost["compared"]] + ([merged] if latency.get(merged) else []) + [
            n for n in soft if latency.get(n)]
        kv = dict(cost.get("kv") or {})
        kv[merged] = kv.get(cost["compared"])  # the same tokens in the same cache
        caching = Table(title=f"prompt caching vs internalization ({latency['pairs']} lone requests per arm, "
                              f"medians; the cached prefix is {latency['prefix_tokens']} tokens)")
        caching.add_column("")
        for arm in arms:
            caching.add_column(arm, justify="right")
        caching.add_row("time to first token s", *(_fmt(latency[a]["prefill_s"]) for a in arms))
        caching.add_row("decode s per token", *(_fmt(latency[a]["decode_per_token_s"], 4) for a in arms))
        caching.add_row("end-to-end s", *(_fmt(latency[a]["e2e_s"]) for a in arms))
        caching.add_row("KV MB held per concurrent request", *(
            _fmt((kv.get(a) or {}).get("per_request_mb"), 2) for a in arms))
        caching.add_row("KV MB shared by all requests", *(_fmt((kv.get(a) or {}).get("shared_mb"), 2) for a in arms))
        caching.add_row("tokens attended per decoded token", *(
            _fmt((kv.get(a) or {}).get("attended_tokens"), 1) for a in arms))
        out.append(caching)
    tasks = report.get("tasks")
    if tasks:
        by = Table(title=f"task success by category ({tasks['n']} tasks from {tasks['source']}, at most {tasks['max_turns']} "
                         f"agent turns each, sandbox: {tasks['backend']})")
        by.add_column("category")
        by.add_column("tasks", justify="right")
        for name in names:
            by.add_column(name, justify="right")
        for category, row in tasks["by_category"].items():
            by.add_row(category, str(row["n"]), *(_fmt(row.get(n)) for n in names))
        cis = tasks.get("success_ci") or {}
        by.add_row("all [95% bootstrap interval]", str(tasks["n"]), *(
            _fmt(report["systems"][n]["metrics"].get("task_success"), 2)
            + (f" [{cis[n][0]:.2f}, {cis[n][1]:.2f}]" if cis.get(n) else "") for n in names))
        out.insert(1, by)
    return out


def behaviour_notes(report: dict) -> list[str]:
    """What the degenerate baselines and reference rows say about the metrics, in words."""
    out, ref = [], report.get("reference_rows") or {}
    systems = report["systems"]
    for name in ref.get("format_only") or []:
        share = systems[name]["metrics"].get("protocol")
        out.append(f"this checker tests format only: the {name} system (one reply to every input, no model) passes it on "
                   f"{share:.0%} of the inputs; judge by teacher fidelity and action agreement")
    for name, system in systems.items():
        if system.get("too_short"):
            out.append(f"{name}: genpi train warned that its run was too short ({system['too_short']})")
    for name, rec in (report.get("recovery") or {}).items():
        if systems[name]["kind"] == "constant":
            continue
        flat = [m for m in ("token_agreement", "teacher_kl") if m in rec and _indistinguishable(rec[m])]
        if flat:
            out.append(f"{name} is indistinguishable from the unprompted model on {' and '.join(flat)} (recovery "
                       "interval contains 0): it has not internalized the prompt's behaviour")
    t, p = ref.get("training_targets_protocol"), ref.get("prompted_uncut_protocol")
    if t:
        out.append(f"reference: the checker passes {t['pass']} of {t['n']} training targets (agent turns trained on)")
    if p and not p["n"]:
        out.append(f"reference: none of the prompted model's {p['cut_off']} replies ended within the token limit "
                   "(raise --max-new-tokens): format scores compare cut-off replies")
    elif p:
        out.append(f"reference: the prompted model passes {p['pass']} of its {p['n']} replies not cut off at the token "
                   f"limit ({p['cut_off']} cut off); a system above the prompted one on format beats a teacher it never "
                   "saw fail")
    near = ref.get("near_duplicates")
    if near and ref.get("training_runs"):
        what = "left out" if near["excluded"] else "scored (--exclude-near-duplicates leaves them out)"
        out.append(f"held out: {near['n']} of {near['of']} inputs are near duplicates of training inputs "
                   f"({near['measure']} >= {near['threshold']:g}), {what}")
    return out


def _indistinguishable(r: dict) -> bool:
    """Recovery that cannot be told from 0: its interval contains 0 (an undefined ratio says nothing either way)."""
    ci = r.get("ratio_ci")
    return bool(r.get("defined") and ci and ci[0] <= 0 <= ci[1])


def notes(report: dict) -> list[str]:
    """One-line facts printed under the tables: behaviour caveats, ratios, undefined recoveries, break-even caveats."""
    cost, out = report["cost"], behaviour_notes(report)
    lat = cost.get("latency") or {}
    if cost.get("input_token_ratio"):
        out.append(f"input tokens per request: prompted / {cost['compared']} = {cost['input_token_ratio']:.2f}x")
    if lat.get("prefill_ratio"):
        out.append(f"latency (medians of {lat['pairs']} lone requests per system, {lat.get('order', 'alternating')} order, "
                   f"prompted / {cost['compared']}): "
                   f"prefill (time to first token) {lat['prefill_ratio']:.2f}x, end-to-end {lat['e2e_ratio']:.2f}x, "
                   f"per decoded token {lat['decode_per_token_ratio']:.2f}x")
    if lat.get("cached_prefill_ratio"):
        out.append(f"with the prompt's KV cached (computed once, reused), prompted / {cost['compared']}: time to first "
                   f"token {lat['cached_prefill_ratio']:.2f}x, per decoded token {lat['cached_decode_per_token_ratio']:.2f}x; "
                   "the cached prompt is still attended at every decoded token")
    for name, system in report["systems"].items():
        c = system.get("compression")
        if c:
            out.append(f"{name}: the prompt's messages pruned from {c['tokens']} to {c['kept']} tokens "
                       f"(achieved rate {c['achieved_rate']:.2f}, target {c['target_rate']:g}) by {c['method']}")
    for name, be in (cost.get("break_even") or {}).items():
        if be.get("requests") is None:
            out.append(f"break-even for {name}: unknown ({be['note']})")
    return out


def plot(report: dict, path: Path) -> None:
    """Two panels: quality metrics per system (grouped bars) and input tokens per request per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["systems"])
    metrics = [m for m in quality_metrics(report) if m not in LOWER_IS_BETTER]
    kl = {n: report["systems"][n]["metrics"].get("teacher_kl") for n in names}
    kl = {n: v for n, v in kl.items() if v is not None}
    fig, axes = plt.subplots(1, 3 if kl else 2, figsize=(15 if kl else 12, 4.5),
                             gridspec_kw={"width_ratios": [3, 1, 1] if kl else [3, 1]})
    ax_q, ax_c = axes[0], axes[-1]
    if kl:
        ax_k = axes[1]
        ax_k.bar(range(len(kl)), list(kl.values()), color=[f"C{names.index(n)}" for n in kl])
        ax_k.set_xticks(range(len(kl)), list(kl), rotation=30, ha="right")
        ax_k.set_ylabel("nats per token")
        ax_k.set_title("KL(teacher || system), lower is better")
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [report["systems"][name]["metrics"].get(m) for m in metrics]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        ax_q.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
        for x, v in zip(xs, values):
            if v is None:
                ax_q.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax_q.set_xticks(range(len(metrics)), metrics, rotation=20, ha="right")
    ax_q.set_ylim(0, 1.05)
    ax_q.set_ylabel("score (higher is closer to the prompted teacher)")
    ax_q.set_title(f"quality on {report['inputs']['n']} held-out inputs")
    ax_q.legend(fontsize=8)
    models = [n for n in names if report["systems"][n]["kind"] != "constant"]
    tokens = [report["systems"][n]["metrics"].get("input_tokens") or 0 for n in models]
    ax_c.bar(range(len(models)), tokens, color=[f"C{names.index(n)}" for n in models])
    ax_c.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax_c.set_ylabel("input tokens per request")
    ax_c.set_title("cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
