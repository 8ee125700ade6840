"""The messages each role sees: the user proposing inputs, the agent (teacher and student views), the environment,
and the synth model writing reasons.

The role swap: the user and the environment are models given the *other* side of the conversation, so that a
small model continues a pattern instead of following instructions about one.

* **Inputs**: the model plays the user (role swap), or continues an open user turn after the prompt (Magpie style,
  :func:`open_user_turn`). In the role swap its earlier "own" turns are requests the agent has received (the tasks of
  the prompt's demonstrations, seed inputs, inputs accepted so far), each after the same short question; it
  answers the question once more with a new request.
* **Environment**: for a transcript prompt, the first demonstration episode is replayed with the roles inverted
  (the user/OS turns become its own) and closed by the end marker; the later episodes' environment replies are
  shown in its system message, without the turns that open their tasks, so that it never learns to start a new
  task. For a plain system prompt it is told to act as the user this agent serves, and, when the run has one, it
  replays an exchange of another dialogue of the run (a request, the prompted agent's reply to it) that it closes
  with the end marker: the pattern of a user who stops once answered, which a small model continues where it
  would not follow the instruction alone. The agent's message reaches it verbatim, as its user turn.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from genpi.prompt import AgentPrompt, student_messages
from genpi.synth import episodes as episodes_

_INVERT = {"user": "assistant", "assistant": "user"}
NEXT_REQUEST = "Next request?"
CLOSING_VIEW = "a plain prompt's user view replays a closed exchange"  # in the signature: such runs never mix with older ones


@cache
def template(name: str) -> str:
    return resources.files("genpi.synth").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")


def templates_signature() -> str:
    """Changes when any template's text changes, so a resume never mixes outputs of two template versions."""
    from genpi.synth.store import stable_id

    return stable_id(*(template(n) for n in ("user", "reason", "environment")), NEXT_REQUEST, CLOSING_VIEW)


def describe(prompt: AgentPrompt, max_words: int = 60) -> str:
    """The agent in a sentence or two: the opening of its instructions."""
    text = episodes_.instructions(prompt).strip()
    sentences = re.split(r"(?<=[.!?])\s+", text)
    out = []
    for s in sentences:
        if out and len(" ".join(out + [s]).split()) > max_words:
            break
        out.append(s.strip())
    words = " ".join(out).split()
    return " ".join(words[:max_words])


def user_messages(prompt: AgentPrompt, examples: list[str]) -> list[dict]:
    """The user's view for proposing one input: ``examples`` as its own earlier requests, then the question."""
    messages = [{"role": "system", "content": template("user").strip().format(description=describe(prompt))}]
    for text in examples:
        messages += [{"role": "user", "content": NEXT_REQUEST}, {"role": "assistant", "content": text}]
    return messages + [{"role": "user", "content": NEXT_REQUEST}]


def open_user_turn(prompt: AgentPrompt) -> list[dict]:
    """Magpie-style sampling (Xu et al. 2024, arXiv 2406.08464): the prompt as the agent gets it, then an open user
    turn (empty, or the transcript's lead-in) that the model continues (``continue_final``): what it writes after the
    chat template's user header is a user message to this agent."""
    return prompt.teacher_messages("")[:-1] + [{"role": "user", "content": f"{prompt.input_prefix}\n\n" if prompt.input_prefix else ""}]


def agent_messages(prompt: AgentPrompt, dialogue: list[dict]) -> list[dict]:
    """Teacher view: the prompt, then the dialogue so far (its first turn is the bare user input)."""
    return prompt.teacher_messages(dialogue[0]["content"]) + [dict(m) for m in dialogue[1:]]


def as_is_messages(user_input: str) -> list[dict]:
    """Student view of a single turn: no prompt (the template's default context)."""
    return student_messages(user_input)


def _later_replies(prompt: AgentPrompt) -> str:
    """The environment's replies in the episodes after the first, each after the agent turn it answers."""
    lines = []
    for ep in episodes_.episodes(prompt)[1:]:
        turns = list(ep.turns[1:])  # the opening turn starts a task: never shown to the environment
        for agent, reply in zip(turns, turns[1:]):
            if agent["role"] == "assistant" and reply["role"] == "user":
                lines.append(f"The agent wrote:\n{agent['content']}\nYou replied:\n{reply['content']}")
    return "\n\n".join(lines)


def environment_messages(prompt: AgentPrompt, dialogue: list[dict], end_marker: str,
                         closing: tuple[str, str] | None = None) -> list[dict]:
    """The other side's view: role-play instructions, the inverted first episode (for a plain prompt: the
    ``closing`` exchange, a request and the agent's reply, then the end marker), then the dialogue inverted."""
    eps = episodes_.episodes(prompt)
    replayed: list[dict] = []
    if eps:
        other = "the user and the environment (for example the operating system whose output the agent reads)"
        how = "answer the agent exactly as the user side answers in the demonstrations; when the agent runs an action, reply with its result in the same format."
        # The replayed episode carries the prompt's text already: repeating it would double every call.
        block = f"\nThe agent's instructions and a demonstration follow, with you in the role of {other}."
        if prompt.system:
            block = f"\nThe agent's system prompt, between <prompt> tags:\n\n<prompt>\n{prompt.system}\n</prompt>\n" + block
        later = _later_replies(prompt)
        if later:
            block += f"\n\nMore of your replies from other demonstrations:\n\n{later}"
        replayed = [{"role": _INVERT[m["role"]], "content": m["content"]} for m in eps[0].turns]
        if replayed and replayed[-1]["role"] == "user":  # the episode ended on the agent's turn: the task is over
            replayed.append({"role": "assistant", "content": end_marker})
    else:
        other = "the user"
        how = "reply as this user would, in one or two sentences, following up on the agent's last message."
        block = f"\nThe agent works under this prompt, between <prompt> tags:\n\n<prompt>\n{prompt.text}\n</prompt>"
        if closing:
            request, reply = closing
            replayed = [{"role": "assistant", "content": request}, {"role": "user", "content": reply},
                        {"role": "assistant", "content": end_marker}]
    system = template("environment").format(other=other, how=how, end_marker=end_marker, prompt_block=block)
    messages = [{"role": "system", "content": system}, *replayed]
    first = prompt.teacher_messages(dialogue[0]["content"])[-1]["content"]  # the user side wrote the lead-in too
    messages.append({"role": "assistant", "content": first})
    messages += [{"role": _INVERT[m["role"]], "content": m["content"]} for m in dialogue[1:]]
    return messages


def reason_messages(prompt: AgentPrompt, user_input: str, as_is: str, to_be: str) -> list[dict]:
    text = template("reason").format(prompt=prompt.text, input=user_input, as_is=as_is, to_be=to_be)
    return [{"role": "user", "content": text}]
