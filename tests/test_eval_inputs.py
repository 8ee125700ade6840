"""Unit tests of the evaluation's inputs, systems and bookkeeping: no model is loaded."""

import json
from pathlib import Path

import pytest

from genpi.cli import main
from genpi.config import EvalConfig
from genpi.errors import UserError
from genpi.eval import cost
from genpi.eval.evaluate import evaluate
from genpi.eval.heldout import check_overlap, load_heldout
from genpi.synth.dedup import normalize as normalize_input
from genpi.eval.multiturn import replay_turns
from genpi.eval.reconstruction import reconstruction_score
from genpi.prompt import pg_question as question
from genpi.prompt import strip_reason
from genpi.eval.report import plot, quality_metrics, tables
from genpi.adapter import AdapterInfo
from genpi.eval.systems import adapter_system, build_systems
from genpi.prompt import load_prompt
from eval_fixtures import BASH_PROMPT, write_run


@pytest.fixture(scope="module")
def prompt():
    return load_prompt(BASH_PROMPT)


def fake_adapter(path: Path, **info) -> Path:
    """The files evaluation reads before loading any weights."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "genpi.json").write_text(json.dumps({"strategy": "genpi", "base_model": "default", "student_context": [], **info}))
    return path


# --- held-out inputs


def test_plain_file_one_input_per_line(tmp_path):
    f = tmp_path / "inputs.txt"
    f.write_text("List the files in /etc.\n\n  Count the users.  \n")
    held = load_heldout(f)
    assert held.kind == "file"
    assert [i.input for i in held.items] == ["List the files in /etc.", "Count the users."]
    assert all(not i.dialogue for i in held.items)


def test_jsonl_file_and_limit(tmp_path):
    f = tmp_path / "traffic.jsonl"
    f.write_text('{"input": "first"}\n{"input": "second", "id": "b"}\n{"input": "third"}\n')
    held = load_heldout(f, limit=2)
    assert [(i.id, i.input) for i in held.items] == [("line1", "first"), ("b", "second")]


@pytest.mark.parametrize("content,message", [
    ('{"input": "ok"}\n{"input": \n', "line 2 is not valid JSON"),
    ('{"input": "ok"}\n{"text": "no input field"}\n', 'line 2 has no non-empty "input"'),
    ("\n\n", "holds no inputs"),
])
def test_bad_input_files_are_user_errors(tmp_path, content, message):
    f = tmp_path / "inputs.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_heldout(f)


def test_missing_inputs_and_non_run_directories(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_heldout(tmp_path / "nope")
    with pytest.raises(UserError, match="directory without run.json"):
        load_heldout(tmp_path)


def test_run_directory_gives_inputs_and_dialogues(tmp_path, prompt):
    run = write_run(tmp_path / "held", prompt.hash, ["Count the users.", "Find big files."], turns=2)
    held = load_heldout(run, prompt.hash)
    assert held.kind == "run" and [i.input for i in held.items] == ["Count the users.", "Find big files."]
    assert [m["role"] for m in held.items[0].dialogue] == ["user", "assistant", "user", "assistant"]
    assert held.items[0].to_be == held.items[0].dialogue[1]["content"]


def test_run_for_another_prompt_is_refused(tmp_path, prompt):
    run = write_run(tmp_path / "held", "0123456789abcdef", ["Count the users."])
    with pytest.raises(UserError, match="another prompt"):
        load_heldout(run, prompt.hash)


def test_normalize_input():
    assert normalize_input("  List FILES in /etc! ") == normalize_input("list files in etc")
    assert normalize_input("Ｃｏｕｎｔ  users") == "count users"  # full-width letters fold (NFKC)
    assert normalize_input("Zähle die Nutzer") == "zähle die nutzer"  # non-ASCII words are kept


def test_overlap_check_fails_a_leaking_run(tmp_path, prompt):
    train = write_run(tmp_path / "train", prompt.hash, ["List the files in /etc.", "Count the users."])
    held = load_heldout(write_run(tmp_path / "held", prompt.hash, ["Find big files.", "count the USERS"]), prompt.hash)
    with pytest.raises(UserError, match=r"1 of 2 held-out inputs .* are training inputs of .*train.*count the USERS"):
        check_overlap(held, train)


def test_overlap_check_catches_near_duplicates(tmp_path, prompt):
    train = write_run(tmp_path / "train", prompt.hash, ["Count the users in /etc/passwd on this machine."])
    held = load_heldout(write_run(tmp_path / "held", prompt.hash, ["Count all the users in /etc/passwd on this machine"]),
                        prompt.hash)
    with pytest.raises(UserError, match="1 of 1 held-out inputs"):
        check_overlap(held, train)


def test_overlap_check_passes_disjoint_inputs(tmp_path, prompt):
    train = write_run(tmp_path / "train", prompt.hash, ["List the files in /etc."])
    held = load_heldout(write_run(tmp_path / "held", prompt.hash, ["Find big files."]), prompt.hash)
    check_overlap(held, train)  # no error


def test_evaluate_refuses_leaking_inputs_before_loading_a_model(tmp_path, prompt):
    run = write_run(tmp_path / "run", prompt.hash, ["List the files in /etc.", "Count the users."])
    adapter = fake_adapter(tmp_path / "adapter", prompt_hash=prompt.hash, source_run=str(run))
    config = EvalConfig(prompt=str(BASH_PROMPT), inputs=str(run), adapter=[str(adapter)], out=str(tmp_path / "out"))
    with pytest.raises(UserError, match="2 of 2 held-out inputs"):
        evaluate(config)
    assert not (tmp_path / "out").exists()


def test_evaluate_names_a_missing_training_run(tmp_path, prompt):
    held = write_run(tmp_path / "held", prompt.hash, ["Find big files."])
    adapter = fake_adapter(tmp_path / "adapter", prompt_hash=prompt.hash, source_run=str(tmp_path / "gone"))
    config = EvalConfig(prompt=str(BASH_PROMPT), inputs=str(held), adapter=[str(adapter)])
    with pytest.raises(UserError, match=r"training run .*gone.* does not exist.*--train-run.*--no-overlap-check"):
        evaluate(config)


# --- multi-turn replay


def test_replay_turns_uses_the_teachers_history(tmp_path, prompt):
    held = load_heldout(write_run(tmp_path / "held", prompt.hash, ["Count the users.", "Find big files."], turns=2))
    turns = replay_turns(held, limit=10)
    assert [(t.id, t.turn) for t in turns] == [("r0", 1), ("r0", 2), ("r1", 1), ("r1", 2)]
    first, second = turns[0], turns[1]
    assert first.conversation == [{"role": "user", "content": "Count the users."}]
    assert first.reference == held.items[0].dialogue[1]["content"]
    assert second.conversation == held.items[0].dialogue[:3]  # input, teacher turn 1, OS output
    assert second.reference == held.items[0].dialogue[3]["content"]
    assert len(replay_turns(held, limit=3)) == 3


def test_replay_turns_skips_failed_records_and_empty_turns(tmp_path, prompt):
    run = write_run(tmp_path / "held", prompt.hash, ["Count the users.", "Find big files."], turns=2)
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    records[0]["finish"] = "error"
    records[1]["dialogue"][1]["content"] = "  "
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    turns = replay_turns(load_heldout(run), limit=10)
    assert [(t.id, t.turn) for t in turns] == [("r1", 2)]


# --- systems


def test_systems_see_the_same_conversation_with_their_own_context(tmp_path, prompt):
    context = [{"role": "system", "content": "You are an agent."}]
    adapter = fake_adapter(tmp_path / "bash", prompt_hash=prompt.hash, student_context=context)
    baseline = fake_adapter(tmp_path / "other", prompt_hash=prompt.hash, strategy="seqkd", student_context=context)
    systems, base = build_systems(prompt, [str(adapter)], [str(baseline)])
    assert base == "default"
    assert [s.name for s in systems] == ["prompted", "unprompted", "genpi:bash", "seqkd"]
    turns = [{"role": "user", "content": "Count the users."}, {"role": "assistant", "content": "Think: a\nAct: finish"},
             {"role": "user", "content": "The output of the OS:\n3"}]
    teacher = systems[0].messages(prompt, turns)
    assert teacher[: len(prompt.messages)] == list(prompt.messages)
    assert teacher[len(prompt.messages)]["content"] == prompt.teacher_messages("Count the users.")[-1]["content"]
    assert teacher[-2:] == turns[1:]
    for s in systems[1:]:
        assert s.messages(prompt, turns) == context + turns  # bare input, as in training


def test_adapter_errors_are_user_errors(tmp_path, prompt):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no adapter_config.json"):
        adapter_system(tmp_path / "empty", "adapter")
    (tmp_path / "empty" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="has no genpi.json"):
        adapter_system(tmp_path / "empty", "adapter")
    other = fake_adapter(tmp_path / "other", prompt_hash="0123456789abcdef")
    with pytest.raises(UserError, match="trained for another prompt"):
        build_systems(prompt, [str(other)], [])
    a = fake_adapter(tmp_path / "a", prompt_hash=prompt.hash)
    b = fake_adapter(tmp_path / "b", prompt_hash=prompt.hash, student_context=[{"role": "system", "content": "x"}])
    with pytest.raises(UserError, match="different student contexts"):
        build_systems(prompt, [str(a), str(b)], [])


def test_same_strategy_baselines_get_distinct_names(tmp_path, prompt):
    one = fake_adapter(tmp_path / "x" / "seqkd", prompt_hash=prompt.hash, strategy="seqkd")
    two = fake_adapter(tmp_path / "y" / "seqkd", prompt_hash=prompt.hash, strategy="seqkd")
    systems, _ = build_systems(prompt, [], [str(one), str(two)])
    assert [s.name for s in systems[2:]] == ["seqkd (x/seqkd)", "seqkd (y/seqkd)"]


# --- prompt reconstruction


def test_reconstruction_question_and_scoring(prompt):
    q = question("Count the users.", "There are many users.", "Think: I count.\nAct: finish")
    assert "Count the users." in q and "There are many users." in q and "Act: finish" in q
    assert strip_reason("The prompt text.\n\nReason: because.") == "The prompt text."
    assert strip_reason("No reason here.") == "No reason here."
    assert reconstruction_score(prompt.text + "\n\nReason: it sets the protocol.", prompt.text) == 1.0
    assert reconstruction_score("I am a helpful assistant.", prompt.text) < 0.05


# --- cost


def test_flops_and_break_even():
    assert cost.flops_per_request(100, 30, 10) == 8000
    assert cost.training_flops(100, 1000, 500) == 6 * 100 * 1000 + 2 * 100 * 500
    assert cost.break_even(1e6, 2e3) == 500
    assert cost.break_even(None, 2e3) is None
    assert cost.break_even(1e6, 0) is None  # nothing saved: never pays back
    info = AdapterInfo(train_tokens=1234, teacher_tokens=10)
    assert (info.trained_tokens, info.teacher_tokens) == (1234, 10)
    assert (AdapterInfo().trained_tokens, AdapterInfo().teacher_tokens) == (None, 0)
    assert cost.ratio(10, 4) == 2.5 and cost.ratio(None, 4) is None and cost.ratio(1, 0) is None


# --- report rendering


def _hand_report():
    def system(kind, rouge, checker, tokens):
        return {"kind": kind, "adapter": None, "strategy": None, "student_context": [], "failures": {},
                "metrics": {"rouge_l": rouge, "exact_match": rouge / 2, "protocol": checker,
                            "multiturn_rouge_l": rouge, "prompt_reconstruction": None if kind == "prompted" else 0.1,
                            "input_tokens": tokens, "output_tokens": 20.0, "flops_per_request": 2.0e9 * tokens}}

    undefined = {"ratio": None, "defined": False, "reason": "x", "gap": 0.0, "gap_ci": [0, 0], "ratio_ci": None, "n": 3}
    return {
        "inputs": {"n": 3, "source": "held"},
        "systems": {"prompted": system("prompted", 1.0, 0.9, 800.0), "unprompted": system("unprompted", 0.2, 0.0, 40.0),
                    "genpi:bash": system("adapter", 0.6, 0.5, 40.0)},
        "recovery": {"genpi:bash": {"rouge_l": {**undefined, "ratio": 0.5, "defined": True, "ratio_ci": [0.4, 0.6]},
                                    "protocol": undefined}},
        "cost": {"params": 135_000_000, "prompt_tokens": 777, "compared": "genpi:bash", "input_token_ratio": 20.0,
                 "latency": {}, "break_even": {}},
    }


def test_report_tables_and_chart(tmp_path):
    from rich.console import Console

    report = _hand_report()
    assert quality_metrics(report) == ["rouge_l", "exact_match", "protocol", "multiturn_rouge_l",
                                       "prompt_reconstruction"]
    console = Console(record=True, width=160)
    for t in tables(report):
        console.print(t)
    text = console.export_text()
    assert "0.50 [0.40, 0.60]" in text and "undefined" in text and "genpi:bash" in text
    assert "time to first token" not in text  # no latency measured: no rows of dashes
    assert len(tables({**report, "recovery": {}})) == 2  # no adapter: no recovery table
    latency = {"prompted": {"prefill_s": 1.5, "e2e_s": 4.0}, "genpi:bash": {"prefill_s": 0.25, "e2e_s": 2.0}}
    console = Console(record=True, width=160)
    console.print(tables({**report, "cost": {**report["cost"], "latency": latency}})[-1])
    text = console.export_text()
    assert "time to first token s (median)" in text and "0.250" in text
    plot(report, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- CLI


def test_eval_cli_user_error_is_one_line(tmp_path, capsys):
    code = main(["eval", "--prompt", str(BASH_PROMPT), "--inputs", str(tmp_path / "missing.txt")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genpi: error: --inputs") and "does not exist" in err and "\n" not in err


def test_eval_cli_rejects_an_unknown_checker(tmp_path, capsys):
    f = tmp_path / "inputs.txt"
    f.write_text("Count the users.\n")
    assert main(["eval", "--prompt", str(BASH_PROMPT), "--inputs", str(f), "--checker", "yaml"]) == 2
    assert "unknown checker 'yaml'" in capsys.readouterr().err
