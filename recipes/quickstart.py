"""Quick start: internalize the bash agent's prompt into the tiny default model, then prove it side by side.

    genpi run recipes/quickstart.py            # 23 minutes on 2 shared CPU cores (see below)
    python recipes/quickstart.py               # the same
    genpi run recipes/quickstart.py --smoke    # the CI size: a few minutes, same steps, smaller numbers

Synthesizes a training run (8 real seed inputs, the rest proposed by the model playing the user) and held-out
inputs (8 real ones from examples/bash_agent.heldout.txt, the rest proposed with another seed, checked disjoint
from the training inputs) on the embedded server, trains an adapter with `genpi train`'s default strategy (GenPI
plus the KL term to the prompted teacher) and a GenPI baseline without that term, and evaluates both against the
base model with and without the prompt. Everything goes under runs/quickstart/ (or --out); rerunning
resumes every step. Measured 22 min 40 s at commit 1d01cc0 with one torch thread while a CI run shared the 2 cores
(docs/results/quickstart_printed.log).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from genpi import EvalConfig, SynthConfig, TrainConfig, evaluate, synthesize, train_resumably

PROMPT = "examples/bash_agent.txt"

CHECKER = "examples/bash_agent.checks.py:protocol"
# Proposed inputs are kept only if the prompted agent's first reply follows the protocol (--checker); the summary
# of each synthesis gives the share that passed, trainable records / requested and how the dialogues finished.
SYNTH = SynthConfig(prompt=PROMPT, seed_inputs="examples/bash_agent.seeds.txt", num_inputs=16, max_turns=2,
                    max_new_tokens=128, concurrency=16, seed=0, checker=CHECKER)
HELDOUT = SynthConfig(prompt=PROMPT, seed_inputs="examples/bash_agent.heldout.txt", num_inputs=16, inputs_only=True,
                      concurrency=16, seed=1, checker=CHECKER)
# TrainConfig's defaults (docs/TRAINING.md, Defaults): lr 1e-3, a quarter of the records with a prompt-generation
# example, no LoRA dropout, 2 records per step, and at least 40 optimizer steps, so the ~11 usable records train 7
# epochs. Only the checkpoint interval differs: a checkpoint every 5 steps, so Ctrl-C loses little.
TRAIN = TrainConfig(save_steps=5)
# Writing the whole 777-token prompt back would cost each system ~840 decoded tokens on the CPU: the quick start
# scores the first 128 tokens of one reconstruction (ROUGE-L against the whole prompt).
EVAL = EvalConfig(prompt=PROMPT, checker=CHECKER, max_new_tokens=128,
                  multiturn_turns=0, latency_inputs=4, reconstruction_inputs=1, reconstruction_max_new_tokens=128)

# The CI size: the same pipeline with every count cut down.
SMOKE = dict(train_inputs=4, heldout_inputs=2, max_tokens=96, epochs=1)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description="genpi quick start: synth -> train -> eval on the bash example")
    ap.add_argument("--out", default="runs/quickstart", help="directory for the runs, adapters and report")
    ap.add_argument("--smoke", action="store_true", help="the CI size: a few minutes")
    args = ap.parse_args(argv)
    out = Path(args.out)

    synth, heldout, tcfg, ecfg = SYNTH, HELDOUT, TRAIN, EVAL
    if args.smoke:
        synth = dataclasses.replace(synth, num_inputs=SMOKE["train_inputs"], max_new_tokens=SMOKE["max_tokens"])
        heldout = dataclasses.replace(heldout, num_inputs=SMOKE["heldout_inputs"])
        tcfg = dataclasses.replace(tcfg, epochs=SMOKE["epochs"])
        ecfg = dataclasses.replace(ecfg, max_new_tokens=SMOKE["max_tokens"], latency_inputs=2, reconstruction_inputs=1,
                                   reconstruction_max_new_tokens=SMOKE["max_tokens"], bootstrap=200)

    # --- synthesize
    synthesize(dataclasses.replace(synth, out=out / "train"))
    synthesize(dataclasses.replace(heldout, out=out / "heldout", exclude_run=out / "train"))

    # --- train
    adapters = {}
    for strategy in (tcfg.strategy, "genpi"):
        cfg = dataclasses.replace(tcfg, data=out / "train", strategy=strategy, out=out / "adapters" / strategy)
        adapters[strategy] = train_resumably(cfg)

    # --- evaluate
    return evaluate(dataclasses.replace(ecfg, inputs=out / "heldout", adapter=[adapters[tcfg.strategy]],
                                        baseline=[adapters["genpi"]], out=out / "report"))


if __name__ == "__main__":  # the same as `genpi run recipes/quickstart.py`: one-line errors, Ctrl-C resumes
    import sys

    from genpi.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
