import json

import pytest

from genpi.errors import UserError
from genpi.prompt import load_prompt, parse_prompt, student_messages


def test_plain_text_is_one_system_message():
    p = parse_prompt("  You are a helpful pirate.\n")
    assert p.kind == "text"
    assert p.messages == ({"role": "system", "content": "You are a helpful pirate."},)
    assert p.teacher_messages("hi") == [{"role": "system", "content": "You are a helpful pirate."}, {"role": "user", "content": "hi"}]
    assert p.demonstrations == []


def test_transcript_turns_preamble_and_open_user_turn():
    text = "Be terse.\n<USER>: Do A\nplease\n<AGENT>: Done A\n<USER>: Next task:\n"
    p = parse_prompt(text)
    assert p.kind == "transcript"
    assert p.system == "Be terse."
    assert p.demonstrations == [{"role": "user", "content": "Do A\nplease"}, {"role": "assistant", "content": "Done A"}]
    assert p.input_prefix == "Next task:"
    assert p.teacher_messages("do B")[-1] == {"role": "user", "content": "Next task:\n\ndo B"}


def test_transcript_ending_with_agent_has_no_prefix():
    p = parse_prompt("<USER>: a b\n<AGENT>: c d\n")
    assert p.input_prefix == ""
    assert p.teacher_messages("x")[-1] == {"role": "user", "content": "x"}


@pytest.mark.parametrize("text,needle", [
    ("<USER>: a\n<USER>: b\n<AGENT>: c\n", "two <USER> turns in a row"),
    ("<AGENT>: hello\n<USER>:\n", "must start with a <USER>: turn"),
    ("<USER>: a\n<AGENT>:\n<USER>: b\n<AGENT>: c\n", "empty <AGENT> turn"),
])
def test_malformed_transcripts_name_the_line(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_prompt(text, source="p.txt")


def test_chat_json(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]))
    p = load_prompt(f)
    assert p.kind == "chat" and p.system == "S" and len(p.demonstrations) == 2


@pytest.mark.parametrize("payload,needle", [
    ('[{"role": "bot", "content": "x"}]', "message 0 must be"),
    ("[]", "empty chat list"),
    ('[{"role": "system", "content": "x"', "does not parse"),
    ('[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]', "last message is a user turn"),
])
def test_bad_chat_json(tmp_path, payload, needle):
    f = tmp_path / "p.json"
    f.write_text(payload)
    with pytest.raises(UserError, match=needle):
        load_prompt(f)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_prompt(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(UserError, match="is empty"):
        load_prompt(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x7fELF\x00\x01\x02")
    with pytest.raises(UserError, match="is binary"):
        load_prompt(tmp_path / "bin.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_prompt(tmp_path / "latin.txt")


def test_hash_depends_on_content_only(tmp_path):
    assert parse_prompt("A", source="x").hash == parse_prompt("A", source="y").hash
    assert parse_prompt("A").hash != parse_prompt("B").hash


def test_examples_parse_and_are_long_enough(smol_tokenizer):
    for name, kind in (("examples/bash_agent.txt", "transcript"), ("examples/support_agent.txt", "transcript")):
        p = load_prompt(name)
        assert p.kind == kind
        assert 300 <= p.token_length(smol_tokenizer) <= 1500


def test_support_example_is_a_system_preamble_with_demonstrations():
    p = load_prompt("examples/support_agent.txt")
    assert p.system.startswith("You are Aria") and p.input_prefix == "Customer message:"
    assert [m["role"] for m in p.demonstrations] == ["user", "assistant"] * 3


def test_student_messages_have_no_prompt():
    assert student_messages("hi") == [{"role": "user", "content": "hi"}]


def test_a_byte_order_mark_does_not_change_the_kind(tmp_path):
    chat = tmp_path / "chat.json"
    chat.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"role": "system", "content": "Be brief."}]).encode())
    assert load_prompt(chat).kind == "chat"
    transcript = tmp_path / "t.txt"
    transcript.write_bytes(b"\xef\xbb\xbf<USER>: hi\n\n<AGENT>: Act: bash ls\n\n<USER>: Task:")
    p = load_prompt(transcript)
    assert p.kind == "transcript" and p.input_prefix == "Task:"
