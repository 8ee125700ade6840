"""Training views (unit tier: the real tokenizer, no model weights)."""

from __future__ import annotations

import pytest
import train_fixtures as fx

from genpi.errors import UserError
from genpi.synth.store import RunInfo
from genpi.training.collator import GenPICollator
from genpi.training.run import load_training_run
from genpi.training.views import (
    BEHAVIOUR,
    IGNORE,
    PROMPT_GENERATION,
    build_examples,
    prompt_generation_view,
    render_with_labels,
    supervised_ids,
)


def supervised_runs(tokenizer, ids, labels) -> list[str]:
    """The decoded text of each contiguous run of supervised tokens."""
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


def agent_turns(record) -> list[str]:
    return [m["content"] for m in record["dialogue"] if m["role"] == "assistant"]


def test_behaviour_labels_cover_exactly_the_agent_turns(smol_tokenizer):
    tok = smol_tokenizer
    recs = fx.records(4)
    examples, _ = build_examples(tok, recs, fx.prompt(), max_length=512, prompt_generation=False)
    assert len(examples) == 4
    for ex, rec in zip(examples, recs):
        assert len(ex["input_ids"]) == len(ex["labels"])
        runs = supervised_runs(tok, ex["input_ids"], ex["labels"])
        assert runs == [turn + tok.eos_token for turn in agent_turns(rec)]
        assert tok.eos_token == "<|im_end|>"
        # labels equal the ids where supervised: no shifting happens in the view
        assert all(lab in (IGNORE, t) for t, lab in zip(ex["input_ids"], ex["labels"]))


def test_behaviour_view_is_the_student_context_with_the_bare_input(smol_tokenizer):
    tok = smol_tokenizer
    recs = [fx.record(0), fx.record(1, prefixed=True)]
    examples, _ = build_examples(tok, recs, fx.prompt(), max_length=512, prompt_generation=False)
    for ex, rec in zip(examples, recs):
        text = tok.decode(ex["input_ids"])
        assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system message
        assert "ShellBot" not in text and "Task:" not in text  # neither the prompt nor its lead-in
        assert f"<|im_start|>user\n{rec['input']}<|im_end|>" in text


def test_student_context_replaces_the_default_system_message(smol_tokenizer):
    tok = smol_tokenizer
    context = [{"role": "system", "content": "You are a terse assistant."}]
    examples, _ = build_examples(tok, [fx.record(0)], fx.prompt(), context=context, max_length=512)
    text = tok.decode(examples[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a terse assistant.<|im_end|>")
    assert "SmolLM" not in text
    assert tok.decode(examples[0]["pg_input_ids"]).startswith("<|im_start|>system\nYou are a terse assistant.")


def test_teacher_view_has_the_prompt_and_supervises_the_same_ids(smol_tokenizer):
    tok = smol_tokenizer
    recs = fx.records(4)
    examples, _ = build_examples(tok, recs, fx.prompt(), max_length=512, teacher=True)
    for ex, rec in zip(examples, recs):
        t_ids, t_labels = ex["teacher_input_ids"], ex["teacher_labels"]
        assert supervised_ids(t_ids, t_labels) == supervised_ids(ex["input_ids"], ex["labels"])
        text = tok.decode(t_ids)
        assert "You are ShellBot" in text and f"Task:\n\n{rec['input']}" in text
        # the demonstration's agent turn belongs to the prompt: not supervised
        assert supervised_runs(tok, t_ids, t_labels) == [turn + tok.eos_token for turn in agent_turns(rec)]
        assert len(t_ids) > len(ex["input_ids"])


def test_prompt_generation_view_targets_the_prompt_and_the_reason(smol_tokenizer):
    tok = smol_tokenizer
    rec = fx.record(0)
    examples, _ = build_examples(tok, [rec], fx.prompt(), max_length=512)
    ex = examples[0]
    runs = supervised_runs(tok, ex["pg_input_ids"], ex["pg_labels"])
    assert runs == [f"{fx.prompt().text}\n\nReason: {rec['reason']}{tok.eos_token}"]
    context = tok.decode([t for t, lab in zip(ex["pg_input_ids"], ex["pg_labels"]) if lab == IGNORE])
    for part in (rec["input"], rec["as_is"], rec["to_be"], "AS-IS", "TO-BE"):
        assert part in context


def test_too_long_prompt_generation_target_is_a_user_error(smol_tokenizer):
    tok = smol_tokenizer
    rec = {**fx.record(0), "reason": "because " * 200}
    with pytest.raises(UserError, match=r"--max-length 128 cannot hold the prompt-generation target of record rec0"):
        build_examples(tok, [rec], fx.prompt(), max_length=128)


def test_long_as_is_is_shortened_but_the_target_stays_whole(smol_tokenizer):
    tok = smol_tokenizer
    rec = {**fx.record(0), "as_is": "word " * 400}
    ids, labels = prompt_generation_view(tok, rec, fx.prompt(), [], max_length=256)
    assert len(ids) <= 256
    assert supervised_runs(tok, ids, labels) == [f"{fx.prompt().text}\n\nReason: {rec['reason']}{tok.eos_token}"]
    assert "[...]" in tok.decode(ids)


def test_long_dialogues_keep_whole_agent_turns_or_are_skipped(smol_tokenizer):
    tok = smol_tokenizer
    long_env = {**fx.record(0)}
    long_env["dialogue"] = [dict(m) for m in long_env["dialogue"]]
    long_env["dialogue"][2]["content"] = "The output of the OS: " + "x " * 300
    huge_first = {**fx.record(1), "id": "huge"}
    huge_first["dialogue"] = [dict(m) for m in huge_first["dialogue"]]
    huge_first["dialogue"][1]["content"] = "Act: bash " + "echo y; " * 300
    examples, stats = build_examples(tok, [long_env, huge_first], fx.prompt(), max_length=200,
                                     prompt_generation=False)
    assert [e["id"] for e in examples] == ["rec0"]
    assert stats.skipped_too_long == 1 and stats.cut_turns == 1
    runs = supervised_runs(tok, examples[0]["input_ids"], examples[0]["labels"])
    assert runs == [long_env["dialogue"][1]["content"] + tok.eos_token]


def test_failed_and_silent_records_are_skipped_and_counted(smol_tokenizer):
    examples, stats = build_examples(smol_tokenizer, fx.records(3), fx.prompt(), max_length=512)
    assert [e["id"] for e in examples] == ["rec0", "rec1", "rec2"]
    assert (stats.records, stats.used, stats.skipped_error) == (5, 3, 2)


def test_no_usable_record_is_a_user_error(smol_tokenizer):
    with pytest.raises(UserError, match="no record can be trained on"):
        build_examples(smol_tokenizer, fx.records(0), fx.prompt(), max_length=512)


def test_prepend_keeps_the_prompt_for_an_exact_share_with_prompt_tokens_masked(smol_tokenizer):
    tok = smol_tokenizer
    recs = fx.records(4)
    examples, stats = build_examples(tok, recs, fx.prompt(), max_length=512, prompt_generation=False,
                                     prepend_share=0.5, seed=3)
    with_prompt = [e for e in examples if "You are ShellBot" in tok.decode(e["input_ids"])]
    assert len(with_prompt) == stats.prepended == 2
    assert all(e["prepended"] == (e in with_prompt) for e in examples)
    by_id = {r["id"]: r for r in recs}
    for ex in examples:
        runs = supervised_runs(tok, ex["input_ids"], ex["labels"])
        assert runs == [turn + tok.eos_token for turn in agent_turns(by_id[ex["id"]])]
    again, _ = build_examples(tok, recs, fx.prompt(), max_length=512, prompt_generation=False,
                              prepend_share=0.5, seed=3)
    assert [e["input_ids"] for e in again] == [e["input_ids"] for e in examples]  # the choice is seeded


def test_pg_share_gives_an_exact_seeded_share_of_records_a_prompt_generation_view(smol_tokenizer):
    from datasets import Dataset

    tok = smol_tokenizer
    recs = fx.records(4)
    examples, stats = build_examples(tok, recs, fx.prompt(), max_length=512, pg_share=0.5, seed=1)
    with_pg = [e for e in examples if e["pg_input_ids"]]
    assert len(with_pg) == 2 and all(e["pg_input_ids"] == [] for e in examples if e not in with_pg)
    assert stats.tokens["prompt_generation"] == sum(sum(l != -100 for l in e["pg_labels"]) for e in with_pg)
    again, _ = build_examples(tok, recs, fx.prompt(), max_length=512, pg_share=0.5, seed=1)
    assert [e["id"] for e in again if e["pg_input_ids"]] == [e["id"] for e in with_pg]
    one, _ = build_examples(tok, recs, fx.prompt(), max_length=512, pg_share=0.01)
    assert sum(bool(e["pg_input_ids"]) for e in one) == 1  # a positive share keeps at least one
    assert len(Dataset.from_list(examples)) == 4  # rows with and without the view make one dataset


def test_a_dialogue_that_does_not_start_with_the_input_is_refused(smol_tokenizer):
    rec = fx.record(0)
    rec["dialogue"][0]["content"] = "something else"
    with pytest.raises(UserError, match="record rec0: the dialogue must start with the user input"):
        build_examples(smol_tokenizer, [rec], fx.prompt(), max_length=512)


def test_render_with_labels_supervises_only_from_the_given_message(smol_tokenizer):
    tok = smol_tokenizer
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    ids, labels = render_with_labels(tok, messages, supervise_from=2)
    assert supervised_runs(tok, ids, labels) == ["d<|im_end|>"]
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)


def _sequences(batch, prefix=""):
    """``{(seq, task): (ids, labels, positions)}`` read back from a collated batch."""
    out = {}
    seq, task = batch[prefix + "seq"], batch[prefix + "task"]
    for key in {(int(a), int(b)) for a, b in zip(seq.flatten(), task.flatten()) if a >= 0}:
        where = (seq == key[0]) & (task == key[1])
        rows = where.any(1).nonzero().flatten().tolist()
        assert len(rows) == 1  # a sequence never spans two rows
        cols = where[rows[0]].nonzero().flatten()
        assert (cols.diff() == 1).all()  # and is contiguous
        positions = batch[prefix + "position_ids"][rows[0], cols].tolist() if prefix + "position_ids" in batch else None
        out[key] = (batch[prefix + "input_ids"][rows[0], cols].tolist(), batch[prefix + "labels"][rows[0], cols].tolist(),
                    positions)
    return out


@pytest.mark.parametrize("pack", [True, False])
def test_collator_puts_both_tasks_in_one_batch(smol_tokenizer, pack):
    tok = smol_tokenizer
    examples, _ = build_examples(tok, fx.records(3), fx.prompt(), max_length=512, teacher=True)
    batch = GenPICollator(tok.pad_token_id, pack=pack)(examples)
    seqs = _sequences(batch)
    assert set(seqs) == {(i, t) for i in range(3) for t in (BEHAVIOUR, PROMPT_GENERATION)}
    for i, e in enumerate(examples):
        for task, ids, labels in ((BEHAVIOUR, e["input_ids"], e["labels"]),
                                  (PROMPT_GENERATION, e["pg_input_ids"], e["pg_labels"])):
            got_ids, got_labels, positions = seqs[(i, task)]
            assert (got_ids, got_labels) == (ids, labels)
            if pack:
                assert positions == list(range(len(ids)))  # positions restart for every packed sequence
        t_ids, t_labels, _ = _sequences(batch, "teacher_")[(i, BEHAVIOUR)]
        assert (t_ids, t_labels) == (e["teacher_input_ids"], e["teacher_labels"])
    padding = batch["seq"] < 0
    assert (batch["labels"][padding] == IGNORE).all() and (batch["input_ids"][padding] == tok.pad_token_id).all()
    width = max(len(e["pg_input_ids"]) for e in examples)
    assert batch["input_ids"].shape[1] == width
    if pack:
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] < 6  # short dialogues share rows
    else:
        assert batch["input_ids"].shape[0] == 6 and "position_ids" not in batch
        assert (batch["attention_mask"].bool() == ~padding).all()


def test_run_directory_loads_through_the_store(tmp_path):
    run = fx.write_run(tmp_path / "run")
    info, prompt, records = load_training_run(run)
    assert prompt.hash == fx.prompt().hash and prompt.text == fx.PROMPT_TEXT.strip()
    assert [r["id"] for r in records] == [r["id"] for r in fx.records()]


def test_prompt_is_rebuilt_from_run_json_when_its_file_is_gone(tmp_path):
    run = fx.write_run(tmp_path / "run", keep_prompt_file=False)
    _, prompt, _ = load_training_run(run)
    assert prompt.hash == fx.prompt().hash
    assert "You are ShellBot" in prompt.text and prompt.text.endswith("<USER>: Task:")
    info = RunInfo.read(run)
    info.prompt["messages"][0]["content"] = "tampered"
    with pytest.raises(UserError, match="does not match its prompt_hash"):
        info.agent_prompt()


def test_missing_run_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--data"):
        load_training_run(tmp_path / "nope")


def _fake(lengths):
    return [([7] * n, [7] * n, BEHAVIOUR, i) for i, n in enumerate(lengths)]


def test_packing_width_trades_padding_against_attention():
    seqs = _fake([942, 942, 224, 224])
    rows = lambda bins: sorted(sorted(len(s[0]) for s in b) for b in bins)  # noqa: E731
    width, bins = GenPICollator(0)._packing(seqs)
    assert width == 942 and rows(bins) == [[224, 224], [942], [942]]
    width, bins = GenPICollator(0, attention_cost=3.3e-4, max_width=2048)._packing(seqs)
    assert width == 1166 and rows(bins) == [[224, 942], [224, 942]]  # no padding at all, two rows
    width, _ = GenPICollator(0, attention_cost=1.0, max_width=2048)._packing(seqs)
    assert width == 942  # attention dominates: no row wider than the longest sequence
    width, bins = GenPICollator(0, attention_cost=1e-9, max_width=1000)._packing(seqs)
    assert width <= 1000 and sum(len(s[0]) for b in bins for s in b) == 2332
