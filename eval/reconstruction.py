"""Prompt reconstruction: can a system, asked in the prompt-generation format, write the prompt back?

The question is the exact user turn of the prompt-generation training view (``genpi.prompt.pg_question``: Input,
AS-IS and TO-BE), in the system's student context. The training target is the prompt's text followed by
``Reason: ...``; the reason is cut off the reply and the rest is scored by ROUGE-L against the real prompt text.
"""

from __future__ import annotations

from genpi.eval.metrics import rouge_l
from genpi.prompt import strip_reason


def reconstruction_score(reply: str, prompt_text: str) -> float:
    """ROUGE-L F1 of the reply (reason removed) against the prompt's text."""
    return rouge_l(strip_reason(reply), prompt_text)
