"""The strategies beyond GenPI's paper, on the real tiny model: PromptIntern, on-policy distillation, and the two
soft prompts (prompt tuning, KV prefix), each trained for real and served by the evaluation's engine."""

from __future__ import annotations

import json

import pytest
import torch
import train_fixtures as fx

from genpi.config import SOFT_PROMPTS, STRATEGIES, TrainConfig
from genpi.errors import UserError
from genpi.training.collator import GenPICollator
from genpi.training.views import IGNORE, build_examples, decode_view

pytestmark = pytest.mark.integration


# --- configuration (no model)


def test_every_strategy_is_a_choice_of_genpi_train(capsys):
    from genpi.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for strategy in STRATEGIES:
        assert strategy in text


def test_soft_prompts_and_stages_refuse_what_they_cannot_do():
    with pytest.raises(UserError, match="--strategy kv_prefix trains a soft prompt with the behaviour and KL"):
        TrainConfig(strategy="kv_prefix", w_pg=0.3)
    with pytest.raises(UserError, match="activation checkpointing does not work with soft prompts"):
        TrainConfig(strategy="prompt_tuning", activation_checkpointing="on")
    with pytest.raises(UserError, match="--intern-rates has 2 stages and --intern-shots 3"):
        TrainConfig(strategy="promptintern", intern_rates=[1, 0], intern_shots=[2, 1, 0])
    with pytest.raises(UserError, match="rates must be between 0 and 1"):
        TrainConfig(strategy="promptintern", intern_rates=[1.5, 0], intern_shots=[1, 0])
    assert TrainConfig(strategy="kv_prefix").peak_lr() == 1e-2 and TrainConfig().peak_lr() == 1e-3


# --- PromptIntern


def test_promptintern_stages_shrink_the_context_in_order_and_end_with_the_bare_input(smol_tokenizer):
    from genpi.models import load_model
    from genpi.training.promptintern import build_stage_examples, make_templates

    tok, prompt = smol_tokenizer, fx.prompt()
    rates, shots = [1.0, 0.5, 0.0], [2, 1, 0]
    templates = make_templates(prompt, load_model("default").eval(), tok, rates)
    assert templates[0][0] is prompt and templates[2][0] is None
    half = templates[1][1]
    assert 0.35 <= half["achieved"] <= 0.65 and half["kept_tokens"] < half["prompt_tokens"]

    records = fx.records(6)
    examples, stats, stages = build_stage_examples(tok, records, prompt, rates, templates, shots, context=[],
                                                   max_length=768, total=14, seed=0)
    assert [e["stage"] for e in examples] == sorted(e["stage"] for e in examples)  # the stage follows the step
    assert [st.examples for st in stages] == [5, 5, 4] and len(examples) == 14
    assert [st.shots for st in stages] == [2, 1, 0]
    lengths = [min(len(e["input_ids"]) for e in examples if e["stage"] == k) for k in range(3)]
    assert lengths[0] > lengths[1] > lengths[2]
    bare, _ = build_examples(tok, records, prompt, max_length=768, prompt_generation=False)
    assert {tuple(e["input_ids"]) for e in examples if e["stage"] == 2} <= {tuple(e["input_ids"]) for e in bare}
    for k, st in enumerate(stages):
        texts = [decode_view(tok, e["input_ids"], e["labels"]) for e in examples if e["stage"] == k]
        # a record shown as a demonstration is not trained on in that stage (it would see its own answer)
        assert not {e["id"] for e in examples if e["stage"] == k} & set(st.demonstrations)
        # only agent turns are supervised: the template and the demonstrations are context
        assert all("[[" not in t.split("<|im_start|>assistant")[0] for t in texts)
        assert all(sum(lab != IGNORE for lab in e["labels"]) > 0 for e in examples)
    assert "ShellBot" in json.dumps(stages[0].messages) and stages[2].messages == []


def test_promptintern_trains_end_to_end_and_stores_its_templates(tmp_path):
    from genpi.training import train

    run = fx.write_run(tmp_path / "run", fx.records(6))
    out = train(TrainConfig(data=str(run), out=str(tmp_path / "pi"), strategy="promptintern", max_steps=3,
                            batch_size=2, max_length=768, lora_dropout=0.0))
    info = json.loads((out / "genpi.json").read_text())
    assert [s["rate"] for s in info["stages"]] == [1.0, 0.5, 0.0]
    assert [s["examples"] for s in info["stages"]] == [2, 2, 2]  # 3 steps x 2 records, a third per stage
    assert 0 < info["stages"][1]["achieved"] < 1 and info["stages"][1]["messages"]
    assert info["steps"] == 3


# --- on-policy distillation


def test_onpolicy_loss_is_zero_without_a_gap_and_positive_with_the_prompt(tmp_path, smol_tokenizer):
    from datasets import Dataset
    from peft import LoraConfig

    from genpi.models import load_model
    from genpi.prompt import AgentPrompt
    from genpi.training.trainer import GenPIConfig, GenPITrainer

    tok = smol_tokenizer
    recs = [fx.record(0), fx.record(2)]
    no_prompt = AgentPrompt(messages=(), kind="chat")
    same, _ = build_examples(tok, recs, no_prompt, max_length=384, prompt_generation=False, onpolicy=True)
    prompted, _ = build_examples(tok, recs, fx.prompt(), max_length=384, prompt_generation=False, onpolicy=True)
    assert same[0]["op_student_ids"] == same[0]["op_teacher_ids"]
    assert len(prompted[0]["op_teacher_ids"]) > len(prompted[0]["op_student_ids"])
    args = GenPIConfig(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=2, max_steps=1,
                       report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=1, w_sft=0.0, w_pg=0.0,
                       w_onpolicy=1.0, onpolicy_max_new_tokens=12)
    trainer = GenPITrainer(model=load_model("default"), args=args, train_dataset=Dataset.from_list(prompted),
                           data_collator=GenPICollator(tok.pad_token_id), processing_class=tok,
                           peft_config=LoraConfig(r=8, lora_dropout=0.0, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    replies = trainer.sample_replies(trainer.model, [e["op_student_ids"] for e in prompted])
    assert all(0 < len(r) <= 12 for r in replies)
    assert all(r[-1] == tok.eos_token_id or len(r) == 12 for r in replies)
    collate = GenPICollator(tok.pad_token_id)
    with torch.no_grad():  # a fresh LoRA is the base model: with the same context, student == teacher
        assert trainer.onpolicy_loss(trainer.model, collate(same)).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        gap = trainer.onpolicy_loss(trainer.model, collate(prompted)).item()
    assert gap > 1e-2
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss/onpolicy" in h]
    assert logged and logged[0]["loss"] == pytest.approx(logged[0]["loss/onpolicy"])
    assert trainer.onpolicy_tokens["student"] > 0 and trainer.onpolicy_tokens["teacher"] > 0


# --- soft prompts


@pytest.fixture(scope="module")
def soft_runs(tmp_path_factory):
    """Each soft prompt trained 2 steps at learning rate 0 (it stays as initialised) and 2 steps at its default."""
    from genpi.training import train

    root = tmp_path_factory.mktemp("soft")
    run = fx.write_run(root / "run", fx.records(4))
    out = {}
    for strategy in SOFT_PROMPTS:
        for lr, tag in ((0.0, "init"), (None, "trained")):
            out[strategy, tag] = train(TrainConfig(data=str(run), out=str(root / f"{strategy}-{tag}"), strategy=strategy,
                                                   max_steps=2, batch_size=2, max_length=512, learning_rate=lr,
                                                   warmup_ratio=0.0))
    return run, out


@pytest.mark.parametrize("strategy", SOFT_PROMPTS)
def test_a_soft_prompt_from_the_whole_prompt_starts_as_the_prompted_model(soft_runs, strategy, smol_tokenizer):
    """KL ~ 0 before training (logged at the first step, learning rate 0), and the engine serving the untrained soft
    prompt writes the prompted model's greedy replies."""
    from genpi.eval.generation import Generator
    from genpi.eval.systems import System, adapter_system

    _, out = soft_runs
    info = json.loads((out[strategy, "init"] / "genpi.json").read_text())
    from genpi.prompt import prompted_head

    text, prompt_ids = prompted_head(smol_tokenizer, fx.prompt())
    teacher = smol_tokenizer.apply_chat_template(fx.prompt().teacher_messages("how many?"), tokenize=False,
                                                 add_generation_prompt=True)
    assert teacher.startswith(text) and info["virtual_tokens"] == len(prompt_ids)
    assert smol_tokenizer(teacher, add_special_tokens=False)["input_ids"][: len(prompt_ids)] == prompt_ids
    history = json.loads((out[strategy, "init"] / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    kl = [h["loss/kl"] for h in history["log_history"] if "loss/kl" in h]
    assert kl and abs(kl[0]) < 1e-4
    trained = json.loads((out[strategy, "trained"] / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert [h["loss/sft"] for h in trained["log_history"] if "loss/sft" in h][-1] < [
        h["loss/sft"] for h in history["log_history"] if "loss/sft" in h][-1]

    soft = adapter_system(out[strategy, "init"], "adapter")
    assert soft.soft
    gen = Generator("default", [System("prompted", "prompted"), soft])
    convs = [[{"role": "user", "content": f"how many files are in /data/set{i}?"}] for i in (7, 8)]
    prompted = gen.generate(System("prompted", "prompted"), fx.prompt(), convs, 16)
    served = gen.generate(soft, fx.prompt(), convs, 16)
    assert [g.text for g in served] == [g.text for g in prompted]
    # virtual tokens are context: counted in the input, held once as a shared prefix
    assert all(abs(s.input_tokens - p.input_tokens) <= 1 for s, p in zip(served, prompted))
    assert gen.virtual_tokens(soft) == info["virtual_tokens"]
    timed = gen.time_request(soft, fx.prompt(), convs[0], 4)
    assert timed["text"] == gen.time_request(System("prompted", "prompted"), fx.prompt(), convs[0], 4)["text"]


def test_soft_prompts_cannot_be_merged_or_served(soft_runs, tmp_path, capsys):
    from genpi.cli import main

    _, out = soft_runs
    code = main(["export", "--adapter", str(out["kv_prefix", "trained"]), "--merge", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code != 0 and "is a soft prompt (cartridge), which cannot be merged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
    assert main(["export", "--adapter", str(out["prompt_tuning", "trained"]), "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "adapter_config.json").is_file()
    from genpi.serving.backend import load_served

    with pytest.raises(UserError, match=r"is a soft prompt \(prompt_tuning\), which cannot be served"):
        load_served("default", [str(out["prompt_tuning", "trained"])])


def test_virtual_tokens_beyond_the_prompt_are_a_one_line_error(soft_runs, tmp_path):
    from genpi.training import train

    run, _ = soft_runs
    with pytest.raises(UserError, match="--virtual-tokens 5000: .* give at most"):
        train(TrainConfig(data=str(run), out=str(tmp_path / "x"), strategy="kv_prefix", max_steps=1, virtual_tokens=5000))
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_a_shorter_soft_prompt_is_cheaper_context(soft_runs, tmp_path):
    from genpi.training import train

    run, _ = soft_runs
    out = train(TrainConfig(data=str(run), out=str(tmp_path / "short"), strategy="prompt_tuning", max_steps=1,
                            batch_size=2, max_length=512, virtual_tokens=8))
    assert json.loads((out / "genpi.json").read_text())["virtual_tokens"] == 8


# --- the engine's pinned prefixes


def test_a_pinned_prefix_is_never_evicted_and_every_request_must_start_with_it():
    from genpi.serving.engine import PrefixStore, _Entry

    store = PrefixStore(max_bytes=100)
    store.pin("soft", _Entry((0, 0, 0), [], [], 80))
    store.put("soft", _Entry((0, 0, 0, 5), [], [], 60))
    store.put("soft", _Entry((0, 0, 0, 6), [], [], 60))
    assert ("soft", (0, 0, 0)) in store.entries and ("soft", (0, 0, 0, 5)) not in store.entries
    entry, n = store.best("soft", [0, 0, 0, 9], 4)
    assert n == 3 and entry.ids == (0, 0, 0)


def test_a_soft_prompt_dry_run_shows_what_follows_it(soft_runs, tmp_path, capsys):
    from genpi.cli import main

    run, _ = soft_runs
    assert main(["train", "--data", str(run), "--strategy", "kv_prefix", "--dry-run", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "behaviour (after the soft prompt, which stands in for the prompt's tokens)" in out
    behaviour = out.split("supervised in [[...]]", 1)[1].split("teacher (prompt + dialogue", 1)[0]
    assert "ShellBot" not in behaviour and "ShellBot" in out  # the prompt is in the teacher view only
