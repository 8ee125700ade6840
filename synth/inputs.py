"""Step 1: user inputs. Seed inputs first, then one proposal per call from the model playing the user (role swap,
see :func:`genpi.synth.roles.user_messages`, or Magpie-style, :func:`genpi.synth.roles.open_user_turn`), each
screened before it is accepted: by its text, then by the prompted agent's first reply to it (whole, and passing
the prompt's checker when one is given), which becomes the first agent turn of the input's dialogue.

A small model playing the user still slips out of its role: it greets, offers help, copies the prompt's own
sentences, writes the agent's reply or the environment's output, or talks about the list it is making. Each
proposal is checked against the prompt and rejected with a reason (kept in ``inputs.jsonl`` and counted), or
accepted when it is also no duplicate of an input so far (or of a demonstrated task, or of an excluded run).
"""

from __future__ import annotations

import random
import re

from genpi.errors import UserError
from genpi.prompt import AgentPrompt
from genpi.synth import episodes as episodes_
from genpi.synth.dedup import Deduplicator, normalize
from genpi.synth.store import RunStore, stable_id

MAX_WORDS = 150
# Assistant talk: a user does not offer help, apologise for being an AI, or present "a request" it wrote.
_ASSISTANT = re.compile(
    r"\b(how (can|may) i (help|assist)|i(?:'m| am) (here|ready|happy|glad) to (help|assist)|i can help|"
    r"i(?:'d| would) be (happy|glad) to|as an ai|i(?:'m| am) an ai|ai (language )?model|what can i (help|assist)|"
    r"let me know if|how can i be of)\b", re.IGNORECASE)
_LIST_TALK = re.compile(r"^(#+\s|\*\*|(request|task|message|example|question)\s*#?\d+\b|here (is|are)\b|"
                        r"sure[,!.]|certainly[,!.]|of course[,!.])", re.IGNORECASE)
# The agent's voice: a reply to a request (an apology, a refusal, instructions to "you", a presented answer), not one.
_AGENT_VOICE = re.compile(
    r"^(i(?:'m| am) (sorry|afraid|unable|not able)|sorry\b|unfortunately\b|i (cannot|can't|can ?not|won't) "
    r"(help|assist|do|provide|answer|run|execute|access|perform|complete|fulfil)\b|you can\b|you (should|could|need to|may|might|will need to|have to)\b|to (do|achieve|accomplish|solve|fix) "
    r"(this|that|it)\b|here'?s\b|the (following|answer|command|result|output) (is|are|will|would)\b|"
    r"(great|good) question|thank(s| you) for (your|reaching|contacting|asking))", re.IGNORECASE)
_GREETING = re.compile(r"^(hi|hello|hey|dear|greetings|good (morning|afternoon|evening))\b[^.!?,\n]{0,30}([.!?,]|$)\s*",
                       re.IGNORECASE)


def _words(text: str) -> list[str]:
    return normalize(text).split()


class Screen:
    """Says why a proposed input is not a usable request for this prompt, or nothing when it is."""

    def __init__(self, prompt: AgentPrompt, ngram: int = 8):
        self.ngram = ngram
        words = _words(episodes_.instructions(prompt))
        self.prompt_ngrams = {tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}
        self.agent_markers = episodes_.agent_markers(prompt)
        self.env_openers = episodes_.environment_openers(prompt)

    def reason(self, text: str) -> str:
        t = text.strip()
        if not t:
            return "empty"
        lines = [line.strip() for line in t.splitlines() if line.strip()]
        if any(t.startswith(o) for o in self.env_openers):
            return "the environment's reply"
        if any(line.split()[0] in self.agent_markers for line in lines):
            return "the agent's reply"
        words = _words(t)
        if _LIST_TALK.match(t) or t.endswith(":"):
            return "talks about the list"
        if len(words) < 3:
            return "too short"
        if len(words) > MAX_WORDS:
            return "too long"
        letters = sum(ch.isalpha() for ch in t)
        if letters < 0.5 * sum(not ch.isspace() for ch in t):
            return "not text"
        if any(tuple(words[i : i + self.ngram]) in self.prompt_ngrams for i in range(len(words) - self.ngram + 1)):
            return "copies the prompt"
        if _ASSISTANT.search(t):
            return "assistant talk"
        if _AGENT_VOICE.match(t):
            return "the agent's voice"
        if _GREETING.match(t) and len(_words(_GREETING.sub("", t, count=1))) < 3:
            return "greeting only"
        return ""


def leaves_user_role(reply: str, dialogue: list[dict]) -> str:
    """Why the model playing the user (a plain prompt's other side) has left its role in ``reply``, or "": it talks
    as an assistant or in the agent's voice, or repeats a turn of the dialogue so far (the two sides then echo each
    other until ``max_turns``, which teaches the agent nothing)."""
    t = reply.strip()
    if _ASSISTANT.search(t):
        return "assistant talk"
    if _AGENT_VOICE.match(t):
        return "the agent's voice"
    seen = Deduplicator()
    for m in dialogue:
        seen.add(m["content"])
    return "repeats the dialogue" if seen.is_duplicate(t) else ""


def pick_examples(gold: list[str], accepted: list[str], call: int, seed: int, k: int = 4) -> list[str]:
    """The requests shown for one call: up to ``k``, from the demonstrated tasks and seed inputs (``gold``) and the
    inputs accepted so far, chosen by a seeded generator so that calls differ."""
    rng = random.Random(f"{seed}:{call}")
    take_gold = min(len(gold), max(k // 2, k - len(accepted)))
    out = rng.sample(gold, take_gold) + rng.sample(accepted, min(len(accepted), k - take_gold))
    rng.shuffle(out)
    return out


def gather_inputs(syn, store: RunStore, seeds: list[str], excluded: list[str], pool, bars) -> list[str]:
    """Step 1, resumable: seeds (call -1), then rounds of ``concurrency`` proposals, one line per call in
    ``inputs.jsonl``: ``{call, raw, finish_reason, accepted: [{id, index, input}], rejected: [{input, reason}],
    error}``."""
    c, prompt = syn.config, syn.prompt
    done = store.inputs()
    dedup = Deduplicator()
    gold_tasks = [ep.task for ep in episodes_.episodes(prompt) if ep.task]
    for text in [*excluded, *gold_tasks]:
        dedup.add(text)
    inputs = [row["input"] for call in done for row in call["accepted"]]
    syn.first_replies.update({row["input"]: row["reply"] for call in done for row in call["accepted"] if "reply" in row})
    for text in inputs:
        dedup.add(text)
    if seeds and not done:
        # Seed inputs are real user inputs: they come first, as call -1, unscreened.
        accepted, rejected = [], []
        for text in seeds:
            if len(inputs) < c.num_inputs and dedup.add(text):
                accepted.append({"id": stable_id(prompt.hash, "input", len(inputs)), "index": len(inputs), "input": text})
                inputs.append(text)
            else:
                rejected.append({"input": text, "reason": "duplicate" if len(inputs) < c.num_inputs else "over --num-inputs"})
        store.append_input_call({"call": -1, "raw": "", "accepted": accepted, "rejected": rejected})
        done = [{"call": -1}]
    gold = gold_tasks + seeds
    screen = Screen(prompt)
    next_call = max((call["call"] for call in done), default=-1) + 1
    # A small model repeats itself and slips out of its role: allow several proposals per missing input, and stop
    # after rounds that brought nothing new.
    max_calls = next_call + 6 * max(0, c.num_inputs - len(inputs)) + 2 * c.concurrency
    stale = 0
    task = bars.add_task("inputs", total=c.num_inputs, completed=min(len(inputs), c.num_inputs), rate="")
    while len(inputs) < c.num_inputs and next_call < max_calls:
        # About two proposals per missing input (most are accepted), at most --concurrency at once.
        calls = list(range(next_call, next_call + min(c.concurrency, 2 * (c.num_inputs - len(inputs)))))
        shown = {k: pick_examples(gold, inputs, k, c.seed) for k in calls}
        results = list(pool.map(lambda k: syn.propose_input(k, shown[k]), calls))
        # Screened by text and deduplicated in call order, then (in parallel) by the prompted agent's first reply.
        verdicts = {}
        for k, (result, error) in zip(calls, results):
            if result is None:
                continue
            text = result.text.strip()
            reason = "cut off (max_tokens)" if result.finish_reason == "length" else screen.reason(text)
            if not reason and not dedup.add(text):
                reason = "duplicate"
            verdicts[k] = {"reason": reason}
        to_reply = [k for k, v in verdicts.items() if not v["reason"]] if c.screen_by_reply else []
        for k, verdict in zip(to_reply, pool.map(lambda k: syn.screen_reply(results[calls.index(k)][0].text.strip(), k),
                                                 to_reply)):
            verdicts[k] = verdict
        new_total = 0
        for k, (result, error) in zip(calls, results):
            accepted, rejected = [], []
            if result is not None:
                text, verdict = result.text.strip(), verdicts[k]
                reason = verdict["reason"] or ("over --num-inputs" if len(inputs) >= c.num_inputs else "")
                if reason:
                    rejected.append({"input": text, "reason": reason, **({"reply": verdict["reply"]} if "reply" in verdict else {})})
                else:
                    index = len(inputs)
                    row = {"id": stable_id(prompt.hash, "input", index), "index": index, "input": text}
                    if "reply" in verdict:
                        row["reply"] = verdict["reply"]
                        syn.first_replies[text] = verdict["reply"]
                    accepted.append(row)
                    inputs.append(text)
            store.append_input_call({"call": k, "raw": result.text if result else "",
                                     "finish_reason": result.finish_reason if result else "",
                                     "accepted": accepted, "rejected": rejected, "error": error})
            new_total += len(accepted)
        next_call += len(calls)
        errors = [error for _, error in results if error]
        if len(errors) == len(results):
            raise UserError(f"every call proposing user inputs failed ({errors[0]}); they are kept in "
                            f"{store.dir / 'inputs.jsonl'}: fix the server or --synth-model, then rerun to resume")
        stale = stale + 1 if new_total == 0 else 0
        if stale >= 4:
            break
        bars.update(task, completed=min(len(inputs), c.num_inputs))
    bars.update(task, completed=min(len(inputs), c.num_inputs))
    return inputs[: c.num_inputs]


def rejection_counts(store: RunStore) -> dict[str, int]:
    """How many proposals were rejected, by reason (seed duplicates included)."""
    counts: dict[str, int] = {}
    for call in store.inputs():
        for row in call.get("rejected", []):
            reason = row["reason"] if isinstance(row, dict) else "duplicate"
            counts[reason] = counts.get(reason, 0) + 1
    return counts
