"""Text fidelity metrics: ROUGE-L F1 and exact match, per reply, as pure functions.

Both compare one reply to one reference and return a score in [0, 1]; a system's figure is the mean over
replies, so that the recovery ratio can bootstrap over the same per-reply scores.
"""

from __future__ import annotations

import re

# Words and single punctuation marks: in protocol replies ("Act: answer(17)") and JSON the punctuation is part of
# the shape, so it counts, unlike in the usual ROUGE tokenizer that drops it.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, in order."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel: one bit per token of ``a`` and one big-integer update per token of ``b`` (Hyyro's recurrence),
    so a prompt of a few thousand tokens is scored in milliseconds instead of the seconds a Python DP table takes.
    """
    if not a or not b:
        return 0
    match: dict = {}
    for i, tok in enumerate(a):
        match[tok] = match.get(tok, 0) | (1 << i)
    n = len(a)
    mask = (1 << n) - 1
    v = mask  # a 0 bit in v marks a position of `a` that ends an extension of the LCS
    for tok in b:
        m = match.get(tok, 0)
        u = v & m
        v = ((v + u) | (v - u)) & mask
    return n - bin(v).count("1")


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) of ``prediction`` against ``reference`` over :func:`tokenize` tokens.

    Two empty texts score 1 (nothing to say, nothing said); one empty text scores 0.
    """
    p, r = tokenize(prediction), tokenize(reference)
    if not p and not r:
        return 1.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two texts are equal up to runs of whitespace (and leading/trailing whitespace), else 0.0."""
    return float(" ".join(prediction.split()) == " ".join(reference.split()))


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
