"""The protocol of sql_agent.txt as a checker: ``--checker examples/unseen/sql_agent.checks.py:protocol``.

Written from the prompt alone, before any model reply to it was read.
"""

import re

_QUERY = re.compile(r"Plan: *\S[^\n]*\n(?:[ \t]*\n)*Query:[ \t]*\n```sql\n(.*)\n```", re.DOTALL)
_ANSWER = re.compile(r"Plan: *\S[^\n]*\n(?:[ \t]*\n)*Answer: *\S[^\n]*")


def protocol(reply: str) -> tuple[bool, str]:
    """``Plan:`` on one line, then either ``Query:`` with one fenced SELECT, or ``Answer:`` on one line."""
    text = reply.strip()
    if not text:
        return False, "empty reply"
    if not text.startswith("Plan:"):
        return False, "text before Plan:" if "Plan:" in text else "no Plan: line"
    if _ANSWER.fullmatch(text):
        return True, ""
    m = _QUERY.fullmatch(text)
    if not m:
        if "Query:" in text or "```" in text:
            return False, "malformed Query: block or text after it"
        return False, "neither Query: nor Answer: after Plan:"
    statement = m.group(1).strip()
    if "```" in statement:
        return False, "more than one fenced block"
    if not re.match(r"(?i)(select|with)\b", statement):
        return False, "statement is not a SELECT"
    return True, ""
