"""Dropping exact and near-duplicate user inputs.

Two inputs are duplicates when their normalised text is equal, when the Jaccard similarity of their word sets or
of their character 4-grams reaches a threshold (the synth model often repeats a request with a word changed or
punctuation moved), or when the cosine of their TF-IDF vectors (word unigrams and bigrams, IDF over the inputs
seen so far) does: a paraphrase that keeps the request's informative words and changes the common ones. The same
TF-IDF cosine finds the held-out inputs that are near duplicates of training inputs in ``genpi eval``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Case, width, punctuation and spacing folded away: two inputs that differ only there are the same input."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(norm: str, n: int = 4) -> set[str]:
    s = norm.replace(" ", "_")
    return {s[i : i + n] for i in range(max(1, len(s) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def terms(text: str) -> Counter:
    """Word unigrams and bigrams of the normalised text, counted."""
    words = normalize(text).split()
    return Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:])])


def tfidf(docs: list[Counter]) -> list[dict]:
    """Unit TF-IDF vectors of term counts, with the smoothed IDF ``log((1 + n) / (1 + df)) + 1`` over ``docs``."""
    df = Counter(term for d in docs for term in d)
    idf = {term: math.log((1 + len(docs)) / (1 + k)) + 1 for term, k in df.items()}
    out = []
    for d in docs:
        v = {term: count * idf[term] for term, count in d.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        out.append({term: x / norm for term, x in v.items()})
    return out


def cosine(a: dict, b: dict) -> float:
    small, large = (a, b) if len(a) < len(b) else (b, a)
    return sum(x * large.get(term, 0.0) for term, x in small.items())


class Deduplicator:
    """Keeps the inputs seen so far and says whether a new one adds anything (``tfidf_threshold=None``: by their
    text alone, without the TF-IDF cosine)."""

    def __init__(self, word_threshold: float = 0.8, char_threshold: float = 0.85, tfidf_threshold: float | None = 0.7):
        self.word_threshold = word_threshold
        self.char_threshold = char_threshold
        self.tfidf_threshold = tfidf_threshold
        self._seen: list[tuple[str, set, set]] = []
        self._terms: list[Counter] = []

    def _key(self, text: str) -> tuple[str, set, set]:
        norm = normalize(text)
        return norm, set(norm.split()), shingles(norm)

    def is_duplicate(self, text: str) -> bool:
        """Whether ``text`` (or an empty text) repeats, exactly or nearly, an input seen so far."""
        norm, words, chars = self._key(text)
        if not norm:
            return True
        if any(norm == seen_norm or jaccard(words, seen_words) >= self.word_threshold
               or jaccard(chars, seen_chars) >= self.char_threshold
               for seen_norm, seen_words, seen_chars in self._seen):
            return True
        if self.tfidf_threshold is None or not self._terms:
            return False
        *seen, new = tfidf([*self._terms, terms(text)])
        return max(cosine(new, v) for v in seen) >= self.tfidf_threshold

    def add(self, text: str) -> bool:
        """Remember ``text`` and return True if it is new; return False for a duplicate."""
        if self.is_duplicate(text):
            return False
        self._seen.append(self._key(text))
        self._terms.append(terms(text))
        return True
