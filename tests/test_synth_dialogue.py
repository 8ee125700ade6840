"""How role-swapped dialogues end, what is kept of them, and which sampling each role gets (fake client, no model)."""

import json

import pytest

from genpi.config import SynthConfig
from genpi.errors import UserError
from genpi.synth import roles
from genpi.synth.client import ChatResult, FakeChatClient
from genpi.synth.pipeline import synthesize
from genpi.synth.store import read_records

BASH = "examples/bash_agent.txt"


class ScriptedAgent(FakeChatClient):
    """The agent answers turn k of every dialogue with ``script[k]`` = (text, finish_reason)."""

    def __init__(self, script, **kw):
        super().__init__(**kw)
        self.script = script

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None):
        r = super().chat(messages, model=model, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)
        if _role(messages) == "agent":
            turn = sum(m["role"] == "assistant" for m in messages) - _demo_turns(messages)
            text, finish = self.script[min(turn, len(self.script) - 1)]
            return ChatResult(text, prompt_tokens=100, completion_tokens=10, finish_reason=finish, cached_tokens=90)
        return r


def _role(messages) -> str:
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if "[ROLE PLAY]" in system:
        return "env"
    if messages[-1]["content"] == roles.NEXT_REQUEST:
        return "input"
    if "[REASON]" in messages[-1]["content"]:
        return "reason"
    if len(messages) == 1:
        return "as_is"
    return "agent"


def _demo_turns(messages) -> int:
    from genpi.prompt import load_prompt

    return sum(m["role"] == "assistant" for m in load_prompt(BASH).messages)


def cfg(tmp_path, **kw):
    return SynthConfig(prompt=BASH, out=str(tmp_path / "run"), **{"num_inputs": 3, "max_turns": 4, "concurrency": 2, **kw})


BASH_STEP = ("Think: look.\nAct: bash\n```bash\nls /tmp\n```", "stop")


def test_the_derived_end_pattern_ends_the_dialogue_without_asking_the_environment(tmp_path):
    fake = ScriptedAgent([BASH_STEP, ("Think: done.\nAct: answer(3)", "stop")])
    records = read_records(synthesize(cfg(tmp_path), client=fake))
    for r in records:
        assert r["finish"] == "end"
        assert [m["role"] for m in r["dialogue"]] == ["user", "assistant", "user", "assistant"]
        assert r["dialogue"][-1]["content"].endswith("Act: answer(3)")
    assert sum(_role(c["messages"]) == "env" for c in fake.calls) == len(records)  # once per dialogue, after turn 1
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["end_pattern"] and info["counts"]["finish"]["end"] == 3


def test_end_pattern_none_and_a_custom_pattern(tmp_path):
    script = [BASH_STEP, ("Think: done.\nAct: answer(3)", "stop")]
    records = read_records(synthesize(cfg(tmp_path / "a", end_pattern="none", max_turns=3), client=ScriptedAgent(script)))
    assert all(r["finish"] == "max_turns" for r in records)
    records = read_records(synthesize(cfg(tmp_path / "b", end_pattern=r"^```$"), client=ScriptedAgent(script)))  # the fence line
    assert all(r["finish"] == "end" and len(r["dialogue"]) == 2 for r in records)
    with pytest.raises(UserError, match="--end-pattern .* is not a valid regular expression"):
        synthesize(cfg(tmp_path / "c", end_pattern="Act: answer("), client=FakeChatClient())


def test_a_cut_off_agent_turn_ends_the_dialogue_before_it_and_is_kept_only_in_meta(tmp_path):
    cut = "Think: I copy.\nAct: bash\n```bash\ncp -r /srv/a /sr"
    records = read_records(synthesize(cfg(tmp_path), client=ScriptedAgent([BASH_STEP, (cut, "length")])))
    for r in records:
        assert r["finish"] == "truncated"
        assert [m["role"] for m in r["dialogue"]] == ["user", "assistant", "user"]
        assert cut not in json.dumps(r["dialogue"])
        assert r["meta"]["dropped"] == [{"turn": 1, "reason": "truncated", "text": cut}]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["counts"]["dropped_agent_turns"] == {"truncated": 3}
    assert info["counts"]["finish"]["truncated"] == 3


def test_a_cut_off_or_empty_first_turn_leaves_a_record_without_agent_turn_or_reason(tmp_path):
    for name, script, finish in (("a", [("Think: I", "length")], "truncated"), ("b", [("  \n", "stop")], "empty")):
        records = read_records(synthesize(cfg(tmp_path / name), client=ScriptedAgent(script)))
        for r in records:
            assert r["finish"] == finish and r["dialogue"] == [{"role": "user", "content": r["input"]}]
            assert r["to_be"] == "" and r["reason"] == ""
        info = json.loads((tmp_path / name / "run" / "run.json").read_text())
        assert info["counts"]["trainable"] == 0


def test_end_markers_never_reach_the_dialogue(tmp_path):
    records = read_records(synthesize(cfg(tmp_path, end_pattern="none"), client=ScriptedAgent([("Think: all set.\nAct: finish <END>", "stop")])))
    for r in records:
        assert r["finish"] == "end"
        assert r["dialogue"][1]["content"] == "Think: all set.\nAct: finish"
        assert "<END>" not in json.dumps(r["dialogue"])


def test_each_role_gets_its_own_temperature(tmp_path):
    fake = ScriptedAgent([BASH_STEP, ("Think: done.\nAct: finish", "stop")])
    synthesize(cfg(tmp_path, agent_temperature=0.0, env_temperature=0.6, inputs_temperature=0.9, reason_temperature=0.3),
               client=fake)
    seen = {}
    for c in fake.calls:
        seen.setdefault(_role(c["messages"]), set()).add(c["temperature"])
    assert seen == {"input": {0.9}, "as_is": {0.0}, "agent": {0.0}, "env": {0.6}, "reason": {0.3}}


def test_the_summary_counts_reused_prompt_tokens(tmp_path, capsys):
    from rich.console import Console

    synthesize(cfg(tmp_path), client=ScriptedAgent([("Think: done.\nAct: finish", "stop")]), console=Console(width=200))
    out = capsys.readouterr().out
    assert "prompt tokens computed / reused" in out
    run = json.loads((tmp_path / "run" / "run.json").read_text())["runs"][-1]
    assert run["cached_prompt_tokens"] == 90 * 3  # one agent turn per record, as the fake server reported it


@pytest.mark.parametrize("key", ["agent_temperature", "env_temperature", "inputs_temperature", "reason_temperature"])
def test_temperatures_out_of_range_are_user_errors(tmp_path, key):
    with pytest.raises(UserError, match=f"--{key.replace('_', '-')} must be between 0 and 2"):
        synthesize(cfg(tmp_path, **{key: 3.0}), client=FakeChatClient())


def test_each_side_stops_where_it_starts_writing_the_other_sides_words(tmp_path):
    hallucinated = "Think: count.\nAct: bash\n```bash\nls | wc -l\n```\nThe output of the OS:\n17"
    fake = ScriptedAgent([(hallucinated, "stop"), ("Think: done.\nAct: answer(17)", "stop")])
    records = read_records(synthesize(cfg(tmp_path), client=fake))
    agent_stops = {tuple(c["stop"]) for c in fake.calls if _role(c["messages"]) == "agent"}
    env_stops = {tuple(c["stop"]) for c in fake.calls if _role(c["messages"]) == "env"}
    assert agent_stops == {("The output of the OS:", "My problem is:")} and env_stops == {("\nAct:", "\nThink:")}
    for r in records:  # the fake server ignores `stop`: the reply is cut where the environment's words begin
        assert r["dialogue"][1]["content"] == "Think: count.\nAct: bash\n```bash\nls | wc -l\n```"
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["stop"]["agent"] == ["The output of the OS:", "My problem is:"]


def test_inputs_only_makes_a_held_out_set_without_records(tmp_path, capsys):
    from rich.console import Console

    from genpi.eval.heldout import load_heldout

    fake = FakeChatClient()
    synthesize(cfg(tmp_path, num_inputs=5, inputs_only=True), client=fake, console=Console(width=200))
    out = capsys.readouterr().out
    assert "│ inputs " in out and "5 / 5" in out and "records" not in out  # not "0 / 5 records"
    assert not (tmp_path / "run" / "records.jsonl").exists()
    assert {_role(c["messages"]) for c in fake.calls} == {"input"}
    held = load_heldout(tmp_path / "run")
    assert len(held.items) == 5 and all(it.input and not it.dialogue for it in held.items)
    records = read_records(synthesize(cfg(tmp_path, num_inputs=5), client=FakeChatClient()))  # now with records
    assert sorted(r["input"] for r in records) == sorted(it.input for it in held.items)
