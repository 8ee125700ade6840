"""Paper scale: an 8B instruct model, ~1000 synthesized inputs, the paper's training settings. Needs a GPU.

    vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000 &          # synthesis server (any OpenAI-compatible one)
    genpi run recipes/paper_scale.py --agent bash --base-url http://localhost:8000/v1
    genpi run recipes/paper_scale.py --agent support --base-url http://localhost:8000/v1

On several GPUs, train under `accelerate launch` between the recipe's other steps, which run once (each command
resumes, and the recipe keeps an adapter that is already trained):

    genpi run recipes/paper_scale.py --agent bash --base-url http://localhost:8000/v1 --only synth
    accelerate launch -m genpi train --data runs/paper-bash/train --strategy genpi \
        --model meta-llama/Llama-3.1-8B-Instruct --max-length 4096 --batch-size 4 --grad-accum 4 --epochs 3 \
        --learning-rate 1e-4 --lora-dropout 0.05 --pg-share 1 --out runs/paper-bash/genpi
    genpi run recipes/paper_scale.py --agent bash --base-url http://localhost:8000/v1   # trains seqkd, evaluates

Not run in CI. The LoRA and optimizer settings are Shin et al.'s (NAACL 2025), set explicitly (TrainConfig's
defaults are tuned for a few dozen steps on a small model; docs/TRAINING.md): LoRA r 16, alpha 32, dropout 0.05 on
every linear layer but the head; lr 1e-4, cosine, 3% warm-up; the OS-task weights w_sft 0.7, w_pg 0.3, with a
prompt-generation example for every record. The base model trained is the one that played the agent in synthesis, loaded from
the Hub (or a local directory) by the same name.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from genpi import EvalConfig, SynthConfig, TrainConfig, evaluate, synthesize, train_resumably

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
AGENTS = {
    "bash": dict(prompt="examples/bash_agent.txt", seeds="examples/bash_agent.seeds.txt",
                 heldout="examples/bash_agent.heldout.txt", checker="examples/bash_agent.checks.py:protocol"),
    "support": dict(prompt="examples/support_agent.txt", seeds="examples/support_agent.seeds.txt",
                    heldout="", checker="examples/support_agent.schema.json"),
}

# The paper's code decodes the teacher and the environment greedily, the inputs at 1.0 and the reasons at 0.7.
SYNTH = SynthConfig(num_inputs=1000, max_turns=4, max_new_tokens=512, concurrency=32, agent_temperature=0.0,
                    env_temperature=0.0, inputs_temperature=1.0, reason_temperature=0.7, seed=0, model=MODEL)
TRAIN = TrainConfig(model=MODEL, epochs=3, batch_size=4, grad_accum=4, max_length=4096, learning_rate=1e-4,
                    lora_dropout=0.05, pg_share=1.0, precision="auto", activation_checkpointing="auto", save_steps=100)
EVAL = EvalConfig(model=MODEL, max_new_tokens=512, batch_size=16, latency_inputs=32, reconstruction_inputs=16)


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description="genpi at paper scale on one example agent")
    ap.add_argument("--agent", choices=sorted(AGENTS), required=True)
    ap.add_argument("--base-url", required=True, help="OpenAI-compatible server serving the model (e.g. vLLM)")
    ap.add_argument("--out", default="", help="directory for everything (default: runs/paper-AGENT)")
    ap.add_argument("--only", choices=("synth",), default=None, help="stop after synthesis (to train elsewhere)")
    args = ap.parse_args(argv)
    agent = AGENTS[args.agent]
    out = Path(args.out or f"runs/paper-{args.agent}")

    # --- synthesize: a training run, and a held-out run with another seed (and real held-out inputs if any)
    synth = dataclasses.replace(SYNTH, prompt=agent["prompt"], base_url=args.base_url)
    synthesize(dataclasses.replace(synth, seed_inputs=agent["seeds"], out=out / "train"))
    synthesize(dataclasses.replace(synth, seed_inputs=agent["heldout"], num_inputs=200, seed=1, out=out / "heldout",
                                    exclude_run=out / "train"))
    if args.only == "synth":
        return None

    # --- train: GenPI and the SeqKD baseline
    adapters = {}
    for strategy in ("genpi", "seqkd"):
        cfg = dataclasses.replace(TRAIN, data=out / "train", strategy=strategy, out=out / strategy)
        adapters[strategy] = train_resumably(cfg)

    # --- evaluate
    return evaluate(dataclasses.replace(EVAL, prompt=agent["prompt"], inputs=out / "heldout",
                                        checker=agent["checker"], adapter=[adapters["genpi"]],
                                        baseline=[adapters["seqkd"]], out=out / "report"))


if __name__ == "__main__":  # the same as `genpi run recipes/paper_scale.py`: one-line errors, Ctrl-C resumes
    import sys

    from genpi.cli import main as cli

    sys.exit(cli(["run", __file__, *sys.argv[1:]]))
