"""Dropping exact and near-duplicate user inputs.

Two inputs are duplicates when their normalised text is equal, or when the Jaccard similarity of their word
sets or of their character 4-grams reaches a threshold: the synth model often repeats a request with a word
changed or punctuation moved.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Case, width, punctuation and spacing folded away: two inputs that differ only there are the same input."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(norm: str, n: int = 4) -> set[str]:
    s = norm.replace(" ", "_")
    return {s[i : i + n] for i in range(max(1, len(s) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Deduplicator:
    """Keeps the inputs seen so far and says whether a new one adds anything."""

    def __init__(self, word_threshold: float = 0.8, char_threshold: float = 0.85):
        self.word_threshold = word_threshold
        self.char_threshold = char_threshold
        self._seen: list[tuple[str, set, set]] = []

    def _key(self, text: str) -> tuple[str, set, set]:
        norm = normalize(text)
        return norm, set(norm.split()), shingles(norm)

    def is_duplicate(self, text: str) -> bool:
        """Whether ``text`` (or an empty text) repeats, exactly or nearly, an input seen so far."""
        norm, words, chars = self._key(text)
        if not norm:
            return True
        return any(norm == seen_norm or jaccard(words, seen_words) >= self.word_threshold
                   or jaccard(chars, seen_chars) >= self.char_threshold
                   for seen_norm, seen_words, seen_chars in self._seen)

    def add(self, text: str) -> bool:
        """Remember ``text`` and return True if it is new; return False for a duplicate."""
        if self.is_duplicate(text):
            return False
        self._seen.append(self._key(text))
        return True
