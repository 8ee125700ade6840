"""The systems compared in an evaluation, and the exact context each one sees.

* ``prompted``: the base model with the full prompt (the teacher view): the upper bound.
* ``unprompted``: the base model with the student context and no prompt: the lower bound.
* one system per ``--adapter``: the internalized prompt, with the student context its ``genpi.json`` records.
* one system per ``--baseline``: an adapter trained with another strategy, labelled by that strategy.
* one system per ``--compressed`` rate: the base model with the prompt pruned to that share of its tokens
  (genpi.eval.compression), no training.
* degenerate baselines (``--constant``, genpi.eval.baselines): ``constant`` answers every input with the teacher's
  most frequent reply, ``minimal`` with the shortest teacher reply that passes the checker; no model runs. A metric
  they score well on cannot tell a working adapter from a useless one.

All systems receive the same conversation; only the context before its first turn differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from genpi.adapter import PROMPT_LEARNING, AdapterInfo, read_adapter
from genpi.errors import UserError
from genpi.prompt import AgentPrompt, student_messages


@dataclass
class System:
    """One row of the comparison.

    Attributes:
        name: label in the report.
        kind: ``"prompted"``, ``"unprompted"``, ``"adapter"``, ``"baseline"``, ``"compressed"`` or ``"constant"``.
        adapter: the adapter directory (None for the base model).
        strategy: the training strategy from ``genpi.json``.
        student_context: messages placed before the input when there is no prompt ([] = the template's default).
        info: the adapter's ``genpi.json`` (an empty one for the base systems).
        prompt: the prompt this system is given instead of the evaluated one (a compressed system's).
        details: what describes the system beyond its kind (a compressed system's rates and token counts).
        soft: the adapter is a soft prompt (prompt tuning, KV prefix): it is served in place of the prompt's
            tokens, after the same chat framing, and its virtual tokens are context of every request.
        reply: a constant system's one reply to every input (None for a model).
    """

    name: str
    kind: str
    adapter: str | None = None
    strategy: str | None = None
    student_context: list[dict] = field(default_factory=list)
    info: AdapterInfo = field(default_factory=AdapterInfo)
    prompt: AgentPrompt | None = None
    details: dict = field(default_factory=dict)
    soft: bool = False
    reply: str | None = None

    @property
    def model_free(self) -> bool:
        """A constant system: nothing to time, teacher-force or ask for the prompt back."""
        return self.reply is not None

    def messages(self, prompt: AgentPrompt, turns: list[dict]) -> list[dict]:
        """The chat messages this system is given for ``turns`` (a conversation whose first turn is the bare input).

        The teacher view is the prompt and the input with the prompt's input prefix, as in synthesis; every other
        system sees its student context and the bare input, as in training. A soft prompt's system is given the
        teacher view too, and the prompt's tokens are replaced by the soft prompt (``Generator.request_ids``).
        """
        if self.kind in ("prompted", "compressed") or self.soft:
            head = (self.prompt or prompt).teacher_messages(turns[0]["content"])
        else:
            head = student_messages(turns[0]["content"], self.student_context)
        return head + [{"role": m["role"], "content": m["content"]} for m in turns[1:]]

    def describe(self) -> dict:
        out = {"kind": self.kind, "adapter": self.adapter, "strategy": self.strategy,
               "student_context": self.student_context, **self.details}
        if self.info.too_short:  # genpi train's warning, carried to the report
            out["too_short"] = self.info.too_short
        return out


def adapter_system(path: str | Path, kind: str) -> System:
    """An adapter directory as a system, named ``strategy`` for a baseline and ``strategy:directory`` otherwise."""
    path, peft_config, info = read_adapter(path, "--adapter" if kind == "adapter" else "--baseline")
    strategy = str(info.strategy or "adapter")
    name = strategy if kind == "baseline" else f"{strategy}:{path.name}"
    return System(name=name, kind=kind, adapter=str(path), strategy=strategy, student_context=info.student_context,
                  info=info, soft=peft_config.get("peft_type") in PROMPT_LEARNING)


def build_systems(
    prompt: AgentPrompt, adapters: list[str], baselines: list[str], base_model: str | None = None
) -> tuple[list[System], str]:
    """``prompted``, ``unprompted``, then the adapters and baselines, checked against the prompt and base model.

    ``base_model`` defaults to the first adapter's ``base_model``, else the embedded default. The unprompted
    system uses the adapters' student context (they must agree on it, or the lower bound would be ambiguous);
    without adapters it is the template's default context.

    Returns:
        ``(systems, base_model)``.
    """
    from genpi.models import DEFAULT_MODEL, resolve_model

    trained = [adapter_system(a, "adapter") for a in adapters] + [adapter_system(b, "baseline") for b in baselines]
    base_model = base_model or next((s.info.base_model for s in trained if s.info.base_model), DEFAULT_MODEL)
    for s in trained:
        flag = "--adapter" if s.kind == "adapter" else "--baseline"
        if s.info.prompt_hash and s.info.prompt_hash != prompt.hash:
            raise UserError(
                f"{flag} {s.adapter} was trained for another prompt (hash {s.info.prompt_hash}, {prompt.source} has "
                f"{prompt.hash}): pass the prompt file it was trained on"
            )
        if s.info.base_model and resolve_model(s.info.base_model) != resolve_model(base_model):
            raise UserError(
                f"{flag} {s.adapter} was trained on base model {s.info.base_model!r}, not {base_model!r}: "
                "pass --model with its base model, or evaluate it separately"
            )
    contexts = {json.dumps(s.student_context, sort_keys=True) for s in trained if not s.soft}
    if len(contexts) > 1:
        raise UserError("the adapters were trained with different student contexts (see their genpi.json): evaluate them separately")
    context = next((s.student_context for s in trained if not s.soft), [])
    systems = [System("prompted", "prompted"), System("unprompted", "unprompted", student_context=context)] + trained
    names = [s.name for s in systems]
    for s in systems:  # two adapters from directories or strategies of the same name: make every label unique
        if names.count(s.name) > 1 and s.adapter:
            s.name = f"{s.name} ({Path(s.adapter).parent.name}/{Path(s.adapter).name})"
    if len({s.name for s in systems}) != len(systems):
        raise UserError("two systems have the same name: pass adapters from distinct directories")
    return systems, base_model


def compressed_system(gen, prompt: AgentPrompt, rate: float) -> System:
    """The base model with ``prompt`` pruned to ``rate`` of its tokens by ``gen``'s model (its adapters disabled)."""
    from genpi.eval.compression import compress

    with gen.active(System("compressor", "prompted")):
        c = compress(prompt, gen.model, gen.tokenizer, rate)
    details = {"compression": {"method": "token surprisal, iterative (LLMLingua)", "target_rate": c.target,
                               "achieved_rate": round(c.achieved, 4), "tokens": c.tokens, "kept": c.kept}}
    return System(f"compressed {rate:g}", "compressed", prompt=c.prompt, details=details)
