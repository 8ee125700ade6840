"""Protocol checkers: does one reply follow exactly the output format its prompt demands?

A recipe names its checker (``--checker bash_protocol``). Each checker takes one reply and returns a
:class:`Check` whose ``reason`` is a short, countable label of the first violation found, so a report can say
*how* a system fails, not only how often.

* ``bash_protocol``: the Think:/Act: protocol of ``examples/bash_agent.txt``.
* ``json_shape``: the JSON object of ``examples/support_agent.txt``.
"""

from __future__ import annotations

import json
import re
from typing import Callable, NamedTuple

from genpi.errors import UserError


class Check(NamedTuple):
    ok: bool
    reason: str = ""


# --- bash_protocol

_THINK = re.compile(r"Think: *(\S[^\n]*)")
_ACT_BASH = re.compile(r"Act: bash\n```bash\n(.*)\n```", re.DOTALL)
_ACT_ANSWER = re.compile(r"Act: answer\(([^\n]*)\)")
_ACT_FINISH = re.compile(r"Act: finish")


def bash_protocol(reply: str) -> Check:
    """``Think: <reasoning>`` on one line, then exactly one action, with nothing before or after.

    The action is ``Act: bash`` followed by one fenced ```` ```bash ```` block holding a command, or
    ``Act: answer(<bare answer>)``, or ``Act: finish``. Leading and trailing whitespace of the reply is ignored.
    """
    text = reply.strip()
    if not text:
        return Check(False, "empty reply")
    first, _, rest = text.partition("\n")
    if not first.startswith("Think:"):
        return Check(False, "text before Think:" if "Think:" in text else "no Think: line")
    if not _THINK.fullmatch(first):
        return Check(False, "empty Think: line")
    if not rest.startswith("Act:"):
        return Check(False, "no Act: line after Think:" if "Act:" not in rest else "text between Think: and Act:")
    act_line = rest.split("\n", 1)[0]
    if act_line.startswith("Act: bash"):
        m = _ACT_BASH.fullmatch(rest)
        if not m:
            if rest.count("```") < 2:
                return Check(False, "Act: bash without a fenced bash block")
            return Check(False, "malformed bash block or text after it")
        command = m.group(1)
        if not command.strip():
            return Check(False, "empty bash command")
        if "```" in command:
            return Check(False, "more than one fenced block")
        return Check(True)
    if act_line.startswith("Act: answer"):
        m = _ACT_ANSWER.fullmatch(rest)
        if not m:
            return Check(False, "malformed answer(...) or text after it")
        if not m.group(1).strip():
            return Check(False, "empty answer()")
        return Check(True)
    if act_line.startswith("Act: finish"):
        return Check(True) if _ACT_FINISH.fullmatch(rest) else Check(False, "text after Act: finish")
    return Check(False, "unknown action (not bash, answer(...) or finish)")


# --- json_shape

SUPPORT_KEYS = ("category", "priority", "answer", "escalate")
SUPPORT_CATEGORIES = ("tickets", "refunds", "delays", "accessibility", "lost_property", "other")
SUPPORT_PRIORITIES = ("low", "normal", "high")


class _Pairs(list):
    """An object's (key, value) pairs: keeps the key order and any duplicate keys, which a dict would hide."""


def json_shape(reply: str) -> Check:
    """Exactly one JSON object with the keys category, priority, answer, escalate (in this order) and allowed values.

    ``category`` and ``priority`` must be one of the values the support prompt lists, ``answer`` a non-empty
    string and ``escalate`` a boolean. Code fences or any text around the object fail.
    """
    text = reply.strip()
    if not text:
        return Check(False, "empty reply")
    if text.startswith("```"):
        return Check(False, "code fence around the JSON")
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError:
        try:
            json.JSONDecoder(object_pairs_hook=_Pairs).raw_decode(text[text.find("{"):] if "{" in text else text)
            return Check(False, "text around the JSON object")
        except json.JSONDecodeError:
            return Check(False, "not valid JSON")
    if not isinstance(pairs, _Pairs):
        return Check(False, "JSON is not an object")
    keys = tuple(k for k, _ in pairs)
    if len(set(keys)) != len(keys):
        return Check(False, "duplicate key")
    if set(keys) != set(SUPPORT_KEYS):
        missing, extra = set(SUPPORT_KEYS) - set(keys), set(keys) - set(SUPPORT_KEYS)
        return Check(False, "wrong keys" if missing and extra else "missing key" if missing else "extra key")
    if keys != SUPPORT_KEYS:
        return Check(False, "keys out of order")
    obj = dict(pairs)
    if obj["category"] not in SUPPORT_CATEGORIES:
        return Check(False, "category not allowed")
    if obj["priority"] not in SUPPORT_PRIORITIES:
        return Check(False, "priority not allowed")
    if not isinstance(obj["answer"], str) or not obj["answer"].strip():
        return Check(False, "answer not a non-empty string")
    if not isinstance(obj["escalate"], bool):
        return Check(False, "escalate not a boolean")
    return Check(True)


CHECKERS: dict[str, Callable[[str], Check]] = {"bash_protocol": bash_protocol, "json_shape": json_shape}


def get_checker(name: str) -> Callable[[str], Check]:
    try:
        return CHECKERS[name]
    except KeyError:
        raise UserError(f"unknown checker {name!r}: use one of {', '.join(sorted(CHECKERS))}, or none") from None
