"""Tasks with checks: a user's request to a shell agent, the state it starts from, and how success is decided.

A tasks file is JSONL, one task per line::

    {"id": "count-logs", "request": "How many .log files are in /var/app/logs, including subdirectories?",
     "setup": "mkdir -p /var/app/logs/a && touch /var/app/logs/x.log /var/app/logs/a/y.log",
     "check": {"answer": "2"}, "solution": "find /var/app/logs -type f -name '*.log' | wc -l"}

* ``setup`` (optional): a bash script run in the task's fresh sandbox before the agent sees the request; it must
  exit 0.
* ``check``: exactly one of
  * ``{"answer": "..."}``: the agent's final answer must equal it after :func:`normalize_answer`;
  * ``{"answer_command": "..."}``: the same, with the expected answer printed by this command in the sandbox right
    after the setup (for facts of the machine, such as the number of CPUs, that the file cannot know);
  * ``{"command": "..."}``: run in the sandbox after the agent is done; exit code 0 means success (for tasks
    that ask to change something).
* ``solution`` (optional): a reference solution, one bash script: for an answer task, its output is the answer;
  for a command task, running it makes the check pass. The tests run every solution of the example file.
* ``category`` (optional): a label the report counts by (e.g. ``files``, ``text``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from genpi.errors import UserError

CHECK_KINDS = ("answer", "answer_command", "command")


@dataclass(frozen=True)
class Task:
    id: str
    request: str
    check: dict  # one of CHECK_KINDS -> its text
    setup: str = ""
    solution: str = ""
    category: str = ""

    @property
    def check_kind(self) -> str:
        return next(iter(self.check))

    @property
    def asks_answer(self) -> bool:
        return self.check_kind != "command"


@dataclass
class Outcome:
    """How one system did on one task."""

    task: str
    success: bool
    reason: str  # "" on success, else a countable label: "wrong answer", "check failed", "no answer", "setup failed"...
    answer: str | None = None
    expected: str | None = None
    turns: list[dict] = field(default_factory=list)  # the agent's turns and the environment's replies
    detail: str = ""  # what went wrong before the agent started (a setup's error)


def load_tasks(path: str | Path) -> list[Task]:
    """The tasks of a JSONL file; a malformed line is a one-line error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tasks {path} does not exist: pass a JSONL file of tasks (docs/EVALUATION.md, Tasks)")
    tasks, ids = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"--tasks {path} line {n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not JSON ({e.msg}): write one task object per line") from None
        tasks.append(_task(raw, where))
        if tasks[-1].id in ids:
            raise UserError(f"{where}: id {tasks[-1].id!r} is used twice: give every task its own id")
        ids.add(tasks[-1].id)
    if not tasks:
        raise UserError(f"--tasks {path} holds no tasks: add at least one")
    return tasks


def _task(raw, where: str) -> Task:
    if not isinstance(raw, dict):
        raise UserError(f"{where} is not a JSON object: write {{\"id\": ..., \"request\": ..., \"check\": ...}}")
    unknown = sorted(set(raw) - {"id", "request", "setup", "check", "solution", "category"})
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}: "
                        "valid keys are id, request, setup, check, solution, category")
    for key in ("id", "request"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise UserError(f"{where} has no {key}: give it a non-empty string")
    for key in ("setup", "solution", "category"):
        if not isinstance(raw.get(key, ""), str):
            raise UserError(f"{where}: {key} must be a string")
    check = raw.get("check")
    if not (isinstance(check, dict) and len(check) == 1 and next(iter(check)) in CHECK_KINDS
            and isinstance(next(iter(check.values())), str)):
        raise UserError(f"{where}: check must be one of {{\"answer\": TEXT}}, {{\"answer_command\": COMMAND}} or "
                        "{\"command\": COMMAND}")
    if not normalize_answer(next(iter(check.values()))):
        raise UserError(f"{where}: its check is empty: give the expected answer or a command")
    return Task(id=raw["id"], request=raw["request"], check=dict(check), setup=raw.get("setup", ""),
                solution=raw.get("solution", ""), category=raw.get("category", ""))


def normalize_answer(text: str) -> str:
    """An answer as compared: surrounding whitespace, quotes, backticks and a final period dropped, runs of white
    space made one space, lower case, and a number written in its shortest form ("17.0" -> "17")."""
    text = " ".join(str(text).split()).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    text = text.rstrip(".").strip().lower()
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", text):  # exactly, as text: no float rounding of long numbers
        sign = "-" if text[0] == "-" else ""
        whole, _, frac = text.lstrip("+-").partition(".")
        whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
        text = (sign if whole != "0" or frac else "") + whole + (f".{frac}" if frac else "")
    return text


def prepare(box, task: Task) -> tuple[str | None, str]:
    """Run the task's setup in ``box`` and work out the expected answer: ``(expected or None, error)``."""
    if task.setup:
        done = box.run(task.setup)
        if done.exit_code != 0:
            return None, f"setup failed (exit {done.exit_code}): {done.output.strip()[-200:]}"
    if task.check_kind == "answer":
        return task.check["answer"], ""
    if task.check_kind == "answer_command":
        done = box.run(task.check["answer_command"])
        if done.exit_code != 0 or not done.output.strip():
            return None, f"answer_command failed (exit {done.exit_code}): {done.output.strip()[-200:]}"
        return done.output.strip(), ""
    return None, ""


def judge(box, task: Task, expected: str | None, answer: str | None) -> tuple[bool, str]:
    """``(success, reason)`` once the agent is done: its answer against ``expected``, or the check command run."""
    if task.asks_answer:
        if answer is None:
            return False, "no answer"
        ok = normalize_answer(answer) == normalize_answer(expected or "")
        return ok, "" if ok else "wrong answer"
    done = box.run(task.check["command"])
    return done.exit_code == 0, "" if done.exit_code == 0 else "check failed"
