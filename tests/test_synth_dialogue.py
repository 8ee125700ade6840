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
    return SynthConfig(out=str(tmp_path / "run"), **{"prompt": BASH, "num_inputs": 3, "max_turns": 4, "concurrency": 2, **kw})


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


BASH_STEP_2 = ("Think: count them.\nAct: bash\n```bash\nls /tmp | wc -l\n```", "stop")


def test_end_pattern_none_and_a_custom_pattern(tmp_path):
    script = [BASH_STEP, BASH_STEP_2, ("Think: done.\nAct: answer(3)", "stop")]
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
    seeds = tmp_path / "seeds.txt"  # real inputs are not screened: their records are made whatever the reply
    seeds.write_text("Count the files in /etc.\nHow big is /var/log?\nWhich user owns /srv/data?\n")
    for name, script, finish in (("a", [("Think: I", "length")], "truncated"), ("b", [("  \n", "stop")], "empty")):
        records = read_records(synthesize(cfg(tmp_path / name, seed_inputs=str(seeds)), client=ScriptedAgent(script)))
        assert len(records) == 3
        for r in records:
            assert r["finish"] == finish and r["dialogue"] == [{"role": "user", "content": r["input"]}]
            assert r["to_be"] == "" and r["reason"] == ""
        info = json.loads((tmp_path / name / "run" / "run.json").read_text())
        assert info["counts"]["trainable"] == 0 and info["counts"]["yield"]["trainable_share"] == 0.0
        assert info["counts"]["yield"]["seconds_per_trainable_record"] is None


class BudgetAgent(ScriptedAgent):
    """An agent whose every turn needs more than 128 tokens: cut off below that budget, whole at or above it."""

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None, **kw):
        r = super().chat(messages, model=model, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)
        if _role(messages) == "agent" and max_tokens < 200:
            return ChatResult(r.text[:12], prompt_tokens=100, completion_tokens=max_tokens, finish_reason="length")
        return r


def test_a_cut_off_turn_is_regenerated_with_a_larger_budget_and_the_dialogue_ends(tmp_path):
    fake = BudgetAgent([BASH_STEP, ("Think: done.\nAct: answer(3)", "stop")])
    records = read_records(synthesize(cfg(tmp_path, max_new_tokens=128), client=fake))
    assert len(records) == 3
    for r in records:
        assert r["finish"] == "end" and r["to_be"] == BASH_STEP[0]
        assert r["dialogue"][-1]["content"] == "Think: done.\nAct: answer(3)"
        assert r["meta"]["regenerated"] == [0, 1] and r["meta"]["dropped"] == []
    budgets = sorted({c["max_tokens"] for c in fake.calls if _role(c["messages"]) == "agent"})
    assert budgets == [128, 256]  # twice --max-new-tokens by default
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["counts"]
    assert counts["finish"]["end"] == 3 and counts["regenerated_agent_turns"] == 6
    assert counts["yield"]["trainable_share"] == 1.0
    assert counts["yield"]["agent_turns_generated"] == counts["agent_turns"] + 6 == 12


def test_regenerate_max_new_tokens_sets_the_second_budget_and_a_second_cut_off_is_dropped(tmp_path):
    fake = BudgetAgent([BASH_STEP])
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Count the files in /etc.\n")
    records = read_records(synthesize(cfg(tmp_path, num_inputs=1, seed_inputs=str(seeds), max_new_tokens=64,
                                          regenerate_max_new_tokens=150), client=fake))
    assert {c["max_tokens"] for c in fake.calls if _role(c["messages"]) == "agent"} == {64, 150}
    assert records[0]["finish"] == "truncated" and records[0]["meta"]["regenerated"] == [0]


class CheckedAgent(ScriptedAgent):
    """Follows the bash protocol for requests with an even number in them, and chats for the others."""

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None, **kw):
        r = super().chat(messages, model=model, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)
        if _role(messages) == "agent" and int(messages[-1]["content"].split("number ")[1].split()[0]) % 2:
            return ChatResult("Sure, I can look into that for you!", prompt_tokens=100, finish_reason="stop")
        return r


def test_an_input_whose_first_reply_fails_the_checker_is_rejected_by_the_screen(tmp_path):
    fake = CheckedAgent([("Think: done.\nAct: finish", "stop")])
    run = synthesize(cfg(tmp_path, num_inputs=4, checker="examples/bash_agent.checks.py:protocol"), client=fake)
    calls = [json.loads(line) for line in (run / "inputs.jsonl").read_text().splitlines()]
    rejected = [row for c in calls for row in c["rejected"] if row["reason"] == "reply fails the checker"]
    accepted = [row for c in calls for row in c["accepted"]]
    number = lambda text: int(text.split("number ")[1].split()[0])  # noqa: E731
    assert rejected and all(number(row["input"]) % 2 for row in rejected)
    assert rejected[0]["reply"]["check"] == "no Think: line"  # the checker's reason is kept with the input
    assert len(accepted) == 4 and not any(number(row["input"]) % 2 for row in accepted)
    records = read_records(run)
    assert all(r["to_be"] == "Think: done.\nAct: finish" for r in records)
    y = json.loads((run / "run.json").read_text())["counts"]["yield"]
    assert y["inputs_passing_reply_screen"] == 4 and y["inputs_screened_by_reply"] == 4 + len(rejected)


def test_without_the_screen_inputs_are_kept_whatever_the_reply(tmp_path):
    fake = CheckedAgent([("Think: done.\nAct: finish", "stop")])
    run = synthesize(cfg(tmp_path, num_inputs=4, screen_by_reply=False), client=fake)
    calls = [json.loads(line) for line in (run / "inputs.jsonl").read_text().splitlines()]
    assert not any(row["reason"].startswith("reply") for c in calls for row in c["rejected"])
    assert json.loads((run / "run.json").read_text())["counts"]["yield"]["inputs_screened_by_reply"] == 0


def test_a_bad_checker_is_a_user_error_before_the_run_directory_is_made(tmp_path):
    with pytest.raises(UserError, match="checker"):
        synthesize(cfg(tmp_path, checker="nothing.py"), client=FakeChatClient())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sampler,continued", [("magpie", {True}), ("both", {True, False}), ("roleswap", {False})])
def test_magpie_sampling_continues_an_open_user_turn_after_the_prompt(tmp_path, sampler, continued):
    fake = FakeChatClient()
    synthesize(cfg(tmp_path, num_inputs=4, input_sampler=sampler, inputs_only=True), client=fake)
    proposals = [c for c in fake.calls if c["continue_final"] or c["messages"][-1]["content"] == roles.NEXT_REQUEST]
    assert {c["continue_final"] for c in proposals} == continued
    for c in proposals:
        if c["continue_final"]:  # the transcript's demonstrations, then its open user turn with nothing written yet
            assert c["messages"][:-1] == [dict(m) for m in __import__("genpi.prompt").prompt.load_prompt(BASH).messages]
            assert c["messages"][-1]["role"] == "user" and c["messages"][-1]["content"].endswith("\n\n")


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

    fake = ScriptedAgent([("Think: done.\nAct: finish", "stop")])
    synthesize(cfg(tmp_path), client=fake, console=Console(width=200))
    out = capsys.readouterr().out
    assert "prompt tokens computed / reused" in out
    run = json.loads((tmp_path / "run" / "run.json").read_text())["runs"][-1]
    agent_calls = sum(_role(c["messages"]) == "agent" for c in fake.calls)
    assert run["cached_prompt_tokens"] == 90 * agent_calls  # as the fake server reported it
    # Each record's first agent turn is the reply its input was screened by: one agent call per proposal screened.
    assert agent_calls == json.loads((tmp_path / "run" / "run.json").read_text())["counts"]["yield"]["inputs_screened_by_reply"] + 1


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
    assert {_role(c["messages"]) for c in fake.calls} == {"input", "agent"}  # the agent's first replies screen them
    held = load_heldout(tmp_path / "run")
    assert len(held.items) == 5 and all(it.input and not it.dialogue for it in held.items)
    records = read_records(synthesize(cfg(tmp_path, num_inputs=5), client=FakeChatClient()))  # now with records
    assert sorted(r["input"] for r in records) == sorted(it.input for it in held.items)


def test_a_resumed_run_takes_the_first_turn_from_the_stored_screened_reply(tmp_path):
    script = [BASH_STEP, ("Think: done.\nAct: answer(3)", "stop")]
    synthesize(cfg(tmp_path, inputs_only=True), client=ScriptedAgent(script))  # inputs and their screened replies
    fake = ScriptedAgent(script)
    records = read_records(synthesize(cfg(tmp_path), client=fake))  # the same run, now with its records
    first_turn_calls = [c for c in fake.calls if _role(c["messages"]) == "agent"
                        and sum(m["role"] == "assistant" for m in c["messages"]) == _demo_turns(c["messages"])]
    assert first_turn_calls == [] and not any(_role(c["messages"]) == "input" for c in fake.calls)
    assert len(records) == 3 and all(r["to_be"] == BASH_STEP[0] and r["finish"] == "end" for r in records)


def test_an_agent_turn_that_repeats_an_earlier_one_is_dropped_and_ends_the_dialogue(tmp_path):
    records = read_records(synthesize(cfg(tmp_path), client=ScriptedAgent([BASH_STEP, BASH_STEP_2, BASH_STEP])))
    for r in records:
        assert r["finish"] == "repeat"
        assert [m["content"] for m in r["dialogue"][1::2]] == [BASH_STEP[0], BASH_STEP_2[0]]
        assert r["meta"]["dropped"] == [{"turn": 2, "reason": "repeat", "text": BASH_STEP[0]}]
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["counts"]
    assert counts["finish"]["repeat"] == 3 and counts["trainable"] == 3


class PlainUser(FakeChatClient):
    """A plain prompt's other side: the user writes ``replies[k]`` after agent turn k; agent turns differ by turn."""

    def __init__(self, replies, **kw):
        super().__init__(**kw)
        self.replies = replies

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None, **kw):
        r = super().chat(messages, model=model, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop, **kw)
        if _role(messages) == "env":
            closing = 3 if messages[3]["content"] == "<END>" else 0  # the replayed exchange, when there is one
            turn = sum(m["role"] == "user" for m in messages[1 + closing:]) - 1
            return ChatResult(self.replies[min(turn, len(self.replies) - 1)], finish_reason="stop")
        if _role(messages) == "agent":
            turn = sum(m["role"] == "assistant" for m in messages)
            return ChatResult(f"Reply {turn}: open Settings, then Sync.", finish_reason="stop")
        return r


def plain(tmp_path):
    p = tmp_path / "persona.txt"
    p.write_text("You are Milo, the support assistant of a note-taking app. Answer briefly and kindly.")
    return str(p)


@pytest.mark.parametrize("reply,reason", [
    ("I'm sorry for any confusion, but as a support assistant I cannot help with printing.", "the agent's voice"),
    ("How can I help you today?", "assistant talk"),
    ("Reply 0: open Settings, then Sync.", "repeats the dialogue"),
])
def test_a_plain_prompts_user_side_that_leaves_its_role_ends_the_dialogue(tmp_path, reply, reason):
    records = read_records(synthesize(cfg(tmp_path, prompt=plain(tmp_path)), client=PlainUser([reply])))
    for r in records:
        assert r["finish"] == "off_role" and r["meta"]["off_role"] == {"turn": 0, "reason": reason}
        assert [m["role"] for m in r["dialogue"]] == ["user", "assistant"]  # the slipped reply is not a user turn
        assert r["meta"]["env_raw"] == [reply]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["counts"]["finish"]["off_role"] == 3


def test_a_plain_prompts_user_side_that_stays_in_role_goes_on(tmp_path):
    records = read_records(synthesize(cfg(tmp_path, prompt=plain(tmp_path), max_turns=2),
                                      client=PlainUser(["It still shows the old note on my phone."])))
    assert all(r["finish"] == "max_turns" and len(r["dialogue"]) == 4 for r in records)


def test_a_plain_prompts_user_view_replays_another_inputs_exchange_closed_by_the_end_marker(tmp_path):
    fake = PlainUser(["Thanks, that fixed it."])
    records = read_records(synthesize(cfg(tmp_path, prompt=plain(tmp_path)), client=fake))
    first = {r["input"]: r["dialogue"][1]["content"] for r in records}
    views = [c["messages"] for c in fake.calls if _role(c["messages"]) == "env"]
    assert views
    for view in views:
        request, reply, marker = view[1:4]
        assert (request["role"], reply["role"], marker) == ("assistant", "user", {"role": "assistant", "content": "<END>"})
        assert request["content"] != view[4]["content"]  # another input than the dialogue's own
        assert first[request["content"]] == reply["content"]  # its screened first reply, which its record starts with
    bash = ScriptedAgent([BASH_STEP, BASH_STEP_2])  # a transcript prompt replays its own demonstration instead
    synthesize(cfg(tmp_path / "bash", max_turns=2), client=bash)
    assert not any(m["content"] in first for c in bash.calls if _role(c["messages"]) == "env" for m in c["messages"])
