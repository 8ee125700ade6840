"""PromptIntern's schedule: the prompt taken away in stages over one training run.

PromptIntern (Zou et al., 2024, arXiv 2407.02211) fine-tunes with the prompt in context at first and removes it
progressively: each stage gives the input a more compressed instruction template and fewer in-context
demonstrations, and the last stage gives the bare input, as at inference. The paper does not publish its schedule;
here a stage is a template rate and a shot count (``--intern-rates 1,0.5,0 --intern-shots 2,1,0`` by default:
the whole prompt with two demonstrations, half of its tokens with one, then nothing).

* A template is the prompt pruned to its rate by token surprisal under the base model (the compression baseline
  of ``genpi eval --compressed``, :mod:`genpi.eval.compression`); rate 1 is the prompt, rate 0 none. Each is made
  once, before training, and stored in ``genpi.json`` with its measured keep rate.
* Demonstrations are synthesized dialogues of the run (the prompt's own stay in its template), fixed per stage
  and left out of that stage's training examples, so no example sees its own answer.
* The template, demonstrations and lead-in are context: only the agent's turns are supervised.
* The stages are consecutive blocks of one dataset read in order, under one learning-rate schedule: the stage
  follows the step. Each block holds an equal share of the run's examples (``epochs`` times the records, or
  ``max_steps`` batches), its records shuffled by the seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from genpi.prompt import AgentPrompt
from genpi.training.views import ViewStats, build_examples, usable


@dataclass
class Stage:
    """One stage: its template rate (asked and achieved), its demonstrations, and how many examples it trains."""

    rate: float
    shots: int
    achieved: float = 1.0
    prompt_tokens: int = 0  # the template's tokens as measured by the pruner (0 without a template)
    kept_tokens: int = 0
    demonstrations: list = field(default_factory=list)  # ids of the records shown as demonstrations
    examples: int = 0
    messages: list = field(default_factory=list)  # the template and demonstrations, as given before the input
    input_prefix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def make_templates(prompt: AgentPrompt, model, tokenizer, rates: list[float]) -> list[tuple[AgentPrompt | None, dict]]:
    """Each rate's template (None for rate 0) and its measured size."""
    from genpi.eval.compression import compress

    out = []
    for rate in rates:
        if rate <= 0:
            out.append((None, {"achieved": 0.0, "prompt_tokens": 0, "kept_tokens": 0}))
        elif rate >= 1:
            n = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in prompt.messages)
            out.append((prompt, {"achieved": 1.0, "prompt_tokens": n, "kept_tokens": n}))
        else:
            c = compress(prompt, model, tokenizer, rate)
            out.append((c.prompt, {"achieved": round(c.achieved, 4), "prompt_tokens": c.tokens, "kept_tokens": c.kept}))
    return out


def _demonstration(record: dict) -> list[dict]:
    """A synthesized dialogue as demonstration turns: the bare input, then the turns up to the last agent turn."""
    turns = [{"role": m["role"], "content": m["content"]} for m in record["dialogue"]]
    turns[0] = {"role": "user", "content": record["input"]}
    last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
    return turns[: last + 1]


def build_stage_examples(tokenizer, records: list[dict], prompt: AgentPrompt, rates: list[float], templates,
                         shots: list[int], *,
                         context: list[dict], max_length: int, total: int, seed: int = 0
                         ) -> tuple[list[dict], ViewStats, list[Stage]]:
    """The run's examples, stage after stage, ``total`` of them; with the stats and each :class:`Stage`."""
    good = [r for r in records if usable(r)]
    rng = random.Random(seed)
    stats = ViewStats(records=len(records))
    stages, examples = [], []
    k = len(templates)
    for i, ((template, size), n_shots) in enumerate(zip(templates, shots)):
        demos = rng.sample(good, min(n_shots, max(0, len(good) - 1)))
        demo_turns = [m for r in demos for m in _demonstration(r)]
        head = [dict(m) for m in template.messages] if template else [dict(m) for m in context]
        staged = AgentPrompt(messages=tuple(head + demo_turns), kind="chat", source=f"{prompt.source} (stage {i + 1})",
                             input_prefix=template.input_prefix if template else "")
        with_context = template is not None or bool(demo_turns)  # else the stage is the bare student view
        train_on = [r for r in records if r not in demos]
        stage_examples, s = build_examples(tokenizer, train_on, staged, context=context, max_length=max_length,
                                           prompt_generation=False, prepend_share=1.0 if with_context else 0.0,
                                           seed=seed + i)
        want = total // k + (i < total % k)
        order: list[dict] = []
        while len(order) < want:
            block = list(stage_examples)
            rng.shuffle(block)
            order += block
        order = order[:want]
        for e in order:
            e = dict(e, stage=i)
            examples.append(e)
            stats.tokens["behaviour"] += sum(lab != -100 for lab in e["labels"])
        stats.used = max(stats.used, s.used)
        stats.skipped_error, stats.skipped_too_long = s.skipped_error, max(stats.skipped_too_long, s.skipped_too_long)
        stats.cut_turns = max(stats.cut_turns, s.cut_turns)
        stats.prepended += s.prepended
        stages.append(Stage(rate=float(rates[i]),
                            shots=len(demos), demonstrations=[str(r["id"]) for r in demos], examples=len(order),
                            messages=list(staged.messages), input_prefix=staged.input_prefix, **size))
    return examples, stats, stages

