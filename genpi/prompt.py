"""Prompt files: parsed once into an :class:`AgentPrompt`.

Three kinds of file are accepted:

* plain text: a system prompt;
* a transcript of ``<USER>:`` / ``<AGENT>:`` turns (instructions plus demonstrations, AgentBench style). Text
  before the first marker, if any, is a system message. The transcript ends in an open ``<USER>:`` turn: each
  real input is appended to its text (which may be empty, or a lead-in such as "My problem is:");
* chat JSON: a list of ``{"role": ..., "content": ...}`` with roles ``system``, ``user``, ``assistant``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from genpi.errors import UserError

_TURN = re.compile(r"^<(USER|AGENT)>:[ \t]?", re.MULTILINE)
_ROLES = {"USER": "user", "AGENT": "assistant"}


@dataclass(frozen=True)
class AgentPrompt:
    """An agent's fixed prompt, as the chat messages that precede every real input.

    Attributes:
        messages: the prompt as chat messages (system and/or demonstration turns).
        kind: ``"text"``, ``"transcript"`` or ``"chat"``.
        source: the file it came from, for messages.
        input_prefix: text of the open user turn that each real input is appended to (transcripts only).
    """

    messages: tuple[dict, ...]
    kind: str
    source: str = "<string>"
    input_prefix: str = ""
    _text: str = field(default="", repr=False)

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first["role"] == "system" else None

    @property
    def demonstrations(self) -> list[dict]:
        """The non-system turns: the in-context demonstrations (empty for a plain system prompt)."""
        return [m for m in self.messages if m["role"] != "system"]

    @property
    def text(self) -> str:
        """The prompt's content as one string: what prompt generation learns to reproduce."""
        return self._text or render_transcript(self.messages)

    @property
    def hash(self) -> str:
        payload = json.dumps([list(self.messages), self.input_prefix], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def teacher_messages(self, user_input: str) -> list[dict]:
        """The prompted (teacher, TO-BE) context for one input."""
        content = f"{self.input_prefix}\n\n{user_input}" if self.input_prefix else user_input
        return [dict(m) for m in self.messages] + [{"role": "user", "content": content}]

    def to_dict(self) -> dict:
        """The prompt as stored in ``run.json`` (``from_dict`` reads it back, hash included)."""
        return {"kind": self.kind, "messages": [dict(m) for m in self.messages], "input_prefix": self.input_prefix,
                "text": self.text}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "AgentPrompt":
        """An :class:`AgentPrompt` from :meth:`to_dict`'s output; the text is re-rendered when it is missing."""
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise UserError(f"{source}: the stored prompt has no messages list")
        messages = tuple({"role": m["role"], "content": m["content"]} for m in data["messages"])
        kind, prefix, text = data.get("kind", "chat"), data.get("input_prefix", ""), data.get("text") or ""
        if not text:
            if kind == "text" and len(messages) == 1:
                text = messages[0]["content"]
            else:
                text = render_transcript(messages) + (f"\n\n<USER>: {prefix}" if prefix else "")
        return cls(messages=messages, kind=kind, source=source, input_prefix=prefix, _text=text)

    def token_length(self, tokenizer) -> int:
        """Tokens the prompt adds to every request under ``tokenizer``'s chat template."""
        with_prompt = tokenizer.apply_chat_template(self.teacher_messages("x"), tokenize=True)
        without = tokenizer.apply_chat_template(student_messages("x"), tokenize=True)
        return len(_ids(with_prompt)) - len(_ids(without))


def shared_head(tokenizer, messages_for) -> tuple[str, list[int]]:
    """The rendered text every request starts with, whatever its input, and its token ids as the model has them.

    ``messages_for(x)`` gives the chat messages for input ``x``. The ids are those the requests for two different
    inputs share, cut at a token boundary: the model's own tokens, which the text alone, tokenized again, may not
    give back (a lead-in's closing blank line is one token on its own and two before an input).
    """
    a, b = (tokenizer.apply_chat_template(messages_for(x), tokenize=False, add_generation_prompt=True)
            for x in ("a", "b"))
    ids_a, ids_b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (a, b))
    n = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
    head = tokenizer.decode(ids_a[:n])
    if a.startswith(head):
        return head, list(ids_a[:n])
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))  # no clean round trip
    return a[:n], tokenizer(a[:n], add_special_tokens=False)["input_ids"]


def prompted_head(tokenizer, prompt: AgentPrompt) -> tuple[str, list[int]]:
    """The prompted requests' :func:`shared_head`: what a soft prompt stands in for (``prompt_tuning``,
    ``kv_prefix``), and what a server caching the prompt computes once. The head's ids followed by the tokens of
    the rest of the rendered text are the teacher's."""
    return shared_head(tokenizer, prompt.teacher_messages)


def student_messages(user_input: str, context: list[dict] | None = None) -> list[dict]:
    """The unprompted (student, AS-IS) context for one input: ``context`` (default none) then the input.

    With no context, a chat template may insert its own default system message (SmolLM2 does); training and
    inference must use the same context, which is why it is recorded with every adapter.
    """
    return [dict(m) for m in (context or [])] + [{"role": "user", "content": user_input}]


# --- prompt generation: the question training asks (GenPI's prompt-generation view) and eval asks again
# (prompt reconstruction), and the answer it expects: the prompt's text, then the reason.

PG_QUESTION = """Write the prompt that makes an assistant answer as in TO-BE instead of AS-IS, then explain why.

Input:
{input}

AS-IS (the answer without the prompt):
{as_is}

TO-BE (the answer with the prompt):
{to_be}"""
_REASON_MARK = "Reason:"


def pg_question(user_input: str, as_is: str, to_be: str) -> str:
    """The prompt-generation user turn for one input and its answers without (AS-IS) and with (TO-BE) the prompt."""
    return PG_QUESTION.format(input=user_input, as_is=as_is, to_be=to_be)


def pg_answer(prompt_text: str, reason: str) -> str:
    """The prompt-generation target: the prompt's text, then ``Reason: ...`` when there is a reason."""
    return f"{prompt_text}\n\n{_REASON_MARK} {reason}" if reason else prompt_text


def strip_reason(reply: str) -> str:
    """A prompt-generation reply without its trailing ``Reason: ...`` part."""
    cut = reply.rfind("\n" + _REASON_MARK)
    return (reply[:cut] if cut >= 0 else reply).strip()


def _ids(rendered) -> list[int]:
    if isinstance(rendered, dict) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return list(rendered)


def render_transcript(messages) -> str:
    """Messages as a ``<USER>:``/``<AGENT>:`` transcript (system text first)."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"])
        else:
            parts.append(f"<{'USER' if m['role'] == 'user' else 'AGENT'}>: {m['content']}")
    return "\n\n".join(parts)


def parse_prompt(text: str, source: str = "<string>") -> AgentPrompt:
    """Parse prompt text of any of the three kinds (see the module docstring)."""
    if not text.strip():
        raise UserError(f"prompt file {source} is empty: write the agent's system prompt or transcript in it")
    stripped = text.strip()
    if re.match(r"\[\s*[{\]]", stripped):  # a JSON list of objects (or an empty one)
        return _parse_chat(stripped, source)
    if _TURN.search(text):
        return _parse_transcript(text, source)
    return AgentPrompt(messages=({"role": "system", "content": stripped},), kind="text", source=source, _text=stripped)


def load_prompt(path: str | Path) -> AgentPrompt:
    """Read and parse a prompt file, with a one-line error for a missing, binary or undecodable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist: pass --prompt with the path of a text file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise UserError(f"prompt file {path} is binary: pass a UTF-8 text, transcript or chat JSON file")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not text
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not valid UTF-8 (byte {e.start}): re-save it as UTF-8") from None
    return parse_prompt(text, source=str(path))


def _parse_transcript(text: str, source: str) -> AgentPrompt:
    matches = list(_TURN.finditer(text))
    messages: list[dict] = []
    prefix = ""
    preamble = text[: matches[0].start()].strip()
    if preamble:
        messages.append({"role": "system", "content": preamble})
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        role, content = _ROLES[m.group(1)], text[m.end() : end].strip()
        line = text.count("\n", 0, m.start()) + 1
        if i == len(matches) - 1 and role == "user":
            prefix = content  # the open user turn at the end: each real input is appended to it
            break
        if not content:
            raise UserError(f"prompt file {source}, line {line}: empty <{m.group(1)}> turn; write its text or remove it")
        if messages and messages[-1]["role"] == role:
            raise UserError(
                f"prompt file {source}, line {line}: two <{m.group(1)}> turns in a row; "
                "turns must alternate between <USER>: and <AGENT>:"
            )
        if not [x for x in messages if x["role"] != "system"] and role == "assistant":
            raise UserError(f"prompt file {source}, line {line}: the transcript must start with a <USER>: turn")
        messages.append({"role": role, "content": content})
    if messages and messages[-1]["role"] == "user":
        raise UserError(f"prompt file {source}: two <USER> turns in a row at the end; turns must alternate")
    return AgentPrompt(
        messages=tuple(messages), kind="transcript", source=source, input_prefix=prefix, _text=text.strip()
    )


def _parse_chat(text: str, source: str) -> AgentPrompt:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"prompt file {source} looks like chat JSON but does not parse ({e.msg}, line {e.lineno})") from None
    messages = []
    for i, m in enumerate(data):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise UserError(
                f"prompt file {source}: message {i} must be {{\"role\": system|user|assistant, \"content\": text}}"
            )
        if not m["content"].strip():
            raise UserError(f"prompt file {source}: message {i} has empty content")
        messages.append({"role": m["role"], "content": m["content"]})
    if not messages:
        raise UserError(f"prompt file {source} is an empty chat list: add at least a system message")
    if messages[-1]["role"] == "user":
        raise UserError(f"prompt file {source}: the last message is a user turn; the real input takes that place")
    return AgentPrompt(messages=tuple(messages), kind="chat", source=source)
