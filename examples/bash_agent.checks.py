"""The protocol of bash_agent.txt as a checker: ``genpi eval --checker examples/bash_agent.checks.py:protocol``.

A checker file is plain Python: genpi imports it and calls the named function on every reply. The function
returns ``(ok, reason, action)``; the reason is a short label without the reply's text, so the report can count
them; the action says what a passing reply does (``{"action": "bash", "arg": command}``, ``answer`` with its
answer, or ``finish``), which ``genpi eval`` compares with the prompted model's.
"""

import re

_BLANK_LINES = re.compile(r"(?:[ \t]*\n)*")
_THINK = re.compile(r"Think: *(\S[^\n]*)")
_ACT_BASH = re.compile(r"Act: bash\n(?:[ \t]*\n)*```bash\n(.*)\n```", re.DOTALL)
_ACT_ANSWER = re.compile(r"Act: answer\(([^\n]*)\)")
_ACT_FINISH = re.compile(r"Act: finish")


def _same_spacing(text: str) -> str:
    return " ".join(text.split())


def protocol(reply: str) -> tuple:
    """``Think: <reasoning>`` on one line, then exactly one action, with nothing before or after.

    The action is ``Act: bash`` followed by one fenced ```` ```bash ```` block holding a command, or
    ``Act: answer(<bare answer>)``, or ``Act: finish``. Blank lines between ``Think:`` and ``Act:`` and between
    ``Act: bash`` and its block are allowed, as is whitespace around the reply.
    """
    text = reply.strip()
    if not text:
        return False, "empty reply"
    first, _, rest = text.partition("\n")
    if not first.startswith("Think:"):
        return False, "text before Think:" if "Think:" in text else "no Think: line"
    if not _THINK.fullmatch(first):
        return False, "empty Think: line"
    rest = rest[_BLANK_LINES.match(rest).end():]
    if not rest.startswith("Act:"):
        return False, "no Act: line after Think:" if "Act:" not in rest else "text between Think: and Act:"
    act_line = rest.split("\n", 1)[0]
    if act_line.startswith("Act: bash"):
        m = _ACT_BASH.fullmatch(rest)
        if not m:
            if rest.count("```") < 2:
                return False, "Act: bash without a fenced bash block"
            return False, "malformed bash block or text after it"
        command = m.group(1)
        if not command.strip():
            return False, "empty bash command"
        if "```" in command:
            return False, "more than one fenced block"
        return True, "", {"action": "bash", "arg": _same_spacing(command)}
    if act_line.startswith("Act: answer"):
        m = _ACT_ANSWER.fullmatch(rest)
        if not m:
            return False, "malformed answer(...) or text after it"
        if not m.group(1).strip():
            return False, "empty answer()"
        return True, "", {"action": "answer", "arg": _same_spacing(m.group(1))}
    if act_line.startswith("Act: finish"):
        return (True, "", {"action": "finish"}) if _ACT_FINISH.fullmatch(rest) else (False, "text after Act: finish")
    return False, "unknown action (not bash, answer(...) or finish)"
