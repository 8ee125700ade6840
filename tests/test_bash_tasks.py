"""The bash agent's tasks (examples/bash_tasks.jsonl): every task is sound, checked in a real sandbox.

For each task, in a fresh :class:`~genpi.sandbox.Sandbox`: the setup runs cleanly; for an answer task, the
reference solution's output is judged right and a wrong answer is judged wrong; for a change task, the check fails
right after the setup (an agent that does nothing scores 0) and passes once the reference solution has run. The
file as a whole has enough tasks, in every category, each with a solution.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from genpi.eval.tasks import judge, load_tasks, prepare
from genpi.sandbox import Sandbox, SandboxUnavailable, check_available

try:
    check_available()
except SandboxUnavailable as e:
    pytest.skip(f"no sandbox can run the tasks here: {e}", allow_module_level=True)

TASKS = load_tasks(Path(__file__).parents[1] / "examples" / "bash_tasks.jsonl")
CATEGORIES = ("files", "text", "users", "disk", "processes")


def test_the_file_covers_every_category_with_solutions():
    assert len(TASKS) >= 40
    counts = Counter(t.category for t in TASKS)
    assert set(counts) == set(CATEGORIES), counts
    assert all(counts[c] >= 8 for c in CATEGORIES), counts
    assert [t.id for t in TASKS if not t.solution.strip()] == []
    kinds = Counter(t.asks_answer for t in TASKS)
    assert kinds[True] >= kinds[False] > 0, kinds  # mostly questions, some changes


@pytest.mark.parametrize("task", TASKS, ids=[t.id for t in TASKS])
def test_reference_solution_passes(task):
    with Sandbox() as box:
        expected, error = prepare(box, task)
        assert not error
        if task.asks_answer:
            assert expected
            out = box.run(task.solution)
            assert out.exit_code == 0, out.output
            assert judge(box, task, expected, out.output.strip()) == (True, ""), (out.output, expected)
            assert judge(box, task, expected, "definitely-wrong-answer")[0] is False
        else:
            assert judge(box, task, None, None)[0] is False, "the check passes before anything was done"
            out = box.run(task.solution)
            assert out.exit_code == 0, out.output
            assert judge(box, task, None, None) == (True, "")
