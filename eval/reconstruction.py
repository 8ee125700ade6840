"""Prompt reconstruction: can a system, asked in the prompt-generation format, write the prompt back?

The question is the exact user turn of the prompt-generation training view (``genpi.data.PG_USER``: Input,
AS-IS and TO-BE), in the system's student context. The training target is the prompt's text followed by
``Reason: ...``; the reason is cut off the reply and the rest is scored by ROUGE-L against the real prompt text.
"""

from __future__ import annotations

from genpi.data import PG_ASSISTANT, PG_USER
from genpi.eval.metrics import rouge_l

# What separates the prompt from the reason in the target: "\n\nReason: " in PG_ASSISTANT.
_REASON_MARK = PG_ASSISTANT.format(prompt="", reason="").strip()


def question(user_input: str, as_is: str, to_be: str) -> str:
    """The prompt-generation user turn for one input and its two answers."""
    return PG_USER.format(input=user_input, as_is=as_is, to_be=to_be)


def strip_reason(reply: str) -> str:
    """The reply without its trailing ``Reason: ...`` part (the prompt is all that is scored)."""
    cut = reply.rfind("\n" + _REASON_MARK)
    return (reply[:cut] if cut >= 0 else reply).strip()


def reconstruction_score(reply: str, prompt_text: str) -> float:
    """ROUGE-L F1 of the reply (reason removed) against the prompt's text."""
    return rouge_l(strip_reason(reply), prompt_text)
