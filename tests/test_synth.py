"""Synthesis with the fake client: role swap, dedup, store, resume (no model, seconds)."""

import json

import pytest

from genpi.config import SynthConfig
from genpi.errors import UserError
from genpi.prompt import load_prompt, parse_prompt
from genpi.synth import episodes, roles
from genpi.synth.client import ChatResult, FakeChatClient
from genpi.synth.dedup import Deduplicator
from genpi.synth.pipeline import synthesize
from genpi.synth.store import load_run, read_jsonl, read_records

BASH = "examples/bash_agent.txt"
PLAIN = "tests/prompts/invoice_extractor.txt"  # a plain system prompt, no demonstrations


def cfg(tmp_path, prompt=BASH, **kw):
    return SynthConfig(prompt=prompt, out=str(tmp_path / "run"), **{"num_inputs": 6, "max_turns": 3, "concurrency": 3, **kw})


def test_role_swap_replays_the_first_episode_inverted_and_relays_agent_text_verbatim():
    p = load_prompt(BASH)
    agent_text = "Think: look.\nAct: bash\n```bash\nls -la /tmp  \n```\n"  # trailing spaces and newline kept
    dialogue = [{"role": "user", "content": "list /tmp"}, {"role": "assistant", "content": agent_text}]
    env = roles.environment_messages(p, dialogue, "<END>")
    assert env[0]["role"] == "system" and "[ROLE PLAY]" in env[0]["content"]
    first = episodes.episodes(p)[0].turns
    assert env[1 : 1 + len(first)] == [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]}
                                       for m in first]
    assert env[1 + len(first)] == {"role": "assistant", "content": "<END>"}  # the task is over after its final turn
    assert env[-2] == {"role": "assistant", "content": p.teacher_messages("list /tmp")[-1]["content"]}
    assert env[-1] == {"role": "user", "content": agent_text}


def test_the_environment_never_sees_a_demonstrated_turn_that_opens_a_new_task():
    p = load_prompt(BASH)
    env = roles.environment_messages(p, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "<END>")
    later_opening = episodes.episodes(p)[1].turns[0]["content"]
    assert later_opening.startswith("Now, I will start a new problem")
    assert not any(later_opening in m["content"] for m in env)
    # ... but it still sees the environment's replies of that episode (an empty output, a count)
    assert "cp /home/ana/*.csv /tmp/reports/" in env[0]["content"] and "The output of the OS:\n4" in env[0]["content"]


def test_role_swap_for_plain_prompt_plays_the_user():
    p = load_prompt(PLAIN)
    dialogue = [{"role": "user", "content": "my train was late"}, {"role": "assistant", "content": '{"a": 1}'}]
    env = roles.environment_messages(p, dialogue, "<END>")
    assert "You play the user" in env[0]["content"]
    assert env[1:] == [{"role": "assistant", "content": "my train was late"}, {"role": "user", "content": '{"a": 1}'}]


def test_agent_sees_prompt_then_dialogue():
    p = load_prompt(BASH)
    dialogue = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "o1"}]
    msgs = roles.agent_messages(p, dialogue)
    assert msgs[: len(p.messages)] == list(p.messages)
    assert msgs[len(p.messages)]["content"].endswith("\n\nq")
    assert msgs[-2:] == dialogue[1:]
    assert roles.as_is_messages("q") == [{"role": "user", "content": "q"}]


def test_dialogue_relays_agent_message_to_environment(tmp_path):
    fake = FakeChatClient(end_after=2)
    records = read_records(synthesize(cfg(tmp_path, num_inputs=2), client=fake))
    env_calls = [c for c in fake.calls if "[ROLE PLAY]" in c["messages"][0]["content"]]
    assert env_calls
    for rec in records:
        agent_turns = [m["content"] for m in rec["dialogue"] if m["role"] == "assistant"]
        for turn, text in enumerate(agent_turns[:-1]):
            # the environment call for this turn received exactly this agent text as its last message
            assert any(c["messages"][-1] == {"role": "user", "content": text} for c in env_calls)
        assert rec["to_be"] == agent_turns[0]
        assert rec["finish"] == "end" and len(agent_turns) == 2


def test_max_turns_stops_dialogue(tmp_path):
    records = read_records(synthesize(cfg(tmp_path, num_inputs=2, max_turns=2), client=FakeChatClient(end_after=99)))
    for rec in records:
        assert rec["finish"] == "max_turns"
        assert [m["role"] for m in rec["dialogue"]] == ["user", "assistant", "user", "assistant"]


def test_dedup_drops_exact_and_near_duplicates():
    d = Deduplicator()
    assert d.add("How many files are in /tmp?")
    assert not d.add("how many files are in /tmp")
    assert not d.add("How many files are there in /tmp?")
    assert d.add("Delete the empty files in /var/cache.")
    assert not d.add("   ")


def test_dedup_drops_a_paraphrase_that_shares_the_informative_words():
    # Word sets (Jaccard 0.72) and character 4-grams (0.65) differ too much; the rare words they share make it a repeat by
    # TF-IDF cosine. Inputs the synth model really repeated this way (docs/SYNTHESIS.md).
    d = Deduplicator()
    assert d.add("Can you tell me the maximum number of files you can create in /var/log, including directories?")
    assert d.add("Summarise the nginx error log of yesterday.")
    assert not d.add("Can you tell me the maximum number of files you can create in /var/log in a MySQL database?")
    assert d.add("What is the size of /etc/hosts?")
    assert d.add("Which user owns /etc/hosts?")


class RepeatingClient(FakeChatClient):
    """Proposes the same input on every call: the run must stop asking, not loop."""

    def chat(self, messages, *, model, temperature, max_tokens, seed=None, stop=None):
        if messages[-1]["content"] == roles.NEXT_REQUEST:
            return ChatResult("Count the lines in /etc/passwd for me", finish_reason="stop")
        return super().chat(messages, model=model, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop)


def test_repeating_synth_model_ends_with_fewer_inputs(tmp_path):
    records = read_records(synthesize(cfg(tmp_path, num_inputs=5), client=RepeatingClient()))
    assert len(records) == 1
    calls = read_jsonl(tmp_path / "run" / "inputs.jsonl")
    assert sum(len(c["accepted"]) for c in calls) == 1
    assert {r["reason"] for c in calls for r in c["rejected"]} == {"duplicate"}


def test_records_have_the_documented_shape_and_load_as_dataset(tmp_path):
    synthesize(cfg(tmp_path), client=FakeChatClient())
    info, ds = load_run(tmp_path / "run")
    assert len(ds) == 6
    assert set(ds.column_names) == {"id", "index", "input", "as_is", "to_be", "reason", "dialogue", "finish", "meta"}
    assert info.prompt_hash == load_prompt(BASH).hash
    assert info.counts["records"] == 6
    assert sorted(ds["index"]) == list(range(6))


def test_resume_after_torn_write_produces_exactly_the_missing_records(tmp_path):
    c = cfg(tmp_path)
    first = read_records(synthesize(c, client=FakeChatClient()))
    path = tmp_path / "run" / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    kept = lines[:3]
    path.write_bytes(b"".join(kept) + lines[3][: len(lines[3]) // 2])  # a kill in the middle of a write
    fake = FakeChatClient()
    again = read_records(synthesize(c, client=fake))
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert {r["id"] for r in rows} == {r["id"] for r in first} == {r["id"] for r in again}
    # only the three missing records were made again: no new input calls, three AS-IS calls
    assert not any(call["messages"][-1]["content"] == roles.NEXT_REQUEST for call in fake.calls)
    reasons = [call for call in fake.calls if "[REASON]" in call["messages"][-1]["content"]]
    assert len(reasons) == 3


def test_rerun_of_a_finished_run_sends_nothing(tmp_path):
    synthesize(cfg(tmp_path), client=FakeChatClient())
    fake = FakeChatClient()
    synthesize(cfg(tmp_path), client=fake)
    assert fake.calls == []


def test_more_inputs_on_rerun_extends_the_run(tmp_path):
    synthesize(cfg(tmp_path, num_inputs=3), client=FakeChatClient())
    records = read_records(synthesize(cfg(tmp_path, num_inputs=6), client=FakeChatClient()))
    assert len(records) == 6 and len({r["id"] for r in records}) == 6


def test_changed_config_refuses_to_resume(tmp_path):
    synthesize(cfg(tmp_path), client=FakeChatClient())
    with pytest.raises(UserError, match="different config \\(max_turns changed\\)"):
        synthesize(cfg(tmp_path, max_turns=4), client=FakeChatClient())
    records = read_records(synthesize(cfg(tmp_path, max_turns=4, overwrite=True), client=FakeChatClient()))
    assert len(records) == 6


@pytest.mark.parametrize("change,key", [({"checker": "json"}, "checker"), ({"screen_by_reply": False}, "screen_by_reply"),
                                        ({"input_sampler": "both"}, "input_sampler"),
                                        ({"regenerate_max_new_tokens": 50}, "regenerate_max_new_tokens")])
def test_a_changed_screen_sampler_or_regeneration_budget_refuses_to_resume(tmp_path, change, key):
    synthesize(cfg(tmp_path), client=FakeChatClient())
    with pytest.raises(UserError, match=f"different config \\({key} changed\\)"):
        synthesize(cfg(tmp_path, **change), client=FakeChatClient())


def test_changed_prompt_refuses_to_resume(tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("You are agent A. Always answer in French, in one short sentence.")
    synthesize(cfg(tmp_path, prompt=str(prompt)), client=FakeChatClient())
    prompt.write_text("You are agent B. Always answer in German.")
    with pytest.raises(UserError, match="prompt_hash"):
        synthesize(cfg(tmp_path, prompt=str(prompt)), client=FakeChatClient())


def test_failed_generation_is_kept_with_its_error(tmp_path):
    records = read_records(synthesize(cfg(tmp_path, num_inputs=6), client=FakeChatClient(fail_every=7)))
    errors = [r for r in records if r["finish"] == "error"]
    assert errors and all("injected failure" in r["meta"]["error"] for r in errors)
    assert len(records) == 6


def test_dry_run_prints_messages_and_writes_nothing(tmp_path, capsys):
    fake = FakeChatClient()
    synthesize(cfg(tmp_path, dry_run=True), client=fake)
    out = capsys.readouterr().out
    assert fake.calls == [] and not (tmp_path / "run").exists()
    for title in ("1. inputs", "2a. AS-IS", "2b. TO-BE", "3. environment", "4. reason"):
        assert title in out
    assert "ShellPilot" in out


def test_seed_inputs_come_first_and_are_shown_to_the_model_playing_the_user(tmp_path):
    fake = FakeChatClient()
    seeds = [l for l in open("examples/bash_agent.seeds.txt").read().splitlines() if l.strip()]
    records = read_records(synthesize(cfg(tmp_path, num_inputs=len(seeds) + 2, seed_inputs="examples/bash_agent.seeds.txt"), client=fake))
    by_index = sorted(records, key=lambda r: r["index"])
    assert [r["input"] for r in by_index[: len(seeds)]] == seeds
    proposals = [c["messages"] for c in fake.calls if c["messages"][-1]["content"] == roles.NEXT_REQUEST]
    shown = {m["content"] for msgs in proposals for m in msgs if m["role"] == "assistant"}
    assert shown & set(seeds), "seed inputs are among the requests the user side has 'sent' before"
    assert len(records) == len(seeds) + 2


def test_an_out_directory_beneath_a_file_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="cannot create --out .*notes.txt/run"):
        synthesize(SynthConfig(prompt=BASH, out=str(tmp_path / "notes.txt" / "run")), client=FakeChatClient())


@pytest.mark.parametrize("kw,needle", [
    ({"num_inputs": 0}, "--num-inputs must be at least 1"),
    ({"prompt": ""}, "no prompt given"),
    ({"seed_inputs": "nope.txt"}, "seed inputs file nope.txt does not exist"),
    ({"prompt": "missing.txt"}, "prompt file missing.txt does not exist"),
])
def test_bad_settings_are_user_errors(tmp_path, kw, needle):
    with pytest.raises(UserError, match=needle):
        synthesize(cfg(tmp_path, **kw), client=FakeChatClient())
    assert not (tmp_path / "run").exists()


def test_read_jsonl_refuses_a_corrupt_middle_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_jsonl(f)


def test_plain_prompt_records(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("You answer in JSON.")
    records = read_records(synthesize(cfg(tmp_path, prompt=str(p), num_inputs=3), client=FakeChatClient()))
    assert len(records) == 3 and all(r["reason"] for r in records)
    assert parse_prompt("You answer in JSON.").hash == json.loads((tmp_path / "run" / "run.json").read_text())["prompt_hash"]


def test_exclude_run_makes_a_disjoint_held_out_run(tmp_path):
    from genpi.synth.dedup import normalize

    train = read_records(synthesize(cfg(tmp_path, num_inputs=6), client=FakeChatClient()))
    held_cfg = SynthConfig(prompt=BASH, out=str(tmp_path / "held"), num_inputs=4, exclude_run=str(tmp_path / "run"))
    held = read_records(synthesize(held_cfg, client=FakeChatClient()))
    assert len(held) == 4
    assert not {normalize(r["input"]) for r in held} & {normalize(r["input"]) for r in train}
    with pytest.raises(UserError, match="--exclude-run"):
        synthesize(SynthConfig(prompt=BASH, out=str(tmp_path / "x"), exclude_run=str(tmp_path / "nope")), client=FakeChatClient())
    assert not (tmp_path / "x").exists()


def test_rerun_retries_failed_records_and_keeps_the_failures(tmp_path):
    first = read_records(synthesize(cfg(tmp_path, num_inputs=6), client=FakeChatClient(fail_every=7)))
    failed = {r["id"] for r in first if r["finish"] == "error"}
    assert failed
    again = read_records(synthesize(cfg(tmp_path, num_inputs=6), client=FakeChatClient()))
    assert len(again) == 6 and not [r for r in again if r["finish"] == "error"]
    rows = read_jsonl(tmp_path / "run" / "records.jsonl")
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    kept = read_jsonl(tmp_path / "run" / "errors.jsonl")  # the failures are archived, with their errors
    assert {r["id"] for r in kept} == failed and all("injected failure" in r["meta"]["error"] for r in kept)


class _FailingInputsClient(FakeChatClient):
    def chat(self, messages, **kw):
        if messages[-1]["content"] == roles.NEXT_REQUEST:
            raise RuntimeError("the synth model is overloaded")
        return super().chat(messages, **kw)


def test_failing_input_calls_are_kept_and_a_round_of_only_failures_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="every call proposing user inputs failed.*overloaded"):
        synthesize(cfg(tmp_path), client=_FailingInputsClient())
    calls = read_jsonl(tmp_path / "run" / "inputs.jsonl")
    assert calls and all("overloaded" in c["error"] for c in calls)
    # the run is resumable: the same command with a working server completes it
    assert len(read_records(synthesize(cfg(tmp_path), client=FakeChatClient()))) == 6


def test_the_same_seed_gives_the_same_run(tmp_path):
    a = read_records(synthesize(cfg(tmp_path / "a", seed=3), client=FakeChatClient()))
    b = read_records(synthesize(cfg(tmp_path / "b", seed=3), client=FakeChatClient()))
    c = read_records(synthesize(cfg(tmp_path / "c", seed=4), client=FakeChatClient()))
    key = lambda rows: sorted((r["id"], r["input"], r["to_be"], json.dumps(r["dialogue"])) for r in rows)
    assert key(a) == key(b)
    assert [r["input"] for r in sorted(a, key=lambda r: r["index"])] != [r["input"] for r in sorted(c, key=lambda r: r["index"])]


def test_a_failed_server_start_leaves_a_run_the_same_command_resumes(tmp_path, monkeypatch):
    import genpi.models
    import genpi.serving.local

    class NoServer:
        def __init__(self, *a, **kw):
            pass

        def __enter__(self):
            raise UserError("the embedded server exited with code 1 at start")

        def __exit__(self, *exc):
            pass

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setattr(genpi.models, "resolve_model", lambda name: "/models/tiny")
    monkeypatch.setattr(genpi.serving.local, "LocalServer", NoServer)
    with pytest.raises(UserError, match="exited with code 1"):
        synthesize(cfg(tmp_path))
    assert (tmp_path / "run" / "run.json").exists()
    assert len(read_records(synthesize(cfg(tmp_path), client=FakeChatClient()))) == 6  # not "exists and is not a genpi run"


def test_load_run_leaves_a_run_being_written_untouched(tmp_path):
    synthesize(cfg(tmp_path), client=FakeChatClient())
    path = tmp_path / "run" / "records.jsonl"
    torn = path.read_bytes() + b'{"id": "half-writ'
    path.write_bytes(torn)  # as synthesis leaves it mid-write
    _, ds = load_run(tmp_path / "run")
    assert len(ds) == 6
    assert path.read_bytes() == torn  # the writer's line is not cut under it


def test_an_api_key_flag_reaches_no_file(tmp_path):
    secret = "sk-flag-5ecret"
    synthesize(cfg(tmp_path, api_key=secret), client=FakeChatClient())
    for f in (tmp_path / "run").rglob("*"):
        assert secret not in f.read_text(), f.name
    assert "api_key" not in json.loads((tmp_path / "run" / "run.json").read_text())["config"]


def test_diversity_is_low_for_repeated_requests_and_high_for_varied_ones():
    from genpi.synth.diversity import diversity

    same = ["Count the files in /etc.", "Count the files in /etc please.", "Please count the files in /etc."]
    varied = ["Count the files in /etc.", "Which user owns /srv/data?", "How big is the biggest log under /var/log?"]
    a, b = diversity(same), diversity(varied)
    assert a["distinct_2"] < b["distinct_2"] and a["nearest_neighbour_similarity"] > 0.6 > b["nearest_neighbour_similarity"]
    assert diversity(["one input only"])["nearest_neighbour_similarity"] is None
