"""Behaviour metrics without a model: actions named by checkers, action agreement, the degenerate baselines, near
duplicates and the words the report says about them."""

import json
from pathlib import Path

import pytest

from genpi.errors import UserError
from genpi.eval.actions import action_scores
from genpi.eval.baselines import constant_systems, format_only, most_frequent, near_duplicates
from genpi.checkers import Check, get_checker
from genpi.eval.report import behaviour_notes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASH = get_checker(f"{EXAMPLES / 'bash_agent.checks.py'}:protocol")


def bash(command: str) -> str:
    return f"Think: I run it.\nAct: bash\n```bash\n{command}\n```"


def test_bash_checker_names_the_action_and_its_argument():
    assert BASH(bash("ls  -la /etc")).action == {"action": "bash", "arg": "ls -la /etc"}  # spacing folded
    assert BASH("Think: done.\nAct: answer( 42 )").action == {"action": "answer", "arg": "42"}
    assert BASH("Think: done.\nAct: finish").action == {"action": "finish"}
    assert BASH("Act: finish").action is None  # a failed check names no action


def test_regex_named_groups_are_the_action():
    check = get_checker(r"regex:CALL (?P<action>\w+)\((?P<arg>.*)\)")
    assert check("CALL search( cheap  flights )").action == {"action": "search", "arg": "cheap flights"}
    assert get_checker(r"regex:CALL \w+\(.*\)")("CALL a(b)").action is None  # no named groups: no action


def test_schema_x_action_lists_the_fields(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"tool": {"type": "string"}, "note": {}},
                                  "required": ["tool"], "x-action": ["tool"]}))
    check = get_checker(str(schema))
    assert check('{"tool": "weather", "note": "free text"}').action == {"tool": "weather"}
    support = get_checker(str(EXAMPLES / "support_agent.schema.json"))
    reply = '{"category": "refunds", "priority": "high", "answer": "We refund you.", "escalate": false}'
    assert support(reply).action == {"category": "refunds", "priority": "high", "escalate": False}
    schema.write_text(json.dumps({"type": "object", "x-action": "tool"}))
    with pytest.raises(UserError, match="x-action"):
        get_checker(str(schema))


def test_python_checker_may_return_an_action(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("def ok(r):\n    return True, '', {'action': r.split()[0]}\n"
                 "def bad(r):\n    return True, '', 'not a dict'\n")
    assert get_checker(f"{f}:ok")("go north").action == {"action": "go"}
    assert get_checker(f"{f}:bad")("go").reason == "checker returned an action that is not a dict"


def test_action_agreement_counts_only_inputs_where_the_teacher_acts():
    teacher = [BASH(bash("ls /etc")), BASH("no protocol"), BASH("Think: x\nAct: answer(3)")]
    same_kind = [BASH(bash("ls /var")), BASH(bash("ls")), BASH("Think: y\nAct: answer(3)")]
    constant = [BASH("Think: x\nAct: finish")] * 3
    scores = action_scores({"prompted": teacher, "adapter": same_kind, "constant": constant})
    assert scores["prompted"] == {"action": [1.0, 1.0], "action_name": [1.0, 1.0]}
    assert scores["adapter"] == {"action": [0.0, 1.0], "action_name": [1.0, 1.0]}
    assert scores["constant"] == {"action": [0.0, 0.0], "action_name": [0.0, 0.0]}
    assert action_scores({"prompted": [Check(True)], "x": [Check(True)]}) == {}  # the checker names no actions


def test_constant_is_the_most_frequent_reply_and_minimal_the_shortest_passing():
    replies = [bash("ls /etc"), bash("ls  /etc"), bash("cat /etc/passwd | wc -l"), "Think: ok\nAct: finish", "oops"]
    assert most_frequent(replies) == bash("ls /etc")  # twice, up to spacing
    systems = constant_systems(replies, BASH, "run")
    assert [s.name for s in systems] == ["constant", "minimal"]
    assert systems[1].reply == "Think: ok\nAct: finish" and all(s.model_free for s in systems)
    # all different: the medoid, the reply most like the others
    medoid = most_frequent([bash("ls /a"), bash("ls /b"), "something else entirely"])
    assert medoid in (bash("ls /a"), bash("ls /b"))
    assert [s.name for s in constant_systems(replies, None, "run")] == ["constant"]


def test_format_only_when_a_constant_passes_half_the_inputs():
    systems = constant_systems([bash("ls")], BASH, "run")
    assert format_only({"constant": {"protocol": [1.0, 1.0, 0.0]}}, systems) == ["constant"]
    assert format_only({"constant": {"protocol": [1.0, 0.0, 0.0]}}, systems) == []


def test_near_duplicates_catch_paraphrases_that_differ_in_a_few_words():
    train = ["Count the number of .log files in /var/log", "Show the disk usage of /home"]
    held = ["Count the number of .log files under /var/log", "Which user owns /etc/shadow?"]
    near = near_duplicates(held, train, 0.6)
    assert [d["index"] for d in near] == [0] and near[0]["training_input"] == train[0]
    assert near_duplicates(held, train, 0.99) == []


def _report(recovery: dict, ref: dict) -> dict:
    systems = {"prompted": {"kind": "prompted", "metrics": {}}, "unprompted": {"kind": "unprompted", "metrics": {}},
               "genpi:a": {"kind": "adapter", "metrics": {}}, "constant": {"kind": "constant",
                                                                        "metrics": {"protocol": 1.0}}}
    return {"systems": systems, "recovery": recovery, "reference_rows": ref}


def test_notes_say_when_a_checker_tests_format_only_and_an_adapter_learned_nothing():
    flat = {"defined": True, "ratio": 0.05, "ratio_ci": [-0.2, 0.3]}
    good = {"defined": True, "ratio": 0.8, "ratio_ci": [0.6, 0.9]}
    lines = behaviour_notes(_report({"genpi:a": {"token_agreement": flat, "teacher_kl": good}},
                                    {"format_only": ["constant"]}))
    assert any(line.startswith("this checker tests format only: the constant system") for line in lines)
    assert any("genpi:a is indistinguishable from the unprompted model on token_agreement (" in line for line in lines)
    lines = behaviour_notes(_report({"genpi:a": {"token_agreement": good}}, {"format_only": []}))
    assert not any("format only" in line or "indistinguishable" in line for line in lines)
    report = _report({}, {})
    report["systems"]["genpi:a"]["too_short"] = "only 2 optimizer steps"
    assert "genpi:a: genpi train warned that its run was too short (only 2 optimizer steps)" in behaviour_notes(report)
