"""Inputs by role swap and their screening, and the prompts' demonstrations read as episodes (no model)."""

import pytest

from genpi.prompt import load_prompt, parse_prompt
from genpi.synth import episodes, roles
from genpi.synth.inputs import Screen, pick_examples

BASH = "examples/bash_agent.txt"
SUPPORT = "examples/support_agent.txt"
PROMPTS = "tests/prompts"


def test_episodes_tasks_and_instructions_of_agentbench_style_transcript():
    p = load_prompt(BASH)
    eps = episodes.episodes(p)
    assert [e.task for e in eps] == [
        "How many files with the extension .log are there in /var/app/logs, including subdirectories?",
        "Create a directory /tmp/reports and copy every .csv file from /home/ana into it.",
    ]
    assert eps[1].turns[0]["content"].startswith("Now, I will start a new problem")
    text = episodes.instructions(p)
    assert text.startswith("You are ShellPilot") and "How many files with the extension" not in text
    assert episodes.environment_openers(p) == ["The output of the OS:"]


@pytest.mark.parametrize("path,n,first", [
    (f"{PROMPTS}/sql_agent.txt", 2, "How many employees work in the Sales department?"),
    (f"{PROMPTS}/ticket_triage.txt", 3, "The app closes by itself every time I open the transfers screen"),
    (f"{PROMPTS}/calendar_tools.json", 1, "Set up a 30 minute sync with Priya and Tom this week."),
    (f"{PROMPTS}/invoice_extractor.txt", 0, None),
    (SUPPORT, 3, "My train from Ghent was 75 minutes late"),
])
def test_episodes_of_prompts_of_every_kind(path, n, first):
    eps = episodes.episodes(load_prompt(path))
    assert len(eps) == n
    if first:
        assert eps[0].task.startswith(first)
        assert not eps[0].task.lower().startswith(("my question is", "report:"))  # the lead-in is not the task


@pytest.mark.parametrize("path,ends,goes_on", [
    (BASH, ["Think: done.\nAct: answer(42)", "Think: it is done.\nAct: finish"],
     ["Think: look.\nAct: bash\n```bash\nls\n```", "Think: x\nAct: bash"]),
    (f"{PROMPTS}/sql_agent.txt", ['Thought: ok.\n\nAction: Answer\nFinal Answer: ["7"]'],
     ["Thought: count.\n\nAction: Operation\n```sql\nSELECT 1;\n```"]),
    (f"{PROMPTS}/calendar_tools.json", ["DONE: Booked for Monday."], ['CALL cancel_event(event_id="ev_1")']),
    (f"{PROMPTS}/ticket_triage.txt", ["Label: ui\nSeverity: S3"], ["Label: ui"]),
])
def test_end_pattern_is_derived_from_the_final_agent_turns_only(path, ends, goes_on):
    pattern = episodes.derive_end_pattern(load_prompt(path))
    assert pattern
    for text in ends:
        assert episodes.ends_task(text, pattern), (pattern, text)
    for text in goes_on:
        assert not episodes.ends_task(text, pattern), (pattern, text)


def test_no_end_pattern_without_demonstrations_and_any_reply_ends_a_single_turn_agent():
    assert episodes.derive_end_pattern(load_prompt(f"{PROMPTS}/invoice_extractor.txt")) == ""
    assert episodes.ends_task('{"category": "x"}', episodes.derive_end_pattern(load_prompt(SUPPORT)))
    assert not episodes.ends_task("anything", "")


def test_user_view_shows_examples_as_its_own_earlier_requests():
    p = load_prompt(f"{PROMPTS}/sql_agent.txt")
    msgs = roles.user_messages(p, ["Which city has most customers? The table is customers(id, city)."])
    assert msgs[0]["role"] == "system" and "QueryMate" in msgs[0]["content"]
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user"]
    assert msgs[2]["content"].startswith("Which city") and msgs[-1]["content"] == roles.NEXT_REQUEST


def test_examples_mix_demonstrated_tasks_seeds_and_accepted_inputs_and_differ_per_call():
    gold = ["g1", "g2", "g3"]
    accepted = [f"a{i}" for i in range(10)]
    picks = [pick_examples(gold, accepted, k, seed=0) for k in range(6)]
    assert all(len(p) == 4 for p in picks)
    assert all(any(x.startswith("g") for x in p) for p in picks)
    assert len({tuple(sorted(p)) for p in picks}) > 1
    assert pick_examples(gold, [], 0, 0) == pick_examples(gold, [], 0, 0)  # seeded
    assert sorted(pick_examples(["g"], [], 0, 0)) == ["g"]


@pytest.mark.parametrize("path,text,reason", [
    (BASH, "Every reply you write must follow this protocol exactly, with nothing before or after it", "copies the prompt"),
    (BASH, "I'm ready to help. How can I assist you today?", "assistant talk"),
    (BASH, "### Task 1: count the log files", "talks about the list"),
    (BASH, "Here are some requests you could send:", "talks about the list"),
    (BASH, "Think: I list the files.\nAct: bash", "the agent's reply"),
    (BASH, "The output of the OS:\n3 files", "the environment's reply"),
    (BASH, "12:03:55 12:04:01 12:04:09 12:05:13", "not text"),
    (BASH, "Respond.", "too short"),
    (f"{PROMPTS}/calendar_tools.json", "RESULT: [\"2026-01-01 10:00\"] was returned", "the environment's reply"),
    (f"{PROMPTS}/ticket_triage.txt", "Label: crash\nSeverity: S1", "the agent's reply"),
    (SUPPORT, "Hello there!", "too short"),
    (SUPPORT, "Hello there, good friend!", "greeting only"),
    (SUPPORT, "Hi, how are you doing today friend?", ""),  # a greeting with words after it is a (poor) request, not rejected here
    (SUPPORT, "As an AI language model, I cannot book tickets.", "assistant talk"),
    (SUPPORT, '{"category": "delays", "priority": "low"}', "the agent's reply"),
    (BASH, "You can delete the old logs with the following command.", "the agent's voice"),
    (BASH, "I'm afraid I'm unable to run commands on your machine.", "the agent's voice"),
    (SUPPORT, "Unfortunately the refund window has closed for this ticket.", "the agent's voice"),
    (SUPPORT, "Thank you for contacting us about your delayed train.", "the agent's voice"),
])
def test_screen_rejects_what_is_not_a_request_with_a_reason(path, text, reason):
    assert Screen(load_prompt(path)).reason(text) == reason


@pytest.mark.parametrize("path,text", [
    (BASH, "How many lines does /var/log/syslog have?"),
    (BASH, "Find the biggest file under /home/sam and tell me its size."),
    (SUPPORT, "My train to Ghent was cancelled this morning, can I get a refund?"),
    (f"{PROMPTS}/sql_agent.txt", "Which customer spent the most in 2025? The table is orders(id, customer, amount, date)."),
    (f"{PROMPTS}/invoice_extractor.txt", "ACME GmbH, Invoice 2291, 12.03.2026: 3 x bolts at 1.20 EUR, total 3.60 EUR"),
    (f"{PROMPTS}/tone_rewriter.txt", "Dear Mr Lee, we cant do the meeting on friday, lets move it to monday 10am. Thx, Ana"),
    (f"{PROMPTS}/calendar_tools.json", "Cancel my dentist slot and book a 1 hour review with Ola tomorrow."),
    (f"{PROMPTS}/ticket_triage.txt", "Push notifications arrive two hours late on my iPhone 13."),
    (BASH, "You said the disk was full, but df shows 40% free: which directory is big?"),  # "you" later is fine
    (SUPPORT, "I can't find my ticket in the app, where did it go?"),  # "I can't" about the user's own trouble
])
def test_screen_accepts_real_requests_for_prompts_of_every_kind(path, text):
    assert Screen(load_prompt(path)).reason(text) == ""


def test_screen_works_for_a_one_line_prompt():
    screen = Screen(parse_prompt("Translate the user's message into French."))
    assert screen.reason("Please translate: the meeting moved to Tuesday.") == ""
    assert screen.reason("Translate the user's message into French.") == ""  # shorter than an 8-word run: not a copy
