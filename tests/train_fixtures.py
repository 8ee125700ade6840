"""Small synthesis runs written by hand for the training tests: a short transcript prompt and multi-turn records."""

from __future__ import annotations

import json
from pathlib import Path

from genpi.prompt import parse_prompt

PROMPT_TEXT = """<USER>: You are ShellBot. Reply with one line: `Act: bash <command>` or `Act: answer(<x>)`.

<AGENT>: Act: bash echo ready

<USER>: Task:"""


def prompt():
    return parse_prompt(PROMPT_TEXT, source="shellbot.txt")


def record(i: int, turns: int = 2, finish: str = "max_turns", prefixed: bool = False) -> dict:
    """A record in the store's format; ``prefixed`` starts the dialogue with the prompt's lead-in, as the teacher saw it."""
    text = f"how many files are in /data/set{i}?"
    first = prompt().teacher_messages(text)[-1]["content"] if prefixed else text
    dialogue = [{"role": "user", "content": first}]
    for k in range(turns):
        answer = f"Act: bash ls /data/set{i} | wc -l" if k == 0 else f"Act: answer({i + 3})"
        dialogue.append({"role": "assistant", "content": answer})
        if k < turns - 1:
            dialogue.append({"role": "user", "content": f"The output of the OS: {i + 3}"})
    return {"id": f"rec{i}", "index": i, "input": text, "as_is": f"You can count the files with ls in set{i}.",
            "to_be": dialogue[1]["content"], "reason": "The prompt demands one Act line per reply.",
            "dialogue": dialogue, "finish": finish, "meta": {}}


def records(n: int = 4) -> list[dict]:
    """``n`` good records (alternately with and without the lead-in), then one failed and one without agent turn."""
    good = [record(i, prefixed=bool(i % 2)) for i in range(n)]
    failed = {**record(n), "id": "failed", "finish": "error", "meta": {"error": "TimeoutError"}}
    silent = {**record(n + 1), "id": "silent", "dialogue": [{"role": "user", "content": record(n + 1)["input"]}],
              "finish": "end"}
    return good + [failed, silent]


def write_run(run_dir: Path, recs: list[dict] | None = None, keep_prompt_file: bool = True) -> Path:
    """A run directory as `genpi synth` writes it: run.json (with the prompt) and records.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    p = prompt()
    prompt_file = run_dir.parent / f"{run_dir.name}-prompt.txt"
    if keep_prompt_file:
        prompt_file.write_text(PROMPT_TEXT, encoding="utf-8")
    info = {
        "genpi_version": "test",
        "prompt_path": str(prompt_file),
        "prompt_hash": p.hash,
        "prompt": {"kind": p.kind, "messages": list(p.messages), "input_prefix": p.input_prefix},
        "config": {"model": "default"},
    }
    (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    with open(run_dir / "records.jsonl", "w", encoding="utf-8") as f:
        for r in recs if recs is not None else records():
            f.write(json.dumps(r) + "\n")
    return run_dir
