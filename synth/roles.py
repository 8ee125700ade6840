"""The messages each role sees: the synth model, the agent (teacher and student views) and the environment.

The role swap: the environment is a model given the *other* side of the conversation. For a transcript prompt,
the demonstrations are replayed with the roles inverted (the user/OS turns become its own), so it learns from
them how the user side answers; for a plain system prompt it is told to act as the user this agent serves. The
agent's message reaches the environment verbatim, as its user turn.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from genpi.prompt import AgentPrompt, student_messages

_INVERT = {"user": "assistant", "assistant": "user"}


@cache
def template(name: str) -> str:
    return resources.files("genpi.synth").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")


def templates_signature() -> str:
    """Changes when any template's text changes, so a resume never mixes outputs of two template versions."""
    from genpi.synth.store import stable_id

    return stable_id(*(template(n) for n in ("inputs", "reason", "environment")))


def inputs_messages(prompt: AgentPrompt, n: int, examples: list[str]) -> list[dict]:
    """Ask the synth model for ``n`` new user inputs, showing ``examples`` (seeds or earlier inputs)."""
    shown = ""
    if examples:
        listed = "\n".join(f"{i + 1}. {e}" for i, e in enumerate(examples))
        shown = f"Requests users have already sent (do not repeat them):\n{listed}\n\n"
    first = len(examples) + 1
    text = template("inputs").format(prompt=prompt.text, examples=shown, n=n, first=first, last=first + n - 1)
    return [{"role": "user", "content": text}]


def parse_inputs(text: str) -> list[str]:
    """One candidate input per non-empty line, with list numbering, bullets and quotes removed."""
    import re

    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip().strip('"“”').strip()
        # Headers ("Here are the requests:") and fragments are the model talking about the list, not items of it.
        if len(line) <= 600 and len(line.split()) >= 3 and not line.endswith(":"):
            out.append(line)
    return out


def agent_messages(prompt: AgentPrompt, dialogue: list[dict]) -> list[dict]:
    """Teacher view: the prompt, then the dialogue so far (its first turn is the bare user input)."""
    return prompt.teacher_messages(dialogue[0]["content"]) + [dict(m) for m in dialogue[1:]]


def as_is_messages(user_input: str) -> list[dict]:
    """Student view of a single turn: no prompt (the template's default context)."""
    return student_messages(user_input)


def environment_messages(prompt: AgentPrompt, dialogue: list[dict], end_marker: str) -> list[dict]:
    """The other side's view: role-play instructions, inverted demonstrations, then the dialogue inverted."""
    if prompt.demonstrations:
        other = "the user and the environment (for example the operating system whose output the agent reads)"
        how = "answer the agent exactly as the user side answers in the demonstrations that follow; when the agent runs an action, reply with its result in the same format."
        # The inverted demonstrations carry the prompt's text already: repeating it would double every call.
        block = f"\nThe agent's instructions and examples follow, with you in the role of {other}."
        if prompt.system:
            block = f"\nThe agent's system prompt, between <prompt> tags:\n\n<prompt>\n{prompt.system}\n</prompt>\n" + block
    else:
        other = "the user"
        how = "reply as this user would, in one or two sentences, following up on the agent's last message."
        block = f"\nThe agent works under this prompt, between <prompt> tags:\n\n<prompt>\n{prompt.text}\n</prompt>"
    system = template("environment").format(other=other, how=how, end_marker=end_marker, prompt_block=block)
    messages = [{"role": "system", "content": system}]
    messages += [{"role": _INVERT[m["role"]], "content": m["content"]} for m in prompt.demonstrations]
    first = prompt.teacher_messages(dialogue[0]["content"])[-1]["content"]  # the user side wrote the lead-in too
    messages.append({"role": "assistant", "content": first})
    messages += [{"role": _INVERT[m["role"]], "content": m["content"]} for m in dialogue[1:]]
    return messages


def reason_messages(prompt: AgentPrompt, user_input: str, as_is: str, to_be: str) -> list[dict]:
    text = template("reason").format(prompt=prompt.text, input=user_input, as_is=as_is, to_be=to_be)
    return [{"role": "user", "content": text}]
