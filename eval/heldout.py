"""Held-out inputs: what the systems answer in an evaluation, and the check that training never saw them.

``--inputs`` is either a synthesis run directory (a separate run, e.g. another seed: its records also carry the
teacher's dialogues for multi-turn fidelity; a run made with ``--inputs-only`` gives its inputs alone) or a plain
file of real user inputs: one per line, or JSONL with an ``input`` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genpi.errors import UserError

if TYPE_CHECKING:
    from genpi.synth.store import RunInfo



@dataclass
class HeldOutItem:
    """One held-out input; ``dialogue`` is the teacher's recorded dialogue (first turn: the bare input), if any."""

    id: str
    input: str
    dialogue: list[dict] = field(default_factory=list)
    as_is: str = ""
    to_be: str = ""
    finish: str = ""  # the synthesis record's finish ("end", "max_turns" or "error"); "" for a plain input


@dataclass
class HeldOut:
    source: str
    kind: str  # "run" or "file"
    items: list[HeldOutItem]
    run_info: RunInfo | None = None  # the run's run.json, for a run directory


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "run.json").exists()


def load_heldout(path: str | Path, prompt_hash: str | None = None, limit: int = 0) -> HeldOut:
    """Load held-out inputs from a run directory or a plain/JSONL file, keeping the first ``limit`` (0 = all).

    A run made for another prompt than ``prompt_hash`` is refused: its dialogues answer a different agent.
    """
    path = Path(path)
    if is_run_dir(path):
        held = _from_run(path, prompt_hash)
    elif path.is_dir():
        raise UserError(f"--inputs {path} is a directory without run.json: pass a synthesis run directory or a file of inputs")
    elif path.is_file():
        held = _from_file(path)
    else:
        raise UserError(f"--inputs {path} does not exist: pass a synthesis run directory or a file of inputs")
    if not held.items:
        raise UserError(f"--inputs {path} holds no inputs: add at least one")
    if limit > 0:
        held.items = held.items[:limit]
    return held


def _from_run(path: Path, prompt_hash: str | None) -> HeldOut:
    from genpi.synth.store import RECORDS_FILE, RunInfo, load_inputs, load_run

    if not (path / RECORDS_FILE).exists():  # a run of inputs only (`genpi synth --inputs-only`)
        info = RunInfo.read(path)
        records = [{"id": a["id"], "input": a["input"]} for a in load_inputs(path)]
    else:
        info, records = load_run(path)
    if prompt_hash and info.prompt_hash and info.prompt_hash != prompt_hash:
        raise UserError(
            f"--inputs {path} was synthesized for another prompt (hash {info.prompt_hash}, --prompt has {prompt_hash}): "
            "pass the run made from the same prompt file"
        )
    items = []
    for r in records:
        text = (r.get("input") or "").strip()
        if not text:
            continue
        dialogue = [{"role": m["role"], "content": m["content"]} for m in (r.get("dialogue") or [])]
        items.append(HeldOutItem(str(r.get("id") or len(items)), text, dialogue, r.get("as_is") or "",
                                 r.get("to_be") or "", r.get("finish") or ""))
    return HeldOut(str(path), "run", items, info)


def _from_file(path: Path) -> HeldOut:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"--inputs {path} is not UTF-8 text: re-save it as UTF-8") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    as_jsonl = path.suffix == ".jsonl" or first.lstrip().startswith("{")
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if as_jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"--inputs {path}, line {n} is not valid JSON: fix the line or use one plain input per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not row["input"].strip():
                raise UserError(f"--inputs {path}, line {n} has no non-empty \"input\" text field: add one")
            items.append(HeldOutItem(str(row.get("id", f"line{n}")), row["input"].strip()))
        else:
            items.append(HeldOutItem(f"line{n}", line.strip()))
    return HeldOut(str(path), "file", items)


def training_records(run_dir: str | Path) -> list[dict]:
    """The records of a training run, in their stored order."""
    from genpi.synth.store import load_run

    _, records = load_run(run_dir)
    return records.to_list()


def training_inputs(run_dir: str | Path) -> list[str]:
    """The inputs of a training run's records."""
    return [r.get("input") or "" for r in training_records(run_dir)]


def check_overlap(held: HeldOut, train_run: str | Path) -> None:
    """Fail when any held-out input repeats an input of the training run ``train_run``: exactly once normalised,
    or nearly by their text (the word and character Jaccard of :class:`genpi.synth.dedup.Deduplicator`). Paraphrases
    by TF-IDF cosine are not an error: the report counts them (``near_duplicates``)."""
    from genpi.synth.dedup import Deduplicator

    seen = Deduplicator(tfidf_threshold=None)
    for text in training_inputs(train_run):
        seen.add(text)
    leaked = [item.input for item in held.items if seen.is_duplicate(item.input)]
    if leaked:
        example = leaked[0] if len(leaked[0]) <= 60 else leaked[0][:57] + "..."
        raise UserError(
            f"{len(leaked)} of {len(held.items)} held-out inputs in {held.source} are training inputs of {train_run} "
            f"(e.g. {example!r}): evaluate on a separate run (another --seed) or a file of inputs never trained on"
        )
