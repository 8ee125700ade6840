"""Task success: adapters trained on simulated and on grounded (sandbox) dialogues, side by side, on tasks with checks.

    genpi run recipes/tasks.py                    # the bash example and its 51 tasks, about 40 min on 2 CPU cores
    genpi run recipes/tasks.py --prompt agent.txt --tasks agent_tasks.jsonl --checker agent_checks.py:protocol
    genpi run recipes/tasks.py --smoke            # the CI size: same steps, smaller numbers

Synthesizes training dialogues twice from the same inputs: once with the environment played by the model (the
default), once with the agent's commands run in a throwaway sandbox per dialogue (``--env sandbox``). Trains a
GenPI adapter on each, and evaluates both beside the base model with the prompt (upper bound) and without it
(lower bound) on the tasks: each system works every task in a fresh sandbox of its own, and the task's check
decides. The tasks' requests are also the held-out inputs of the single-turn metrics, and are checked disjoint
from both training runs. Everything goes under runs/tasks/; rerunning resumes every step.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from genpi import EvalConfig, SynthConfig, TrainConfig, evaluate, synthesize, train_resumably

# Three agent turns: a command, its real output, then an answer or a second command.
SYNTH = SynthConfig(num_inputs=32, max_turns=3, max_new_tokens=128, concurrency=16, seed=0)
# TrainConfig's defaults (docs/TRAINING.md, Defaults, says why each differs from the paper's); only the checkpoint
# interval differs.
TRAIN = TrainConfig(save_steps=10)
EVAL = EvalConfig(max_new_tokens=128, task_turns=6, multiturn_turns=0, reconstruction_inputs=0, latency_inputs=0)

SMOKE = dict(num_inputs=3, tasks=3, max_tokens=64, epochs=1, task_turns=2)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description="genpi tasks: simulated vs grounded training dialogues, by task success")
    ap.add_argument("--prompt", default="examples/bash_agent.txt", help="the agent's prompt")
    ap.add_argument("--tasks", default="examples/bash_tasks.jsonl", help="tasks with checks (docs/EVALUATION.md)")
    ap.add_argument("--checker", default="examples/bash_agent.checks.py:protocol", help="protocol checker ('' for none)")
    ap.add_argument("--seeds", default="", help="seed inputs for synthesis (default: none, the prompt alone)")
    ap.add_argument("--out", default="runs/tasks", help="directory for the runs, adapters and report")
    ap.add_argument("--smoke", action="store_true", help="the CI size: a few minutes")
    args = ap.parse_args(argv)

    synth, tcfg, ecfg, out = SYNTH, TRAIN, EVAL, Path(args.out)
    tasks = args.tasks
    if args.smoke:
        synth = dataclasses.replace(synth, num_inputs=SMOKE["num_inputs"], max_turns=2, max_new_tokens=SMOKE["max_tokens"])
        tcfg = dataclasses.replace(tcfg, epochs=SMOKE["epochs"])
        ecfg = dataclasses.replace(ecfg, max_new_tokens=SMOKE["max_tokens"], task_turns=SMOKE["task_turns"], bootstrap=200)
        out.mkdir(parents=True, exist_ok=True)
        lines = Path(args.tasks).read_text(encoding="utf-8").splitlines()[: SMOKE["tasks"]]
        tasks = out / "tasks.jsonl"
        tasks.write_text("\n".join(lines) + "\n", encoding="utf-8")

    adapters = []
    for env in ("simulated", "sandbox"):
        # --- synthesize (the same inputs both times: the seed decides them, not the environment)
        run = synthesize(dataclasses.replace(synth, prompt=args.prompt, seed_inputs=args.seeds, env=env,
                                             out=out / f"train-{env}"))

        # --- train
        adapters.append(train_resumably(dataclasses.replace(tcfg, data=run, out=out / f"genpi-{env}")))

    # --- evaluate
    return evaluate(dataclasses.replace(ecfg, prompt=args.prompt, tasks=str(tasks), checker=args.checker,
                                        adapter=adapters, out=out / "report"))


if __name__ == "__main__":  # the same as `genpi run recipes/tasks.py`: one-line errors, Ctrl-C resumes
    import sys

    from genpi.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
