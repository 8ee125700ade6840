"""A prompt's demonstrations read as episodes: where each task opens, what its task is, how it ends.

A transcript or chat prompt demonstrates the agent on one or more tasks. An *episode* starts with a user turn that
opens a task (the first user turn, or one that starts with the transcript's input lead-in, e.g. "My problem
is:") and runs to the agent turn before the next opening. The other user turns of an episode are the
environment's replies (e.g. "The output of the OS: ..."). From this structure synthesis takes

* the demonstrated tasks, which show the user side how requests look (step 1, inputs by role swap);
* the instructions without the first task, which tell the user side what the agent is for;
* the **end pattern**: a regular expression matched on an agent turn's last line that says the task is over,
  generalised from the last lines of the episodes' final agent turns (e.g. ``Act: answer(17)`` and ``Act: finish``
  give ``^(?:Act: answer\\(.*|Act: finish)$``), and matching no line of a non-final agent turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from genpi.prompt import AgentPrompt

_DELIMS = re.compile(r"[:(\[{=]")


@dataclass(frozen=True)
class Episode:
    task: str  # the task as the user stated it, without the lead-in or the instructions
    turns: tuple[dict, ...]  # the episode's turns, its opening user turn first


def _label(prefix: str) -> str:
    """The lead-in's last phrase ("Now, I will start ... My problem is:" -> "My problem is:")."""
    parts = re.split(r"(?<=[.!?\n])\s+", prefix.strip())
    return parts[-1].strip() if parts else ""


def _strip_label(text: str, label: str) -> str:
    if label and text.lower().startswith(label.lower()):
        return text[len(label):].strip()
    return text.strip()


def split_first_turn(prompt: AgentPrompt) -> tuple[str, str]:
    """``(instructions, task)`` of the first demonstration user turn.

    A first turn of several paragraphs holds the instructions and, in its last paragraph, the first task
    (AgentBench style); a one-paragraph first turn is the task alone.
    """
    demos = prompt.demonstrations
    if not demos or demos[0]["role"] != "user":
        return "", ""
    text = demos[0]["content"].strip()
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    label = _label(prompt.input_prefix)
    if len(paragraphs) < 2:
        return "", _strip_label(text, label)
    task = _strip_label(paragraphs[-1], label)
    instructions = "\n\n".join(paragraphs[:-1])
    return instructions, task


def episodes(prompt: AgentPrompt) -> list[Episode]:
    """The demonstrations as episodes (empty for a plain system prompt)."""
    demos = prompt.demonstrations
    if not demos:
        return []
    prefix = prompt.input_prefix.strip()
    label = _label(prefix)
    starts = [0]
    for i, m in enumerate(demos[1:], start=1):
        text = m["content"].strip()
        if m["role"] == "user" and prefix and (text.startswith(prefix) or (label and text.startswith(label))):
            starts.append(i)
    out = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(demos)
        turns = tuple(demos[start:end])
        if k == 0:
            task = split_first_turn(prompt)[1]
        else:
            text = turns[0]["content"].strip()
            task = _strip_label(text[len(prefix):] if text.startswith(prefix) else text, label)
        out.append(Episode(task=task, turns=turns))
    return out


def instructions(prompt: AgentPrompt) -> str:
    """What the agent is told, without the demonstrated tasks: the system text and the first turn's instructions."""
    parts = [prompt.system or ""]
    if prompt.demonstrations:
        parts.append(split_first_turn(prompt)[0])
    text = "\n\n".join(p for p in parts if p.strip())
    return text or prompt.text


def environment_openers(prompt: AgentPrompt) -> list[str]:
    """How the environment's demonstrated replies begin (their common first words), e.g. "The output of the OS:"."""
    replies = [m["content"].strip() for ep in episodes(prompt) for m in ep.turns[1:] if m["role"] == "user"]
    firsts = [r.split("\n", 1)[0] for r in replies if r]
    if not firsts:
        return []
    common = firsts[0]
    for f in firsts[1:]:
        n = 0
        while n < min(len(common), len(f)) and common[n] == f[n]:
            n += 1
        common = common[:n]
    common = common.strip()
    return [common] if len(common) >= 4 else []


def environment_opener(prompt: AgentPrompt) -> str:
    """The words the environment's replies start with ("" when the demonstrations show none): what a real
    environment's reply is written after (genpi.environment.reply_text)."""
    return next(iter(environment_openers(prompt)), "")


def agent_markers(prompt: AgentPrompt) -> list[str]:
    """The words the agent's demonstrated lines start with when they are protocol markers ("Think:", "Act:", or
    the opening of a JSON reply): a line starting with one is the agent speaking."""
    lines = [line.strip() for m in prompt.demonstrations if m["role"] == "assistant"
             for line in m["content"].splitlines() if line.strip()]
    return sorted({line.split()[0] for line in lines if line.split()[0].endswith(":") or line[0] in "{["})


def stop_strings(prompt: AgentPrompt) -> dict[str, list[str]]:
    """Where each side's turn is over because it started writing the other side's: the agent at the environment's
    opener or at the lead-in of a new task, the environment at a line that starts with an agent marker. At most
    four each (the OpenAI limit)."""
    label = _label(prompt.input_prefix)
    agent = [*environment_openers(prompt), *([label] if label else [])]
    env = [f"\n{m}" for m in agent_markers(prompt)]
    return {"agent": agent[:4], "env": env[:4]}


def cut_at(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop string (for servers that do not apply ``stop`` themselves)."""
    at = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text[:at].rstrip() if at >= 0 else text


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def derive_end_pattern(prompt: AgentPrompt) -> str:
    """A regex that matches the last line of the demonstrations' final agent turns and of no other agent turn.

    Each final line is generalised to the shortest head, cut just after one of ``: ( [ { =``, that matches no
    line of a non-final agent turn (``Act: answer(17)`` -> ``Act: answer\\(.*``); a line with no such head is
    kept literally. Empty when the demonstrations give nothing to derive from (a plain system prompt, or final
    turns that look like every other turn).
    """
    finals, others = [], []
    for ep in episodes(prompt):
        agent = [m["content"] for m in ep.turns if m["role"] == "assistant"]
        if agent:
            finals.append(_last_line(agent[-1]))
            others += [line.strip() for a in agent[:-1] for line in a.splitlines() if line.strip()]
    alternatives: list[str] = []
    for line in finals:
        if not line:
            continue
        heads = [line[: m.end()] for m in _DELIMS.finditer(line)] + [line]
        for head in heads:
            pattern = re.escape(head) + (".*" if head != line else "")
            if not any(re.fullmatch(pattern, o) for o in others):
                if pattern not in alternatives:
                    alternatives.append(pattern)
                break
    if not alternatives:
        return ""
    return "^(?:" + "|".join(alternatives) + ")$"


def ends_task(reply: str, pattern: str) -> bool:
    """Whether the agent's ``reply`` ends the task: ``pattern`` is found (``re.search``) in its last non-empty line."""
    return bool(pattern) and re.search(pattern, _last_line(reply)) is not None
