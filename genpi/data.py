"""Training views of synthesis records: token ids with labels on exactly the tokens a view supervises.

A record (one line of a run's ``records.jsonl``) holds an input, the AS-IS and TO-BE answers, a reason and a
role-swapped dialogue. Three views are built from it:

* *behaviour*: the dialogue in the student context (no prompt), labels on the agent turns only, each with its
  end-of-turn token, so the student learns to stop;
* *teacher*: the same dialogue after the prompt, for the KL term; its supervised ids equal the behaviour view's;
* *prompt generation*: user = Input + AS-IS + TO-BE, assistant = the prompt's content and the reason. Its target
  is never truncated: a ``max_length`` that cannot hold it is a :class:`UserError` before training starts.

Labels come from the rendered chat template, not from ``{% generation %}`` markers (SmolLM2's template has none):
the text is cut where each agent turn starts and ends, each piece is tokenized on its own, and only the agent
pieces are labelled. Tokenizing the context before an agent turn on its own gives the very ids the model sees at
inference, when it is prompted with that context and a generation prompt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from genpi.errors import UserError
from genpi.prompt import AgentPrompt, load_prompt, render_transcript, student_messages

IGNORE = -100
BEHAVIOUR, PROMPT_GENERATION = 0, 1

PG_USER = """Write the prompt that makes an assistant answer as in TO-BE instead of AS-IS, then explain why.

Input:
{input}

AS-IS (the answer without the prompt):
{as_is}

TO-BE (the answer with the prompt):
{to_be}"""
PG_ASSISTANT = "{prompt}\n\nReason: {reason}"
_CUT = " [...]"


# --- the run directory


def prompt_of_run(info: dict) -> AgentPrompt:
    """The run's prompt: the original file when it is still there unchanged, else rebuilt from ``run.json``.

    The file is preferred because it keeps the prompt's exact text (what prompt generation learns to write); the
    rebuilt prompt renders a transcript from its messages.
    """
    path, expected = info.get("prompt_path"), info.get("prompt_hash")
    if path and Path(path).is_file():
        prompt = load_prompt(path)
        if prompt.hash == expected:
            return prompt
    stored = info.get("prompt")
    if not isinstance(stored, dict) or not isinstance(stored.get("messages"), list):
        raise UserError("run.json has no prompt messages and its prompt file is gone or changed: rerun `genpi synth`")
    messages = tuple({"role": m["role"], "content": m["content"]} for m in stored["messages"])
    prefix = stored.get("input_prefix", "")
    text = stored.get("text") or ""
    if not text:
        if stored.get("kind") == "text" and len(messages) == 1:
            text = messages[0]["content"]
        else:
            text = render_transcript(messages) + (f"\n\n<USER>: {prefix}" if prefix else "")
    prompt = AgentPrompt(messages=messages, kind=stored.get("kind", "chat"), source=str(path or "run.json"),
                         input_prefix=prefix, _text=text)
    if expected and prompt.hash != expected:
        raise UserError(f"the prompt in run.json does not match its prompt_hash {expected}: the run directory is damaged")
    return prompt


def load_training_run(run_dir: str | Path) -> tuple[dict, AgentPrompt, list[dict]]:
    """``(run_info, prompt, records)`` of a synthesis run directory, records in their stored order."""
    from genpi.synth.store import load_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--data {run_dir} is not a directory: pass the run directory written by `genpi synth --out`")
    info, records = load_run(run_dir)
    return info, prompt_of_run(info), records.to_list()


def usable(record: dict) -> bool:
    """A record trains only when its synthesis finished and the agent spoke at least once."""
    return record.get("finish") != "error" and any(m.get("role") == "assistant" for m in record.get("dialogue") or [])


def parse_context(text: str) -> list[dict]:
    """The student context given as a JSON list of messages ('' means none)."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--student-context is not JSON ({e.msg}): pass a list like '[{{\"role\": \"system\", \"content\": \"...\"}}]'") from None
    ok = isinstance(data, list) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in data
    )
    if not ok or (data and data[-1]["role"] == "user"):
        raise UserError("--student-context must be a JSON list of {role, content} messages that does not end with a user turn")
    return [{"role": m["role"], "content": m["content"]} for m in data]


# --- rendering with labels


def eot_text(tokenizer) -> str | None:
    """The text of the token that ends an agent turn (SmolLM2: ``<|im_end|>``)."""
    return tokenizer.eos_token


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_with_labels(tokenizer, messages: list[dict], supervise_from: int = 0) -> tuple[list[int], list[int]]:
    """Token ids of a chat and labels on the assistant messages at index ``supervise_from`` or later.

    Each supervised span runs from the first token of the assistant's content to its end-of-turn token inclusive;
    everything else (system, user turns, role headers, earlier assistant turns) is ``IGNORE``.
    """
    full = _render(tokenizer, messages)
    eot = eot_text(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < supervise_from:
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError(
                f"the chat template of {getattr(tokenizer, 'name_or_path', 'this model')} does not render a "
                "conversation as its turns one after another, so agent turns cannot be masked: use a model whose "
                "template only appends turns"
            )
        end = through.rfind(eot, len(before)) if eot else -1
        end = end + len(eot) if end >= 0 else len(through.rstrip())
        spans.append((len(before), end))
    ids, labels, pos = [], [], 0
    for start, end in spans:
        for text, supervised in ((full[pos:start], False), (full[start:end], True)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if supervised else [IGNORE] * len(piece)
        pos = end
    tail = tokenizer(full[pos:], add_special_tokens=False)["input_ids"] if full[pos:] else []
    return ids + tail, labels + [IGNORE] * len(tail)


def supervised_ids(ids: list[int], labels: list[int]) -> list[int]:
    return [t for t, lab in zip(ids, labels) if lab != IGNORE]


# --- the three views


def _first_turns(record: dict, prompt: AgentPrompt) -> tuple[str, str]:
    """The first user turn as the student sees it (the bare input) and as the teacher sees it (with the prefix).

    The prefix of a transcript's open user turn belongs to the prompt: the internalized student gets the bare
    input at inference, so it is trained on the bare input too.
    """
    bare = record["input"]
    prefixed = prompt.teacher_messages(bare)[-1]["content"]
    first = record["dialogue"][0]
    if first.get("role") != "user" or first.get("content") not in (bare, prefixed):
        raise UserError(f"record {record.get('id')}: the dialogue must start with the user input; rerun `genpi synth`")
    return bare, prefixed


def _agent_turns(record: dict) -> int:
    return sum(1 for m in record["dialogue"] if m["role"] == "assistant")


def _dialogue_upto(record: dict, turns: int) -> list[dict]:
    """The dialogue after its first user turn, cut after the ``turns``-th agent turn."""
    out, seen = [], 0
    for m in record["dialogue"][1:]:
        out.append({"role": m["role"], "content": m["content"]})
        seen += m["role"] == "assistant"
        if seen == turns:
            break
    return out


def behaviour_messages(record: dict, prompt: AgentPrompt, context: list[dict], turns: int) -> list[dict]:
    bare, _ = _first_turns(record, prompt)
    return student_messages(bare, context) + _dialogue_upto(record, turns)


def teacher_messages(record: dict, prompt: AgentPrompt, turns: int) -> list[dict]:
    _, prefixed = _first_turns(record, prompt)
    return [dict(m) for m in prompt.messages] + [{"role": "user", "content": prefixed}] + _dialogue_upto(record, turns)


def fit_dialogue(tokenizer, record, prompt, context, max_length, with_prompt=False):
    """The longest prefix of the dialogue (whole agent turns) that fits ``max_length``.

    Returns ``(ids, labels, turns)``, or ``None`` when not even the first agent turn fits. With ``with_prompt``
    the prompt stays in the context (the *prepend* baseline) and its own demonstration turns are not supervised.
    """
    for turns in range(_agent_turns(record), 0, -1):
        if with_prompt:
            messages = teacher_messages(record, prompt, turns)
            ids, labels = render_with_labels(tokenizer, messages, supervise_from=len(prompt.messages) + 1)
        else:
            messages = behaviour_messages(record, prompt, context, turns)
            ids, labels = render_with_labels(tokenizer, messages, supervise_from=len(context) + 1)
        if len(ids) <= max_length:
            return ids, labels, turns
    return None


def teacher_view(tokenizer, record, prompt, turns) -> tuple[list[int], list[int]]:
    """The dialogue's first ``turns`` agent turns after the prompt; never truncated (no gradient flows through it)."""
    messages = teacher_messages(record, prompt, turns)
    return render_with_labels(tokenizer, messages, supervise_from=len(prompt.messages) + 1)


def pg_messages(record: dict, prompt: AgentPrompt, context: list[dict], as_is: str, to_be: str) -> list[dict]:
    user = PG_USER.format(input=record["input"], as_is=as_is, to_be=to_be)
    reason = (record.get("reason") or "").strip()
    target = PG_ASSISTANT.format(prompt=prompt.text, reason=reason) if reason else prompt.text
    return [dict(m) for m in context] + [{"role": "user", "content": user}, {"role": "assistant", "content": target}]


def prompt_generation_view(tokenizer, record, prompt, context, max_length) -> tuple[list[int], list[int]]:
    """Input, AS-IS and TO-BE in, the prompt and the reason out.

    When the example is too long, AS-IS and TO-BE (context, not target) are shortened, the longer first; when even
    empty ones leave no room for the whole target, a :class:`UserError` says how long ``max_length`` must be.
    """
    as_is, to_be = record.get("as_is") or "", record.get("to_be") or ""
    for _ in range(8):
        ids, labels = render_with_labels(tokenizer, pg_messages(record, prompt, context, as_is, to_be), len(context) + 1)
        over = len(ids) - max_length
        if over <= 0:
            return ids, labels
        if not as_is and not to_be:
            break
        as_is_ids = tokenizer(as_is, add_special_tokens=False)["input_ids"]
        to_be_ids = tokenizer(to_be, add_special_tokens=False)["input_ids"]
        cut = over + len(tokenizer(_CUT, add_special_tokens=False)["input_ids"]) + 1
        if len(as_is_ids) >= len(to_be_ids):
            as_is = _shorten(tokenizer, as_is_ids, cut)
        else:
            to_be = _shorten(tokenizer, to_be_ids, cut)
    needed = len(render_with_labels(tokenizer, pg_messages(record, prompt, context, "", ""), len(context) + 1)[0])
    raise UserError(
        f"--max-length {max_length} cannot hold the prompt-generation target of record {record.get('id')} "
        f"(even with AS-IS and TO-BE left out, its example needs {needed} tokens): raise --max-length above "
        f"{needed} (AS-IS and TO-BE get what is left), or train without prompt generation (--w-pg 0, or "
        "--strategy seqkd)"
    )


def _shorten(tokenizer, ids: list[int], cut: int) -> str:
    keep = max(0, len(ids) - cut)
    return tokenizer.decode(ids[:keep]) + _CUT if keep else ""


# --- the training set


@dataclass
class ViewStats:
    """What became of the records: shown in the summary and written to ``genpi.json``."""

    records: int = 0
    used: int = 0
    skipped_error: int = 0
    skipped_too_long: int = 0
    cut_turns: int = 0
    prepended: int = 0
    tokens: dict = field(default_factory=lambda: {"behaviour": 0, "prompt_generation": 0})


def _rank(seed: int, record_id: str) -> str:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


def build_examples(
    tokenizer,
    records: list[dict],
    prompt: AgentPrompt,
    *,
    context: list[dict] | None = None,
    max_length: int = 2048,
    prompt_generation: bool = True,
    teacher: bool = False,
    prepend_share: float = 0.0,
    pg_share: float = 1.0,
    seed: int = 0,
) -> tuple[list[dict], ViewStats]:
    """One training example per usable record: its behaviour view, and its prompt-generation and teacher views
    when asked for.

    ``prepend_share`` of the records (an exact share, chosen by a seeded hash of their ids) keep the prompt in the
    behaviour view's context, with the prompt's tokens unsupervised; with ``prompt_generation``, ``pg_share`` of
    them (at least one, chosen the same way) also get a prompt-generation view.
    """
    context = list(context or [])
    stats = ViewStats(records=len(records))
    good = [r for r in records if usable(r)]
    stats.skipped_error = len(records) - len(good)
    ranked = sorted(good, key=lambda r: _rank(seed, str(r["id"])))
    prepend_ids = {r["id"] for r in ranked[: round(prepend_share * len(good))]}
    pg_ranked = sorted(good, key=lambda r: _rank(seed, f"pg:{r['id']}"))
    pg_ids = {r["id"] for r in pg_ranked[: max(1, round(pg_share * len(good)))]} if prompt_generation else set()
    examples = []
    for record in good:
        prepended = record["id"] in prepend_ids
        fitted = fit_dialogue(tokenizer, record, prompt, context, max_length, with_prompt=prepended)
        if fitted is None:
            stats.skipped_too_long += 1
            continue
        ids, labels, turns = fitted
        stats.cut_turns += turns < _agent_turns(record)
        stats.prepended += prepended
        example = {"id": str(record["id"]), "input_ids": ids, "labels": labels, "prepended": prepended}
        stats.tokens["behaviour"] += sum(lab != IGNORE for lab in labels)
        if prompt_generation:  # every example has the columns (a dataset takes its columns from the first row)
            example["pg_input_ids"], example["pg_labels"] = [], []
        if record["id"] in pg_ids:
            pg_input, pg_labels = prompt_generation_view(tokenizer, record, prompt, context, max_length)
            example["pg_input_ids"], example["pg_labels"] = pg_input, pg_labels
            stats.tokens["prompt_generation"] += sum(lab != IGNORE for lab in pg_labels)
        if teacher:
            t_ids, t_labels = teacher_view(tokenizer, record, prompt, turns)
            if supervised_ids(t_ids, t_labels) != supervised_ids(ids, labels):
                raise AssertionError(f"record {record['id']}: teacher and behaviour views supervise different tokens")
            example["teacher_input_ids"], example["teacher_labels"] = t_ids, t_labels
        examples.append(example)
    stats.used = len(examples)
    if not examples:
        raise UserError(
            f"no record can be trained on ({stats.skipped_error} failed in synthesis, {stats.skipped_too_long} "
            f"longer than --max-length {max_length} even at one agent turn): raise --max-length or synthesize again"
        )
    return examples, stats


# --- batching


class GenPICollator:
    """Batches examples: every behaviour and prompt-generation sequence of the batch in one tensor.

    Each position carries ``task`` (which loss its label feeds; -1 on padding) and ``seq`` (the index of its
    example in the batch; -1 on padding), so that rows can hold several sequences. Teacher sequences, when every
    example has one, form a second tensor with the same ``seq`` numbering.

    With ``pack`` (the default), sequences are packed first-fit into shared rows and told apart by
    ``position_ids`` that restart at 0, with no ``attention_mask``: transformers then builds a block-diagonal
    causal mask, so no sequence sees another, and short behaviour dialogues stop costing the padding up to the long
    prompt-generation rows. Wider rows need fewer padding tokens but cost more attention (a masked row costs its
    full width squared), so with ``attention_cost`` (attention work per token and per position of row width,
    relative to the rest of the model's work per token; see :func:`genpi.trainer.attention_cost`) the row width is
    chosen, between the longest sequence and ``max_width``, to minimise ``rows·width·(1 + attention_cost·width)``;
    without it, rows are as wide as the longest sequence. Without ``pack``, each sequence is a right-padded row with
    an ``attention_mask``.
    """

    def __init__(self, pad_token_id: int, pack: bool = True, attention_cost: float | None = None,
                 max_width: int | None = None):
        self.pad_token_id = pad_token_id
        self.pack = pack
        self.attention_cost = attention_cost
        self.max_width = max_width

    @staticmethod
    def _first_fit(seqs, width: int) -> list[list]:
        bins: list[list] = []
        room: list[int] = []
        for s in sorted(seqs, key=lambda s: -len(s[0])):  # longest first
            for i, free in enumerate(room):
                if len(s[0]) <= free:
                    bins[i].append(s)
                    room[i] -= len(s[0])
                    break
            else:
                bins.append([s])
                room.append(width - len(s[0]))
        return bins

    def _packing(self, seqs) -> tuple[int, list[list]]:
        longest = max(len(s[0]) for s in seqs)
        if self.attention_cost is None:
            return longest, self._first_fit(seqs, longest)
        total = sum(len(s[0]) for s in seqs)
        cap = max(longest, self.max_width or total)
        best = None
        for k in range(1, len(seqs) + 1):  # widths that would fit everything in k rows, were there no gaps
            width = min(cap, max(longest, -(-total // k)))
            bins = self._first_fit(seqs, width)
            cost = len(bins) * width * (1 + self.attention_cost * width)
            if best is None or cost < best[0]:
                best = (cost, width, bins)
        return best[1], best[2]

    def _rows(self, seqs: list[tuple[list[int], list[int], int, int]], prefix: str = "") -> dict:
        """Tensors for ``(ids, labels, task, seq)`` sequences, packed or padded."""
        import torch

        if self.pack:
            width, bins = self._packing(seqs)
        else:
            bins = [[s] for s in seqs]
            width = max(len(s[0]) for s in seqs)
        shape = (len(bins), width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long)
        task = torch.full(shape, -1, dtype=torch.long)
        seq = torch.full(shape, -1, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.long)
        for row, b in enumerate(bins):
            at = 0
            for s_ids, s_labels, s_task, s_seq in b:
                n = len(s_ids)
                ids[row, at : at + n] = torch.tensor(s_ids)
                labels[row, at : at + n] = torch.tensor(s_labels)
                task[row, at : at + n] = s_task
                seq[row, at : at + n] = s_seq
                positions[row, at : at + n] = torch.arange(n)
                mask[row, at : at + n] = 1
                at += n
            positions[row, at:] = torch.arange(width - at)  # the padding is a block of its own
        out = {"input_ids": ids, "labels": labels, "task": task, "seq": seq}
        if self.pack:
            out["position_ids"] = positions
        else:
            out["attention_mask"] = mask
        return {prefix + k: v for k, v in out.items()}

    def __call__(self, examples: list[dict]) -> dict:
        seqs = [(e["input_ids"], e["labels"], BEHAVIOUR, i) for i, e in enumerate(examples)]
        seqs += [(e["pg_input_ids"], e["pg_labels"], PROMPT_GENERATION, i)
                 for i, e in enumerate(examples) if e.get("pg_input_ids")]
        batch = self._rows(seqs)
        if examples and all(e.get("teacher_input_ids") for e in examples):
            teacher = [(e["teacher_input_ids"], e["teacher_labels"], BEHAVIOUR, i) for i, e in enumerate(examples)]
            batch.update(self._rows(teacher, prefix="teacher_"))
        return batch


def decode_view(tokenizer, ids: list[int], labels: list[int]) -> str:
    """A view as text with its supervised spans in ``[[...]]``: what ``--dry-run`` prints and tests read."""
    out, run, inside = [], [], False
    for t, lab in zip(ids, labels):
        sup = lab != IGNORE
        if sup != inside and run:
            text = tokenizer.decode(run)
            out.append(f"[[{text}]]" if inside else text)
            run = []
        inside = sup
        run.append(t)
    if run:
        text = tokenizer.decode(run)
        out.append(f"[[{text}]]" if inside else text)
    return "".join(out)
