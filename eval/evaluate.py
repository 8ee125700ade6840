"""``evaluate(config)``: every system answers the same held-out inputs in one run; the report compares them.

The CLI (``genpi eval``), recipes and tests all call :func:`evaluate`. Fidelity references:

* single turn (``rouge_l``, ``exact_match``): the prompted system's own greedy reply in this run, so the prompted
  row is 1 by construction and the others say how close they come to the teacher;
* multi-turn (``multiturn_*``): the teacher's recorded turn in the held-out dialogue;
* ``prompt_reconstruction``: the prompt's text (the prompted system is not asked: it has the prompt in context).

``protocol`` and ``multiturn_protocol`` need no reference: the share of replies that pass the ``--checker``.
``task_success`` (with ``--tasks``) needs none either: the share of tasks whose check passed after the system
worked them in a sandbox (genpi.eval.agent).

Behaviour, not format: ``teacher_kl``, ``token_agreement`` and ``teacher_nll`` (genpi.eval.fidelity) force the
prompted system's replies through every system; ``action`` and ``action_name`` (genpi.eval.actions) compare what the
replies do, when the checker names it; ``execution_agreement`` (with ``--tasks``) compares what the first commands
print in fresh sandboxes. The degenerate ``constant`` and ``minimal`` systems (genpi.eval.baselines) show what a
useless system scores on each metric.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from genpi import __version__
from genpi.config import EvalConfig
from genpi.errors import UserError
from genpi.eval import cost as cost_
from genpi.eval.actions import action_scores, execution_agreement
from genpi.eval.baselines import (constant_systems, format_only, near_duplicates, teacher_replies,
                                  training_targets)
from genpi.checkers import get_checker
from genpi.eval.fidelity import teacher_forced
from genpi.eval.heldout import HeldOut, HeldOutItem, check_overlap, load_heldout, training_records
from genpi.eval.metrics import exact_match, mean, rouge_l
from genpi.eval.multiturn import replay_turns
from genpi.eval.reconstruction import reconstruction_score
from genpi.eval.recovery import mean_interval, recovery
from genpi.eval.report import plot, tables, notes, write_json
from genpi.eval.systems import build_systems, compressed_system
from genpi.eval.tasks import load_tasks
from genpi.progress import make_console, progress
from genpi.sandbox import check_available
from genpi.prompt import load_prompt, pg_question

BOUNDS = ("prompted", "unprompted")


def evaluate(config: EvalConfig, console=None) -> Path:
    """Run the evaluation ``config`` describes, write ``report.json``, ``report.png`` and ``outputs.jsonl`` under
    ``config.out``, print the tables, and return ``config.out`` (``read_report`` reads it).

    Args:
        config: what to evaluate and how.
        console: a ``rich`` console for progress and tables (default: stdout).
    """
    console = console or make_console()
    started = time.monotonic()
    _validate(config)
    prompt = load_prompt(config.prompt)
    checker = get_checker(config.checker) if config.checker else None
    recorded = dataclasses.replace(config, checker=checker.name) if checker else config  # a callable, by its name
    tasks = load_tasks(config.tasks) if config.tasks else []
    backend = check_available(config.sandbox_backend) if tasks else ""  # before any model loads
    held = (load_heldout(config.inputs, prompt.hash, config.num_inputs) if config.inputs
            else _heldout_from_tasks(config.tasks, tasks, config.num_inputs))
    systems, base_model = build_systems(prompt, config.adapter, config.baseline, config.model)
    checked_runs = _check_overlap(config, held, systems)
    train_runs = _training_runs(config, systems)
    train_records = [r for run in train_runs for r in training_records(run)]
    scored = len(held.items)  # before any near duplicate is left out
    near = near_duplicates([it.input for it in held.items], [r.get("input") or "" for r in train_records],
                           config.near_duplicate) if train_records else []
    if config.exclude_near_duplicates and near:
        drop = {d["index"] for d in near}
        held.items = [it for i, it in enumerate(held.items) if i not in drop]
        if not held.items:
            raise UserError(f"every held-out input of {held.source} is a near duplicate of a training input "
                            f"(TF-IDF cosine >= {config.near_duplicate}): synthesize other held-out inputs")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory path")

    from genpi.eval.generation import Generator

    with console.status(f"loading {base_model} and {len(systems) - 2} adapter(s)"):
        gen = Generator(base_model, systems, rows=config.batch_size)
    for rate in config.compressed:
        with console.status(f"compressing the prompt to {rate} of its tokens"):
            systems.append(compressed_system(gen, prompt, rate))

    from genpi.synth.episodes import stop_strings

    stops = stop_strings(prompt)["agent"] if config.stop_strings else []
    items = held.items
    single_convs = [[{"role": "user", "content": it.input}] for it in items]
    turns = replay_turns(held, config.multiturn_turns) if config.multiturn_turns > 0 else []
    recon_items = items[: config.reconstruction_inputs]
    recon_tokens = config.reconstruction_max_new_tokens or (
        len(gen.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]) + 64)
    trained = [s for s in systems if s.adapter]  # adapters first, then baselines
    compared = trained[0] if trained else systems[1]
    latency_convs = single_convs[: config.latency_inputs]

    single, multi, recon = {}, {}, {}
    with progress(console) as bars:
        def run(label, system, convs, max_new_tokens):
            task = bars.add_task(f"{label:<15} {system.name}", total=len(convs), rate="")
            return gen.generate(system, prompt, convs, max_new_tokens, on_reply=lambda: bars.advance(task),
                                stop=stops if label != "reconstruction" else None)

        for s in systems:
            single[s.name] = run("single turn", s, single_convs, config.max_new_tokens)
        if config.constant:  # the degenerate baselines, from the training run's teacher replies if there is one
            taught = teacher_replies(train_records)
            replies, source = ((taught, ", ".join(train_runs)) if taught else
                               ([g.text for g in single["prompted"]], "this run's prompted replies"))
            for s in constant_systems(replies, checker, source):
                systems.append(s)
                single[s.name] = run("single turn", s, single_convs, config.max_new_tokens)
        forced = {}
        if config.teacher_forcing:
            task = bars.add_task(f"{'teacher-forced':<15} {sum(not s.model_free for s in systems)} systems",
                                 total=len(single_convs), rate="")
            forced = teacher_forced(gen, systems, prompt, single_convs, single["prompted"],
                                    on_item=lambda: bars.advance(task))
        for s in systems:
            if turns:
                multi[s.name] = run("multi-turn", s, [t.conversation for t in turns], config.max_new_tokens)
        for s in systems:
            if recon_items and s.kind not in ("prompted", "compressed") and not s.model_free:  # prompt in context
                convs = [[{"role": "user", "content": _recon_question(it, i, single)}] for i, it in enumerate(recon_items)]
                recon[s.name] = run("reconstruction", s, convs, recon_tokens)
        worked = {}
        if tasks:
            from genpi.eval.agent import work_tasks
            from genpi.sandbox import Limits
            from genpi.synth.episodes import derive_end_pattern, environment_opener

            opener, end_pattern = environment_opener(prompt), derive_end_pattern(prompt)
            limits = Limits(seconds=config.action_timeout)
            for s in systems:
                task = bars.add_task(f"{'tasks':<15} {s.name}", total=config.task_turns, rate="")
                worked[s.name] = work_tasks(
                    gen, s, prompt, tasks, max_turns=config.task_turns, max_new_tokens=config.max_new_tokens, stop=stops,
                    end_pattern=end_pattern, answer_pattern=config.answer_pattern, opener=opener,
                    output_chars=config.env_output_chars, limits=limits, backend=backend,
                    on_turn=lambda task=task: bars.advance(task))
                bars.update(task, completed=config.task_turns)
        latency = {}
        if latency_convs:
            others = [s for s in trained if s is not compared]  # each timed as it runs in this evaluation
            task = bars.add_task(f"{'latency':<15} prompted (cached or not) vs {compared.name} (merged or not)"
                                 + (f" and {len(others)} more" if others else ""),
                                 total=cost_.latency_arms(compared, others) * len(latency_convs), rate="")
            # both systems have just generated, so the model is warm: no warm-up requests needed
            latency = cost_.measure_latency(gen, prompt, systems[0], compared, latency_convs, config.max_new_tokens,
                                            on_request=lambda: bars.advance(task), warmup=False, serving=True,
                                            also=others)

    # --- score
    reference = [g.text for g in single["prompted"]]
    scores, failures, checks = _score(systems, single, multi, recon, reference, turns, checker, prompt.text)
    for name, values in forced.items():
        scores[name].update(values)
    for name, values in action_scores(checks).items() if checks else ():
        scores[name].update(values)
    for name, outcomes in worked.items():
        scores[name]["task_success"] = [float(o.success) for o in outcomes]
        failures[name]["task_success"] = dict(Counter(o.reason for o in outcomes if not o.success))
    if worked:
        first_turns = {name: [next((t["content"] for t in o.turns if t["role"] == "assistant"), "") for o in outcomes]
                       for name, outcomes in worked.items()}
        with console.status("execution agreement: each system's first command and the teacher's, in fresh sandboxes"):
            for name, values in execution_agreement(tasks, first_turns, limits, backend).items():
                scores[name]["execution_agreement"] = values
    rows = _output_rows(systems, items, turns, recon_items, single, multi, recon, reference, scores)
    rows += [{"part": "task", "id": t.id, "request": t.request, "category": t.category, "check": t.check, "results": {
        name: dataclasses.asdict(outcomes[k]) for name, outcomes in worked.items()}} for k, t in enumerate(tasks)]

    # --- cost
    params = gen.n_params
    sys_metrics = {}
    for s in systems:
        m = {name: mean(values) for name, values in scores[s.name].items()}
        if s.model_free:  # no model runs: it has no cost to compare
            sys_metrics[s.name] = m
            continue
        m["input_tokens"] = mean(g.input_tokens for g in single[s.name])
        m["output_tokens"] = mean(g.output_tokens for g in single[s.name])
        # A soft prompt's virtual tokens are context (input tokens, KV, attention) but their KV is computed once,
        # not per request.
        m["virtual_tokens"] = gen.virtual_tokens(s)
        m["flops_per_request"] = cost_.flops_per_request(params + gen.adapter_params(s),
                                                         m["input_tokens"] - m["virtual_tokens"], m["output_tokens"])
        sys_metrics[s.name] = m
    modelled = {s.name: sys_metrics[s.name] for s in systems if not s.model_free}
    cost = _cost(systems, modelled, params, compared.name, latency, prompt.token_length(gen.tokenizer),
                 gen.kv_bytes_per_token())

    # --- recovery
    rec = {}
    for s in systems:
        if s.name in BOUNDS:
            continue
        rec[s.name] = {
            metric: recovery(scores["prompted"][metric], scores["unprompted"][metric], values,
                             noise_floor=config.noise_floor, n_boot=config.bootstrap, seed=config.seed)
            for metric, values in scores[s.name].items() if metric in scores["prompted"]
        }

    report = {
        "genpi_version": __version__,
        "prompt": {"path": config.prompt, "hash": prompt.hash, "kind": prompt.kind, "tokens": cost["prompt_tokens"]},
        "model": {"name": base_model, "params": params},
        "inputs": {"source": held.source, "kind": held.kind, "n": len(items), "multiturn_turns": len(turns),
                   "reconstruction_inputs": len(recon_items), "overlap_checked_against": checked_runs},
        **({"tasks": {"source": config.tasks, "n": len(tasks), "max_turns": config.task_turns, "env": config.env,
                      "backend": backend, "by_category": _by_category(tasks, worked),
                      "success_ci": {name: mean_interval(scores[name]["task_success"], config.bootstrap, config.seed)
                                     for name in worked}}} if tasks else {}),
        "stop_strings": stops,
        "references": {
            "rouge_l, exact_match": "the prompted system's greedy reply in this run",
            "multiturn_*": "the teacher's recorded agent turn, after the teacher's recorded history",
            "prompt_reconstruction": "the prompt's text (ROUGE-L; the reply's 'Reason:' part removed)",
            **({"teacher_kl, token_agreement, teacher_nll": "the prompted system's greedy reply in this run, teacher-forced "
                "through each system: KL(teacher || system) in nats per token, the share of tokens that are the "
                "system's top-1, and the NLL of the reply"} if forced else {}),
            **({"action, action_name": "the action the checker extracts from the prompted system's reply (inputs where "
                "it has none are left out)"} if any("action" in v for v in scores.values()) else {}),
            **({"execution_agreement": "the result (exit code and output) of the prompted system's first command on "
                "each task, run in a fresh sandbox after the task's setup"} if worked else {}),
            **({"protocol, multiturn_protocol": f"none: the share of replies that pass the checker {checker.name}"}
               if checker else {}),
            **({"task_success": "none: the share of tasks whose check passed (answer or check command) after the "
                                "system worked the task in a sandbox"} if tasks else {}),
        },
        "systems": {s.name: {**s.describe(), "metrics": sys_metrics[s.name], "failures": failures[s.name]}
                    for s in systems},
        "reference_rows": _reference_rows(config, checker, single["prompted"], train_records, train_runs, near,
                                          scored, scores, systems),
        "recovery": rec,
        "noise_rule": {"noise_floor": config.noise_floor, "bootstrap": config.bootstrap, "interval": 0.95,
                       "rule": "undefined when |gap| <= noise_floor, or the 95% paired-bootstrap interval of the gap "
                               "contains 0, or fewer than 2 items"},
        "cost": cost,
        "commands": _commands(recorded),
        "versions": _versions(),
        "config": dataclasses.asdict(recorded),
        "seconds": round(time.monotonic() - started, 1),
    }

    # --- write
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "report.json")
    with open(out / "outputs.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    plot(report, out / "report.png")
    for table in tables(report):
        console.print(table)
    for line in notes(report):
        console.print(line, highlight=False)
    console.print(f"report: {out / 'report.json'}, {out / 'report.png'}, outputs: {out / 'outputs.jsonl'}", highlight=False)
    return out


def read_report(out: str | Path) -> dict:
    """The ``report.json`` that :func:`evaluate` wrote under ``out``."""
    path = Path(out) / "report.json"
    if not path.is_file():
        raise UserError(f"{out} holds no report.json: run `genpi eval --out {out}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _score(systems, single, multi, recon, reference, turns, checker, prompt_text):
    """Per-item scores ``{system: {metric: [score per item]}}``, checker failure counts
    ``{system: {metric: {reason: count}}}`` and each system's single-turn checks (``{}`` without a checker)."""
    scores, failures, single_checks = {}, {}, {}
    for s in systems:
        sc, fails = scores.setdefault(s.name, {}), failures.setdefault(s.name, {})
        parts = [("", [g.text for g in single[s.name]], reference)]
        if turns:
            parts.append(("multiturn_", [g.text for g in multi[s.name]], [t.reference for t in turns]))
        for prefix, texts, refs in parts:
            sc[prefix + "rouge_l"] = [rouge_l(t, r) for t, r in zip(texts, refs)]
            sc[prefix + "exact_match"] = [exact_match(t, r) for t, r in zip(texts, refs)]
            if checker:
                checks = [checker(t) for t in texts]
                if not prefix:
                    single_checks[s.name] = checks
                sc[prefix + "protocol"] = [float(c.ok) for c in checks]
                counts = fails.setdefault(prefix + "protocol", {})
                for c in checks:
                    if not c.ok:
                        counts[c.reason] = counts.get(c.reason, 0) + 1
        if s.name in recon:
            sc["prompt_reconstruction"] = [reconstruction_score(g.text, prompt_text) for g in recon[s.name]]
    return scores, failures, single_checks


def _output_rows(systems, items, turns, recon_items, single, multi, recon, reference, scores) -> list[dict]:
    """Every reply with its scores, one row per item and part, for ``outputs.jsonl``."""
    rows = []
    for i, it in enumerate(items):
        rows.append({"part": "single", "id": it.id, "input": it.input, "reference": reference[i], "replies": {
            s.name: _reply_row(single[s.name][i], scores[s.name], i) for s in systems}})
    for j, turn in enumerate(turns):
        rows.append({"part": "multiturn", "id": turn.id, "turn": turn.turn, "conversation": turn.conversation,
                     "reference": turn.reference, "replies": {
                         s.name: _reply_row(multi[s.name][j], scores[s.name], j, "multiturn_") for s in systems}})
    for k, it in enumerate(recon_items):
        rows.append({"part": "reconstruction", "id": it.id, "question": _recon_question(it, k, single), "replies": {
            name: {"text": g[k].text, "prompt_reconstruction": scores[name]["prompt_reconstruction"][k]}
            for name, g in recon.items()}})
    return rows


def _validate(c: EvalConfig) -> None:
    """What an evaluation needs beyond valid values (checked by the config itself)."""
    if not c.prompt:
        raise UserError("no prompt given: pass --prompt FILE (the prompt the adapters internalized)")
    if not c.inputs and not c.tasks:
        raise UserError("no held-out inputs given: pass --inputs with a synthesis run directory or a file of inputs, "
                        "or --tasks with a tasks file")


def _heldout_from_tasks(path: str, tasks: list, limit: int) -> HeldOut:
    """The tasks' requests as held-out inputs (without ``--inputs``)."""
    items = [HeldOutItem(id=t.id, input=t.request) for t in tasks]
    return HeldOut(source=path, kind="tasks", items=items[:limit] if limit > 0 else items)


def _by_category(tasks: list, worked: dict) -> dict:
    """Task success per category and system: ``{category: {"n": tasks, system: share}}``."""
    out: dict = {}
    for category in sorted({t.category or "-" for t in tasks}):
        ks = [k for k, t in enumerate(tasks) if (t.category or "-") == category]
        out[category] = {"n": len(ks), **{name: mean(float(o[k].success) for k in ks) for name, o in worked.items()}}
    return out


def _training_runs(config: EvalConfig, systems) -> list[str]:
    """The training runs the adapters came from (or ``--train-run``), where they still exist."""
    runs = [config.train_run] if config.train_run else list(dict.fromkeys(
        s.info.source_run for s in systems if s.info.source_run))
    return [r for r in runs if Path(r).is_dir()]


def _reference_rows(config, checker, prompted, train_records, train_runs, near, scored, scores, systems) -> dict:
    """What the teacher's data scores, and how held out the inputs are (genpi.eval.baselines)."""
    rows: dict = {"training_runs": train_runs}
    if checker and train_records:
        targets = training_targets(train_records)
        rows["training_targets_protocol"] = {"pass": sum(checker(t).ok for t in targets), "n": len(targets)}
    if checker:
        uncut = [g for g in prompted if g.finish != "length"]
        rows["prompted_uncut_protocol"] = {"pass": sum(checker(g.text).ok for g in uncut), "n": len(uncut),
                                           "cut_off": len(prompted) - len(uncut)}
        rows["format_only"] = format_only(scores, systems)
    rows["near_duplicates"] = {"threshold": config.near_duplicate, "measure": "TF-IDF cosine, word 1-2 grams",
                               "n": len(near), "of": scored,
                               "excluded": config.exclude_near_duplicates, "pairs": near[:20]}
    return rows


def _check_overlap(config: EvalConfig, held, systems) -> list[str]:
    """Check the held-out inputs against the training run(s); return the runs checked."""
    if not config.overlap_check:
        return []
    if config.train_run:
        runs = [config.train_run]
    else:
        runs = list(dict.fromkeys(s.info.source_run for s in systems if s.info.source_run))
    for run in runs:
        if not Path(run).is_dir():
            raise UserError(
                f"training run {run} (to check the held-out inputs against) does not exist: "
                "pass --train-run with its path, or --no-overlap-check"
            )
        check_overlap(held, run)
    return runs


def _recon_question(item, index: int, single: dict) -> str:
    """Ask with the record's AS-IS/TO-BE answers, or, for plain inputs, this run's unprompted/prompted replies."""
    if item.as_is and item.to_be:
        return pg_question(item.input, item.as_is, item.to_be)
    return pg_question(item.input, single["unprompted"][index].text, single["prompted"][index].text)


def _reply_row(g, scores: dict, i: int, prefix: str = "") -> dict:
    row = {"text": g.text, "input_tokens": g.input_tokens, "output_tokens": g.output_tokens}
    row["finish"] = g.finish
    for name in ("rouge_l", "exact_match", "protocol", "teacher_kl", "token_agreement", "teacher_nll"):
        if prefix + name in scores:
            row[name] = scores[prefix + name][i]
    return row


def _cost(systems, metrics: dict, params: int, compared: str, latency: dict, prompt_tokens: int,
          kv_bytes_per_token: int) -> dict:
    prompted = metrics["prompted"]
    out = {
        "params": params,
        "prompt_tokens": prompt_tokens,
        "compared": compared,
        "input_token_ratio": cost_.ratio(prompted["input_tokens"], metrics[compared]["input_tokens"]),
        "flops_ratio": cost_.ratio(prompted["flops_per_request"], metrics[compared]["flops_per_request"]),
        "flops_per_request": {name: m["flops_per_request"] for name, m in metrics.items()},
        "latency": {},
        "break_even": {},
        "kv": {"bytes_per_token": kv_bytes_per_token, **{
            name: cost_.kv_memory(kv_bytes_per_token, m["input_tokens"], m["output_tokens"], m.get("virtual_tokens", 0))
            for name, m in metrics.items()}},
    }
    if latency:
        a, b = latency["prompted"], latency[compared]
        out["latency"] = {**latency, "prefill_ratio": cost_.ratio(a["prefill_s"], b["prefill_s"]),
                          "e2e_ratio": cost_.ratio(a["e2e_s"], b["e2e_s"]),
                          "decode_per_token_ratio": cost_.ratio(a["decode_per_token_s"], b["decode_per_token_s"])}
        if cost_.CACHED in latency:
            c = latency[cost_.CACHED]
            out["latency"]["cached_prefill_ratio"] = cost_.ratio(c["prefill_s"], b["prefill_s"])
            out["latency"]["cached_decode_per_token_ratio"] = cost_.ratio(c["decode_per_token_s"], b["decode_per_token_s"])
            out["kv"][cost_.CACHED] = cost_.kv_memory(kv_bytes_per_token, prompted["input_tokens"],
                                                      prompted["output_tokens"], latency["prefix_tokens"])
    for s in systems:
        if not s.adapter:
            continue
        saving = prompted["flops_per_request"] - metrics[s.name]["flops_per_request"]
        train_tokens, teacher_tokens = s.info.trained_tokens, int(s.info.teacher_tokens or 0)
        train_flops = cost_.training_flops(params, train_tokens, teacher_tokens) if train_tokens else None
        requests = cost_.break_even(train_flops, saving)
        if train_tokens is None:
            note = "genpi.json records no train_tokens"
        elif saving <= 0:
            note = "the adapter saves no FLOPs per request on these inputs"
        else:
            note = "training FLOPs (6·params·train_tokens + 2·params·teacher_tokens) / FLOPs saved per request"
        out["break_even"][s.name] = {"requests": requests, "train_flops": train_flops,
                                     "saving_flops_per_request": saving, "note": note}
    return out


def _commands(config: EvalConfig) -> list[str]:
    """The command as invoked, and the equivalent ``genpi eval`` command line (non-default settings only)."""
    parts = ["genpi", "eval"]
    for f in dataclasses.fields(EvalConfig):
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    program = "python -m genpi" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    invoked = " ".join([program, shlex.join(sys.argv[1:])]).strip()
    equivalent = shlex.join(parts)
    return [invoked] if invoked == equivalent else [invoked, equivalent]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"genpi": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "peft", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    import os

    out["cpu_count"] = os.cpu_count()
    try:
        import torch

        out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


