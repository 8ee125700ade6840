"""How long a run trains, and whether it was long enough to learn.

A handful of records at 3 epochs is a handful of optimizer steps, which leaves the adapter where it started (measured:
12 steps kept a prompt's protocol on 0 of 23 tasks). :func:`plan_steps` raises the default epochs until a run has
``min_steps`` optimizer steps; :func:`too_short` says after training when a run was still too short, and which flag
fixes it. Both are pure functions of the config, the counts and the logged losses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from genpi.config import DEFAULT_EPOCHS, SOFT_PROMPTS, TrainConfig

# The behaviour loss must end below this share of where it started for a run to count as having learnt.
LOSS_FALL = 0.9


@dataclass
class StepPlan:
    """A run's length: optimizer steps, passes over the records, and why (for the summary and ``genpi.json``)."""

    steps: int
    epochs: float
    records: int  # examples per pass (usable records)
    steps_per_epoch: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def steps_per_epoch(examples: int, batch_size: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimizer steps in one pass over ``examples``, as ``transformers.Trainer`` counts them (the last, partial
    batch and accumulation round included)."""
    batches = math.ceil(examples / (batch_size * processes))
    return max(1, math.ceil(batches / grad_accum))


def plan_steps(c: TrainConfig, records: int, processes: int = 1) -> StepPlan:
    """The optimizer steps and epochs the run will take on ``records`` usable records.

    ``--max-steps`` and ``--epochs``, when given, are kept as given. Otherwise the run takes ``DEFAULT_EPOCHS``
    epochs, raised to as many whole epochs as it takes to reach ``--min-steps`` optimizer steps. PromptIntern reads
    one pass over a dataset of ``epochs x records`` staged examples, so its steps are counted on that dataset.
    """
    records = max(1, records)
    per_epoch = steps_per_epoch(records, c.batch_size, c.grad_accum, processes)
    staged = c.strategy == "promptintern"

    def steps(epochs: float) -> int:
        if staged:
            return steps_per_epoch(max(1, round(epochs * records)), c.batch_size, c.grad_accum, processes)
        return max(1, math.ceil(epochs * per_epoch))

    if c.max_steps > 0:
        return StepPlan(c.max_steps, c.max_steps / per_epoch, records, per_epoch, f"--max-steps {c.max_steps}")
    if c.epochs is not None:
        return StepPlan(steps(c.epochs), float(c.epochs), records, per_epoch, f"--epochs {c.epochs:g}")
    epochs = DEFAULT_EPOCHS
    while steps(epochs) < c.min_steps:
        epochs += 1
    if epochs == DEFAULT_EPOCHS:
        reason = f"the default {DEFAULT_EPOCHS} epochs, which reach --min-steps {c.min_steps}"
    else:
        reason = (f"{epochs} epochs, raised from {DEFAULT_EPOCHS} so that {records} records give at least "
                  f"--min-steps {c.min_steps} optimizer steps")
    return StepPlan(steps(epochs), float(epochs), records, per_epoch, reason)


def too_short(c: TrainConfig, plan: StepPlan, steps: int, history: list[dict]) -> str:
    """Why the run was too short to learn, with the flag that fixes it; empty when it was not.

    Too short is fewer optimizer steps than ``--min-steps``, or a behaviour loss (``loss/sft``) whose last logged
    values are not below ``LOSS_FALL`` of its first ones (means of the first and last quarter of the logs, at most
    five each, so that one noisy batch does not decide). The loss rule is left out where the behaviour view has the
    prompt in its context (a soft prompt starts as the prompted model, PromptIntern removes the prompt stage by stage,
    ``prepend`` keeps it): there the loss starts near the teacher's own and need not fall.
    """
    if steps < c.min_steps:
        if c.max_steps > 0:
            fix = f"raise --max-steps to {c.min_steps}, or leave it out"
        elif c.epochs is not None:
            need = math.ceil(c.min_steps / plan.steps_per_epoch)
            fix = f"raise --epochs to {need}, or leave it out (the default reaches --min-steps)"
        else:
            fix = "raise --min-steps"
        return (f"only {steps} optimizer steps ({plan.reason}), fewer than --min-steps {c.min_steps}: too short for the "
                f"adapter to learn the prompt's behaviour; {fix}")
    weights = c.weights()
    prompted = c.strategy in SOFT_PROMPTS or c.strategy == "promptintern" or weights["prepend_share"] > 0
    values = [h["loss/sft"] for h in history if "loss/sft" in h and "step" in h]
    if prompted or not weights["w_sft"] or len(values) < 2:
        return ""
    k = min(5, max(1, len(values) // 4))
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    if last < LOSS_FALL * first:
        return ""
    return (f"the behaviour loss did not fall (loss/sft {first:.3f} -> {last:.3f} over {steps} steps, not below "
            f"{LOSS_FALL:.0%} of its start): the adapter has likely learnt little; raise --learning-rate (now "
            f"{c.peak_lr():g}) or --min-steps")
