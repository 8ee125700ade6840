"""Degenerate baselines and reference rows: what a useless system scores, and what the teacher's data scores.

A metric is only evidence if a degenerate system cannot pass it. Every report therefore carries:

* ``constant``: one reply to every input, the teacher's most frequent reply on the training run (ties: the reply
  closest to all the others by ROUGE-L, the medoid). Without a training run, the most frequent of this run's
  prompted replies, which flatters the constant: it has seen the references.
* ``minimal``: the shortest teacher reply of the same source that passes the checker: the least a reply must do
  to pass the format.
* reference rows: the checker's pass rate on the training targets (the agent turns trained on), the prompted
  model's pass rate on its replies that were not cut off at the token limit, and how many held-out inputs are near
  duplicates of training inputs by TF-IDF cosine (paraphrases that word-set Jaccard lets through).
"""

from __future__ import annotations

from collections import Counter

from genpi.eval.metrics import rouge_l
from genpi.eval.systems import System
from genpi.synth.dedup import cosine, terms, tfidf

FORMAT_ONLY = 0.5  # a checker the constant passes on at least this share of inputs tests format only
NEAR_DUPLICATE = 0.8  # TF-IDF cosine at or above which a held-out input counts as a training input's paraphrase


def _same(text: str) -> str:
    return " ".join(text.split())


def teacher_replies(records: list[dict]) -> list[str]:
    """The teacher's first reply to each record's input (its TO-BE, else its dialogue's first agent turn)."""
    out = []
    for r in records:
        reply = r.get("to_be") or next((m["content"] for m in r.get("dialogue") or [] if m["role"] == "assistant"), "")
        if reply.strip():
            out.append(reply.strip())
    return out


def training_targets(records: list[dict]) -> list[str]:
    """Every agent turn of the training dialogues: what the behaviour loss teaches."""
    return [m["content"] for r in records if r.get("finish") != "error"
            for m in r.get("dialogue") or [] if m["role"] == "assistant" and m["content"].strip()]


def most_frequent(replies: list[str], sample: int = 200) -> str | None:
    """The most frequent reply (up to spacing); among equally frequent ones, the medoid by ROUGE-L."""
    if not replies:
        return None
    counts = Counter(_same(r) for r in replies)
    top = max(counts.values())
    tied = [r for r in dict.fromkeys(_same(r) for r in replies) if counts[r] == top][:sample]
    if len(tied) == 1:
        return next(r for r in replies if _same(r) == tied[0])
    pool = [_same(r) for r in replies][:sample]
    best = max(tied, key=lambda r: sum(rouge_l(r, o) for o in pool))
    return next(r for r in replies if _same(r) == best)


def constant_systems(replies: list[str], checker, source: str) -> list[System]:
    """``constant`` and, when a checker is given and another reply is shorter, ``minimal``."""
    out = []
    constant = most_frequent(replies)
    if constant is None:
        return out
    out.append(System("constant", "constant", reply=constant,
                      details={"reply": constant, "source": source, "rule": "the teacher's most frequent reply"}))
    if checker:
        passing = sorted((r for r in replies if checker(r).ok), key=len)
        if passing and _same(passing[0]) != _same(constant):
            out.append(System("minimal", "constant", reply=passing[0], details={
                "reply": passing[0], "source": source, "rule": "the teacher's shortest reply that passes the checker"}))
    return out


def format_only(scores: dict, systems: list[System], metric: str = "protocol") -> list[str]:
    """The constant systems that pass ``metric``'s checker on at least :data:`FORMAT_ONLY` of the inputs."""
    return [s.name for s in systems if s.model_free and metric in scores.get(s.name, {})
            and scores[s.name][metric] and sum(scores[s.name][metric]) / len(scores[s.name][metric]) >= FORMAT_ONLY]


# --- near duplicates by TF-IDF cosine


def near_duplicates(held: list[str], train: list[str], threshold: float = NEAR_DUPLICATE) -> list[dict]:
    """Held-out inputs whose TF-IDF cosine (word unigrams and bigrams, smoothed IDF over both sets, as synthesis
    deduplicates) to some training input reaches ``threshold``: ``[{"index", "similarity", "training_input"}]``,
    in held-out order."""
    vectors = tfidf([terms(t) for t in held + train])
    held_v, train_v = vectors[: len(held)], vectors[len(held):]
    out = []
    for i, h in enumerate(held_v):
        best, best_j = 0.0, -1
        for j, t in enumerate(train_v):
            sim = cosine(h, t)
            if sim > best:
                best, best_j = sim, j
        if best_j >= 0 and best >= threshold:
            out.append({"index": i, "similarity": round(best, 4), "training_input": train[best_j]})
    return out
