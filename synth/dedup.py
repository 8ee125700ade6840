"""Dropping exact and near-duplicate user inputs.

Two inputs are duplicates when their normalised text is equal, or when the Jaccard similarity of their word
sets or of their character 4-grams reaches a threshold: the synth model often repeats a request with a word
changed or punctuation moved.
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def _shingles(norm: str, n: int = 4) -> set[str]:
    s = norm.replace(" ", "_")
    return {s[i : i + n] for i in range(max(1, len(s) - n + 1))}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Deduplicator:
    """Keeps the inputs seen so far and says whether a new one adds anything."""

    def __init__(self, word_threshold: float = 0.8, char_threshold: float = 0.85):
        self.word_threshold = word_threshold
        self.char_threshold = char_threshold
        self._seen: list[tuple[str, set, set]] = []

    def add(self, text: str) -> bool:
        """Remember ``text`` and return True if it is new; return False for a duplicate."""
        norm = normalize(text)
        if not norm:
            return False
        words, chars = set(norm.split()), _shingles(norm)
        for seen_norm, seen_words, seen_chars in self._seen:
            if norm == seen_norm or _jaccard(words, seen_words) >= self.word_threshold:
                return False
            if _jaccard(chars, seen_chars) >= self.char_threshold:
                return False
        self._seen.append((norm, words, chars))
        return True
