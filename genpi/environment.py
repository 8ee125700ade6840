"""The shell environment as an agent meets it: the command in its turn, and the reply it gets back.

Synthesis (``genpi synth --env sandbox``) and task evaluation (``genpi eval --tasks``) both run an agent's commands
in a :class:`genpi.sandbox.Sandbox`; this module is the part they share.

* A turn's **command** is its first fenced code block marked ``bash``, ``sh``, ``shell`` or ``console``, or
  unmarked (as in "Act: bash" followed by a ```` ```bash ```` block); a turn without one runs nothing.
* The **reply** is the prompt's environment opener (e.g. "The output of the OS:", the words its demonstrated
  environment replies start with) and the output, cut to ``max_chars`` with a note, as AgentBench's OS tasks cut
  theirs; the sandbox's own notes (killed at the time or output limit) stay at the end.
* A turn's **answer** is the text a pattern captures in it, by default the inside of the last ``answer(...)``.
"""

from __future__ import annotations

import re

from genpi.sandbox import Action

FENCE = re.compile(r"```[ \t]*(bash|sh|shell|console)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S | re.I)
ANSWER_PATTERN = r"answer\((.*)\)"
TRUNCATED = "[truncated because the output is too long]"


def find_command(reply: str) -> str | None:
    """The command the agent's ``reply`` runs, or None when it runs none."""
    for match in FENCE.finditer(reply):
        command = match.group(2).strip()
        if command:
            return "\n".join(line[2:] if line.startswith("$ ") else line for line in command.splitlines())
    return None


def find_answer(reply: str, pattern: str = ANSWER_PATTERN) -> str | None:
    """What the last line matching ``pattern`` (with one group) captures in ``reply``, or None."""
    regex = re.compile(pattern)
    for line in reversed(reply.strip().splitlines()):
        match = regex.search(line)
        if match:
            return (match.group(1) if regex.groups else match.group(0)).strip()
    return None


def reply_text(action: Action, opener: str, max_chars: int) -> str:
    """The environment's reply to ``action``: ``opener``, then its output cut to ``max_chars``."""
    output = action.output
    if len(output) > max_chars:
        output = output[:max_chars].rstrip("\n") + "\n" + TRUNCATED
    body = "\n".join(part for part in (output.rstrip("\n"), action.note) if part)
    if not opener:
        return body
    return f"{opener}\n{body}" if body else opener
