"""Tasks with checks: the file format, answers as compared, the shell environment's helpers, and the agent loop
(scripted agents, real sandboxes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from genpi.environment import TRUNCATED, find_answer, find_command, reply_text
from genpi.errors import UserError
from genpi.eval.tasks import Task, load_tasks, normalize_answer
from genpi.sandbox import Action, Limits, SandboxUnavailable, check_available


def _write(tmp_path, *rows) -> str:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


OK = {"id": "a", "request": "How many?", "check": {"answer": "3"}}


# --- the file


def test_tasks_load_with_their_checks(tmp_path):
    tasks = load_tasks(_write(tmp_path, OK, {"id": "b", "request": "Make /x.", "setup": "true", "category": "files",
                                             "check": {"command": "test -d /x"}, "solution": "mkdir /x"}))
    assert [t.id for t in tasks] == ["a", "b"]
    assert tasks[0].asks_answer and not tasks[1].asks_answer and tasks[1].category == "files"


@pytest.mark.parametrize("row, message", [
    ("{not json", "line 1 is not JSON"),
    ({**OK, "checks": {}}, "unknown key(s) checks"),
    ({"id": "a", "check": {"answer": "3"}}, "has no request"),
    ({**OK, "check": {"answer": "3", "command": "true"}}, "check must be one of"),
    ({**OK, "check": {"exit_code": "0"}}, "check must be one of"),
    ({**OK, "check": {"answer": " "}}, "its check is empty"),
    ({**OK, "setup": ["ls"]}, "setup must be a string"),
])
def test_a_bad_task_is_a_one_line_error_naming_the_line(tmp_path, row, message):
    with pytest.raises(UserError, match="line 1") as e:
        load_tasks(_write(tmp_path, row))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_duplicate_ids_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="line 2: id 'a' is used twice"):
        load_tasks(_write(tmp_path, OK, OK))
    with pytest.raises(UserError, match="does not exist"):
        load_tasks(str(tmp_path / "none.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="holds no tasks"):
        load_tasks(str(tmp_path / "empty.jsonl"))


@pytest.mark.parametrize("a, b", [("17", "17.0"), ("017", "17"), ("`report.txt`", "report.txt"), ("Bob.", "bob"),
                                  ("'a  b'", "a b"), ("-2.10", "-2.1"), ("+5", "5")])
def test_answers_compare_after_normalisation(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize("a, b", [("17", "71"), ("9007199254740993", "9007199254740992"), ("report.txt", "report"),
                                  ("1.5", "15")])
def test_different_answers_stay_different(a, b):
    assert normalize_answer(a) != normalize_answer(b)


# --- the shell environment


def test_the_command_is_the_first_shell_block():
    turn = "Think: count.\nAct: bash\n```bash\nfind /var -name '*.log' | wc -l\n```\n```bash\nrm -rf /\n```"
    assert find_command(turn) == "find /var -name '*.log' | wc -l"
    assert find_command("```\n$ ls -la\n```") == "ls -la"
    assert find_command("```python\nprint(1)\n```") is None
    assert find_command("Think: done.\nAct: answer(3)") is None
    assert find_command("Act: bash\n```bash\necho cut off") == "echo cut off"  # a block cut by a stop string


def test_the_answer_is_found_on_the_last_matching_line():
    assert find_answer("Think: it is 17.\nAct: answer(17)") == "17"
    assert find_answer("Act: answer(a)\nAct: answer(b)") == "b"
    assert find_answer("Act: finish") is None
    assert find_answer("RESULT: 42", r"RESULT: (\d+)") == "42"


def test_the_reply_has_the_prompts_opener_and_cut_output():
    action = Action("ls", "a\nb\n", 0, 0.01)
    assert reply_text(action, "The output of the OS:", 800) == "The output of the OS:\na\nb"
    assert reply_text(Action("true", "", 0, 0.01), "The output of the OS:", 800) == "The output of the OS:"
    long = reply_text(Action("yes", "y\n" * 1000, 0, 0.01), "", 10)
    assert long == "y\ny\ny\ny\ny\n" + TRUNCATED
    killed = reply_text(Action("sleep 9", "", None, 1.0, timed_out=True), "OS:", 800)
    assert killed == "OS:\n[killed: still running after the time limit]"


# --- the loop, with scripted agents in real sandboxes

try:
    BACKEND = check_available()
except SandboxUnavailable:
    BACKEND = ""


class ScriptedAgent:
    """Stands in for genpi.eval.generation.Generator: each conversation gets its script's next turn, and every
    conversation it is shown is recorded."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts, self.seen = scripts, []

    def generate(self, system, prompt, conversations, max_new_tokens, stop=None):
        self.seen.append([list(c) for c in conversations])
        return [SimpleNamespace(text=self.scripts[c[0]["content"]][(len(c) - 1) // 2]) for c in conversations]


def _work(agent, tasks, **kw):
    from genpi.eval.agent import work_tasks

    settings = dict(max_turns=3, max_new_tokens=64, stop=[], end_pattern=r"^Act: finish$",
                    answer_pattern=r"answer\((.*)\)", opener="The output of the OS:", output_chars=800,
                    limits=Limits(seconds=2), backend=BACKEND)
    return work_tasks(agent, None, None, tasks, **{**settings, **kw})


def _bash(command: str) -> str:
    return f"Think: run it.\nAct: bash\n```bash\n{command}\n```"


@pytest.mark.skipif(not BACKEND, reason="no sandbox backend can isolate commands on this machine")
def test_agents_work_tasks_in_their_own_sandboxes_and_are_judged():
    setup = "mkdir -p /srv/d && touch /srv/d/a.log /srv/d/b.log /srv/d/c.txt"
    tasks = [
        Task("right", "Count the logs.", {"answer": "2"}, setup=setup),
        Task("wrong", "Count the logs again.", {"answer": "2"}, setup=setup),
        Task("change", "Make /srv/out.", {"command": "test -d /srv/out"}),
        Task("idle", "Make /srv/idle.", {"command": "test -d /srv/idle"}),
        Task("cpus", "How many CPUs?", {"answer_command": "nproc"}),
        Task("loop", "Count forever.", {"answer": "1"}),
        Task("broken", "Broken setup.", {"answer": "1"}, setup="exit 4"),
    ]
    agent = ScriptedAgent({
        "Count the logs.": [_bash("ls /srv/d/*.log | wc -l"), "Think: two.\nAct: answer(2)"],
        "Count the logs again.": [_bash("ls /srv/d | wc -l"), "Think: three.\nAct: answer(3)"],
        "Make /srv/out.": [_bash("mkdir /srv/out"), "Think: done.\nAct: finish"],
        "Make /srv/idle.": ["I would run mkdir."],
        "How many CPUs?": [_bash("nproc"), "Act: answer(0)"],
        "Count forever.": [_bash("echo 1")] * 3,
    })
    outcomes = {o.task: o for o in _work(agent, tasks)}
    assert outcomes["right"].success and outcomes["right"].answer == "2"
    assert (outcomes["wrong"].success, outcomes["wrong"].reason, outcomes["wrong"].answer) == (False, "wrong answer", "3")
    assert outcomes["change"].success
    assert (outcomes["idle"].success, outcomes["idle"].reason) == (False, "no action")
    assert (outcomes["cpus"].reason, outcomes["cpus"].expected.isdigit()) == ("wrong answer", True)
    assert (outcomes["loop"].success, outcomes["loop"].reason) == (False, "turn limit")
    assert outcomes["broken"].reason == "setup failed" and "exit 4" in outcomes["broken"].detail
    # the agent saw the sandbox's real output, in the prompt's format, as its next user turn
    assert outcomes["right"].turns[1] == {"role": "user", "content": "The output of the OS:\n2"}
    assert outcomes["wrong"].turns[1]["content"] == "The output of the OS:\n3"
    # finished tasks leave the batch: "idle" after the first turn, all but "loop" after the second
    assert [len(batch) for batch in agent.seen] == [6, 5, 1]


@pytest.mark.skipif(not BACKEND, reason="no sandbox backend can isolate commands on this machine")
def test_each_system_starts_from_the_tasks_setup_not_from_another_systems_work():
    task = Task("t", "Append a line.", {"command": "test $(wc -l < /srv/f) -eq 2"}, setup="mkdir /srv; echo a > /srv/f")
    agent = ScriptedAgent({"Append a line.": [_bash("echo b >> /srv/f"), "Act: finish"]})
    assert _work(agent, [task])[0].success
    assert _work(agent, [task])[0].success  # a second system's sandbox is fresh: 2 lines again, not 3


@pytest.mark.skipif(not BACKEND, reason="no sandbox backend can isolate commands on this machine")
def test_execution_agreement_compares_what_the_commands_do_in_fresh_sandboxes():
    from genpi.eval.actions import execution_agreement

    setup = "mkdir -p /srv/d && touch /srv/d/a.log /srv/d/b.log /srv/d/c.txt"
    tasks = [Task("count", "Count the logs.", {"answer": "2"}, setup=setup),
             Task("list", "List the logs.", {"answer": "x"}, setup=setup),
             Task("none", "Say hi.", {"answer": "hi"}),
             Task("pid", "Which pid?", {"answer": "1"})]
    turns = {
        "prompted": [_bash("ls /srv/d/*.log | wc -l"), _bash("ls /srv/d/*.log"), "Act: answer(hi)",
                     _bash("echo $$ $RANDOM")],
        # another command with the same result agrees; the same kind of command with another result does not
        "adapter": [_bash("find /srv/d -name '*.log' | wc -l"), _bash("ls /srv/d"), _bash("echo hi"),
                    _bash("echo $$ $RANDOM")],
        "constant": ["Think: x\nAct: finish"] * 4,
    }
    scores = execution_agreement(tasks, turns, Limits(seconds=5), BACKEND)
    # "none" is left out (the teacher runs no command); "pid" prints a random number: no one agrees, not even a rerun
    assert scores == {"prompted": [1.0, 1.0, 0.0], "adapter": [1.0, 0.0, 0.0], "constant": [0.0, 0.0, 0.0]}


# --- bad input on the command line


def test_a_missing_or_broken_tasks_file_is_one_line_before_any_model_loads(tmp_path, capsys):
    from genpi.cli import main

    out = tmp_path / "report"
    assert main(["eval", "--prompt", "examples/bash_agent.txt", "--tasks", str(tmp_path / "none.jsonl"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genpi: error: --tasks") and "does not exist" in err and "\n" not in err
    bad = _write(tmp_path, OK, '{"id": "b", "request": "x", "check": {"answer": "1"}, "oops": 1}')
    assert main(["eval", "--prompt", "examples/bash_agent.txt", "--tasks", bad, "--out", str(out)]) == 2
    assert "line 2 has unknown key(s) oops" in capsys.readouterr().err
    assert not out.exists()


def test_without_a_sandbox_nothing_runs_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    import genpi.sandbox as sandbox
    from genpi.cli import main

    monkeypatch.setattr(sandbox, "_checked", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda tool, path=None: None)
    sandbox.backends.cache_clear()
    try:
        run = tmp_path / "run"
        assert main(["synth", "--prompt", "examples/bash_agent.txt", "--env", "sandbox", "--out", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot run commands isolated here" in err and "install bubblewrap" in err and "\n" not in err
        assert not run.exists()
        out = tmp_path / "report"
        assert main(["eval", "--prompt", "examples/bash_agent.txt", "--tasks", _write(tmp_path, OK),
                     "--out", str(out)]) == 2
        assert "cannot run commands isolated here" in capsys.readouterr().err
        assert not out.exists()
    finally:
        sandbox.backends.cache_clear()
