"""The rules of support_persona.txt as a checker: ``--checker examples/unseen/support_persona.checks.py:protocol``.

Written from the prompt alone, before any model reply to it was read. Sentences are counted roughly (runs of
text ending in . ! or ?), which is enough to tell a short reply from an essay.
"""

import re

_SIGN_OFF = "— Milo, Quillnote Support"
_SENTENCE = re.compile(r"[^.!?]*[A-Za-z][^.!?]*[.!?]")


def protocol(reply: str) -> tuple[bool, str]:
    """Ends with the sign-off line; at most five sentences before it; no Markdown headings or bullet lists."""
    text = reply.strip()
    if not text:
        return False, "empty reply"
    if not text.endswith(_SIGN_OFF):
        return False, "no sign-off at the end"
    body = text[: -len(_SIGN_OFF)].strip()
    if not body:
        return False, "sign-off only"
    if re.search(r"(?m)^\s*(#|[-*•] |\d+\. )", body):
        return False, "Markdown heading or list"
    if len(_SENTENCE.findall(body)) > 5:
        return False, "more than five sentences"
    return True, ""
