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
from dataclasses import dataclass, field

from genpi.errors import UserError
from genpi.prompt import AgentPrompt, pg_answer, pg_question, student_messages

IGNORE = -100
BEHAVIOUR, PROMPT_GENERATION = 0, 1

_CUT = " [...]"


# --- records


def usable(record: dict) -> bool:
    """A record trains only when its synthesis finished and the agent spoke at least once."""
    return record.get("finish") != "error" and any(m.get("role") == "assistant" for m in record.get("dialogue") or [])


# --- rendering with labels


def eot_text(tokenizer) -> str | None:
    """The text of the token that ends an agent turn (SmolLM2: ``<|im_end|>``)."""
    return tokenizer.eos_token


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_with_labels(tokenizer, messages: list[dict], supervise_from: int = 0, skip: str = ""
                       ) -> tuple[list[int], list[int]]:
    """Token ids of a chat and labels on the assistant messages at index ``supervise_from`` or later.

    Each supervised span runs from the first token of the assistant's content to its end-of-turn token inclusive;
    everything else (system, user turns, role headers, earlier assistant turns) is ``IGNORE``. ``skip``, a text
    the rendered chat starts with, is left out (a soft prompt stands in for it).
    """
    full = _render(tokenizer, messages)
    if skip and not full.startswith(skip):
        raise UserError("the chat template renders the prompt differently for different inputs, so a soft prompt "
                        "cannot stand in for it: use a LoRA strategy")
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
    ids, labels, pos = [], [], len(skip)
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
    # A PromptIntern stage's template may drop the lead-in the dialogue was synthesized with: the input must end it.
    if first.get("role") != "user" or not str(first.get("content", "")).endswith(bare):
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


def fit_dialogue(tokenizer, record, prompt, context, max_length, with_prompt=False, soft: str = ""):
    """The longest prefix of the dialogue (whole agent turns) that fits ``max_length``.

    Returns ``(ids, labels, turns)``, or ``None`` when not even the first agent turn fits. With ``with_prompt``
    the prompt stays in the context (the *prepend* baseline, a PromptIntern stage's template) and its own
    demonstration turns are not supervised. With ``soft`` (:func:`genpi.prompt.prompted_head`), the teacher's
    tokens after the prompt: what follows a soft prompt standing in for it.
    """
    for turns in range(_agent_turns(record), 0, -1):
        if with_prompt or soft:
            messages = teacher_messages(record, prompt, turns)
            ids, labels = render_with_labels(tokenizer, messages, supervise_from=len(prompt.messages) + 1, skip=soft)
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
    user = pg_question(record["input"], as_is, to_be)
    target = pg_answer(prompt.text, (record.get("reason") or "").strip())
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
    soft: tuple[str, list[int]] | None = None,
    onpolicy: bool = False,
) -> tuple[list[dict], ViewStats]:
    """One training example per usable record: its behaviour view, and its prompt-generation and teacher views
    when asked for.

    ``prepend_share`` of the records (an exact share, chosen by a seeded hash of their ids) keep the prompt in the
    behaviour view's context, with the prompt's tokens unsupervised; with ``prompt_generation``, ``pg_share`` of
    them (at least one, chosen the same way) also get a prompt-generation view. With ``soft`` (the prompt's
    rendered head and its ids, :func:`genpi.prompt.prompted_head`), the behaviour view is what follows it in the
    teacher's tokens, for a soft prompt in its place. With ``onpolicy``, each example also carries the first turn's
    context as the student and the teacher see it (``op_student_ids``, ``op_teacher_ids``), for replies the
    student samples during training.
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
        fitted = fit_dialogue(tokenizer, record, prompt, context, max_length, with_prompt=prepended,
                              soft=soft[0] if soft else "")
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
        if teacher and soft:  # the prompt's own tokens, then the same tokens: the pair differs by the prompt only
            head = list(soft[1])
            example["teacher_input_ids"], example["teacher_labels"] = head + ids, [IGNORE] * len(head) + labels
        elif teacher:
            t_ids, t_labels = teacher_view(tokenizer, record, prompt, turns)
            if supervised_ids(t_ids, t_labels) != supervised_ids(ids, labels):
                raise AssertionError(f"record {record['id']}: teacher and behaviour views supervise different tokens")
            example["teacher_input_ids"], example["teacher_labels"] = t_ids, t_labels
        if onpolicy:
            example["op_student_ids"], example["op_teacher_ids"] = onpolicy_contexts(tokenizer, record, prompt, context)
        examples.append(example)
    stats.used = len(examples)
    if not examples:
        raise UserError(
            f"no record can be trained on ({stats.skipped_error} failed in synthesis, {stats.skipped_too_long} "
            f"longer than --max-length {max_length} even at one agent turn): raise --max-length or synthesize again"
        )
    return examples, stats


def onpolicy_contexts(tokenizer, record, prompt: AgentPrompt, context: list[dict]) -> tuple[list[int], list[int]]:
    """The first turn's context, ready for the agent's reply: without the prompt (the student) and with it."""
    bare, _ = _first_turns(record, prompt)
    student = _render(tokenizer, student_messages(bare, context), add_generation_prompt=True)
    teacher = _render(tokenizer, prompt.teacher_messages(bare), add_generation_prompt=True)
    return ([*tokenizer(student, add_special_tokens=False)["input_ids"]],
            [*tokenizer(teacher, add_special_tokens=False)["input_ids"]])


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
