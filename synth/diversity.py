"""How varied a run's inputs are: distinct n-grams and nearest-neighbour similarity.

Distinct-n (Li et al. 2016) is the share of a set's word n-grams that are unique; the nearest-neighbour similarity
is, for each input, the highest character 4-gram Jaccard similarity to any other input, averaged (the measure
the deduplicator thresholds, :mod:`genpi.synth.dedup`): near 1 when the inputs repeat one request.
"""

from __future__ import annotations

from genpi.synth.dedup import jaccard, normalize, shingles


def distinct(texts: list[str], n: int) -> float:
    """Unique word n-grams over all word n-grams of ``texts`` (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for words in (normalize(t).split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def nearest_neighbour_similarity(texts: list[str]) -> float | None:
    """Mean over inputs of the character 4-gram Jaccard similarity to the most similar other input."""
    if len(texts) < 2:
        return None
    keys = [shingles(normalize(t)) for t in texts]
    return sum(max(jaccard(a, b) for j, b in enumerate(keys) if j != i) for i, a in enumerate(keys)) / len(keys)


def diversity(texts: list[str]) -> dict:
    nn = nearest_neighbour_similarity(texts)
    return {"distinct_1": round(distinct(texts, 1), 3), "distinct_2": round(distinct(texts, 2), 3),
            "nearest_neighbour_similarity": None if nn is None else round(nn, 3)}
