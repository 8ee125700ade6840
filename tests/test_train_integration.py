"""Training with the real tiny model (integration tier): a few short steps each, max_length kept small."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import train_fixtures as fx

from genpi.cli import main
from genpi.training.collator import GenPICollator
from genpi.training.views import build_examples
from genpi.prompt import AgentPrompt

pytestmark = pytest.mark.integration


def _trainer(tmp_path, examples, tokenizer, *, steps=1, lr=1e-4, **weights):
    from datasets import Dataset
    from peft import LoraConfig
    from genpi.models import load_model
    from genpi.training.trainer import GenPIConfig, GenPITrainer

    # A plain TRL script: GenPIConfig is an SFTConfig with the loss weights.
    args = GenPIConfig(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=len(examples), max_steps=steps,
                       learning_rate=lr, lr_scheduler_type="constant", bf16=False, report_to="none", logging_steps=1,
                       save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, use_cpu=True, **weights)
    # No LoRA dropout: on CPU its random masks cost as much as the matmuls, and nothing here depends on it.
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return GenPITrainer(model=load_model("default"), args=args, train_dataset=Dataset.from_list(examples),
                        data_collator=GenPICollator(tokenizer.pad_token_id), processing_class=tokenizer,
                        peft_config=lora)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_tiny_model_keeps_packed_sequences_apart(smol_path):
    """A false "no" here silently trains on padded rows: 1.4-1.7x slower, and wide padded rows exhaust RAM."""
    from genpi.models import load_model
    from genpi.training.trainer import packing_works

    model = load_model("default")
    model.train()  # the state the trainer calls it in
    assert packing_works(model)


def test_joint_loss_falls_on_a_fixed_batch_and_the_saved_adapter_reloads(tmp_path, smol_tokenizer):
    from genpi.models import load_adapter, load_model

    tok = smol_tokenizer
    examples, _ = build_examples(tok, [fx.record(0, turns=1)], fx.prompt(), max_length=384)
    trainer = _trainer(tmp_path, examples, tok, steps=3, lr=2e-3, w_sft=0.7, w_pg=0.3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2, 3]
    assert logs[-1]["loss"] < 0.8 * logs[0]["loss"]
    assert logs[-1]["loss/sft"] < logs[0]["loss/sft"] and logs[-1]["loss/pg"] < logs[0]["loss/pg"]
    # the total is the weighted sum of the logged terms (same batch, same step)
    assert logs[0]["loss"] == pytest.approx(0.7 * logs[0]["loss/sft"] + 0.3 * logs[0]["loss/pg"], rel=1e-4)
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert len(changed) == len(before)  # every LoRA A and B moved

    trainer.save_model(str(tmp_path / "adapter"))
    ids = torch.tensor([examples[0]["input_ids"]])
    expected = _logits(trainer.model, ids)
    reloaded = load_adapter(load_model("default"), tmp_path / "adapter")
    assert torch.allclose(_logits(reloaded, ids), expected, atol=1e-5)
    assert not torch.allclose(_logits(load_model("default"), ids), expected, atol=1e-3)


def test_kl_is_zero_for_identical_views_positive_with_the_prompt_and_packing_changes_nothing(tmp_path, smol_tokenizer):
    tok = smol_tokenizer
    recs = [fx.record(0), fx.record(2)]  # dialogues that start with the bare input
    no_prompt = AgentPrompt(messages=(), kind="chat")  # teacher view == student view
    same, _ = build_examples(tok, recs, no_prompt, max_length=384, prompt_generation=False, teacher=True)
    assert same[0]["teacher_input_ids"] == same[0]["input_ids"]
    prompted, _ = build_examples(tok, recs, fx.prompt(), max_length=384, teacher=True)
    trainer = _trainer(tmp_path, same, tok, w_sft=0.7, w_pg=0.3, w_kl=1.0)
    trainer.model.eval()
    metrics = trainer._metrics["eval"]
    with torch.no_grad():
        trainer.compute_loss(trainer.model, GenPICollator(tok.pad_token_id)(same))
        assert abs(metrics["loss/kl"][-1]) < 1e-5
        assert "loss/pg" not in metrics  # no prompt-generation rows in the batch: no loss/pg logged (not a 0)
        for pack in (True, False):
            batch = GenPICollator(tok.pad_token_id, pack=pack)(prompted)
            assert ("position_ids" in batch) == pack
            trainer.compute_loss(trainer.model, batch)
    kl_packed, kl_padded = metrics["loss/kl"][-2:]
    assert kl_packed > 1e-2
    # packed rows (block-diagonal attention) and padded rows give the same losses
    for key in ("loss/sft", "loss/pg", "loss/kl"):
        assert metrics[key][-2] == pytest.approx(metrics[key][-1], rel=1e-4, abs=1e-6)

    # A trained adapter moves the student but not the teacher: the teacher is the base model (adapter disabled).
    from genpi.models import load_model
    from genpi.training.trainer import scored_positions

    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
        batch = GenPICollator(tok.pad_token_id, pack=False)(same)
        trainer.compute_loss(trainer.model, batch)
        assert metrics["loss/kl"][-1] > 1e-3
        keep = scored_positions(batch["teacher_labels"])
        teacher = trainer._teacher_logits(trainer.model, batch, keep)
        base = load_model("default").eval()(input_ids=batch["teacher_input_ids"],
                                             attention_mask=batch["teacher_attention_mask"]).logits[keep]
    assert torch.allclose(teacher, base, atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short genpi_kl run through the CLI, checkpointing every step: 2 steps (what it printed kept in
    ``first["printed"]``), then resumed to 3."""
    root = tmp_path_factory.mktemp("train")
    run = fx.write_run(root / "run")
    out = root / "adapter"
    flags = ["train", "--data", str(run), "--out", str(out), "--strategy", "genpi_kl", "--batch-size", "1",
             "--max-length", "384", "--learning-rate", "1e-3", "--save-steps", "1", "--save-total-limit", "5",
             "--lora-dropout", "0", "--pg-share", "1"]  # every step has a prompt-generation row to log
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(flags + ["--max-steps", "2"]) == 0
    first = json.loads((out / "genpi.json").read_text())
    first["printed"] = printed.getvalue()
    assert main(flags + ["--max-steps", "3", "--resume"]) == 0
    return run, out, first


def test_train_writes_adapter_metadata_and_loss_plot(trained):
    run, out, first = trained
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "genpi.json").read_text())
    assert meta["strategy"] == "genpi_kl" and meta["weights"] == {"sft": 0.7, "pg": 0.3, "kl": 1.0}
    assert meta["base_model"] == "default" and meta["student_context"] == []
    assert meta["source_run"] == str(run.resolve()) and meta["prompt_hash"] == fx.prompt().hash
    assert meta["max_length"] == 384 and meta["records"]["used"] == 4 and meta["records"]["skipped_error"] == 2
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first["steps"] == 2


def test_a_run_shorter_than_min_steps_is_warned_about_in_the_console_and_genpi_json(trained):
    _, out, first = trained
    assert first["step_plan"]["reason"] == "--max-steps 2" and first["epochs"] == 0.5  # 2 of 4 records
    assert first["too_short"].startswith("only 2 optimizer steps") and "raise --max-steps to 40" in first["too_short"]
    assert f"warning: {first['too_short']}" in first["printed"].splitlines()  # one line, however long
    summary = " ".join(first["printed"].split())
    assert "2 in " in summary and "0.5 epochs of 4 records (--max-steps 2)" in summary


def test_few_records_train_min_steps_whole_epochs_and_a_run_that_learnt_is_not_warned_about(tmp_path):
    """The step plan reaches the trainer: 2 records at 2 per step, 1 step per epoch, so --min-steps 4 takes 4
    epochs (the test keeps the run tiny; the default --min-steps works the same way)."""
    from rich.console import Console
    from transformers import TrainerCallback

    from genpi.config import TrainConfig
    from genpi.training import train

    class Logs(TrainerCallback):
        sft: list = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss/sft" in logs:
                self.sft.append(logs["loss/sft"])

    run = fx.write_run(tmp_path / "run", fx.records(2))
    console = Console(file=io.StringIO(), width=200)
    out = train(TrainConfig(data=str(run), out=str(tmp_path / "a"), min_steps=4, max_length=384, callbacks=[Logs()]),
                console=console)
    meta = json.loads((out / "genpi.json").read_text())
    assert meta["steps"] == meta["step_plan"]["steps"] == 4 and meta["epochs"] == meta["step_plan"]["epochs"] == 4
    assert "raised from 3" in meta["step_plan"]["reason"]
    assert len(Logs.sft) == 4 and Logs.sft[-1] < 0.9 * Logs.sft[0], Logs.sft  # the defaults learn: the loss fell
    assert meta["too_short"] == "" and "warning" not in console.file.getvalue()


def test_train_tokens_count_what_was_computed_across_a_resume(trained, smol_tokenizer):
    """genpi.json's token counts (eval's training cost and break-even) cover both runs of a resumed training."""
    run, out, first = trained
    examples, _ = build_examples(smol_tokenizer, fx.records(), fx.prompt(), max_length=384, prompt_generation=True,
                                 teacher=True)  # --pg-share 1, as the fixture trains
    lengths = [len(e["input_ids"]) + len(e["pg_input_ids"]) for e in examples]  # one record per step (batch 1)
    meta = json.loads((out / "genpi.json").read_text())
    assert 2 * min(lengths) <= first["train_tokens"] <= 2 * 2 * max(lengths)  # rows may pad, at most to double
    assert 3 * min(lengths) <= meta["train_tokens"] <= 3 * 2 * max(lengths)
    assert meta["train_tokens"] - first["train_tokens"] >= min(lengths)  # the resumed step added to the count
    teacher = sum(len(e["teacher_input_ids"]) for e in examples)
    assert meta["teacher_tokens"] == round(teacher * 3 / len(examples))  # 3 of 4 records: 0.75 epochs


def test_resume_continues_the_step_count(trained):
    _, out, _ = trained
    assert json.loads((out / "genpi.json").read_text())["steps"] == 3
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == [1, 2, 3]  # steps 1-2 from the first run, only step 3 from the resumed one
    assert all(k in state["log_history"][-2] for k in ("loss/sft", "loss/pg", "loss/kl"))


def test_merged_export_gives_the_adapter_logits(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from genpi.models import load_adapter, load_model

    _, out, _ = trained
    merged_dir = tmp_path / "merged"
    assert main(["export", "--adapter", str(out), "--merge", "--out", str(merged_dir)]) == 0
    assert not list(merged_dir.glob("adapter_*"))
    ids = torch.tensor([[1, 9690, 198, 22503, 314, 253, 5356, 30, 2, 198, 1, 4093, 198]])
    adapter_logits = _logits(load_adapter(load_model("default"), out), ids)
    merged_logits = _logits(AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32), ids)
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(_logits(load_model("default"), ids), adapter_logits, atol=1e-3)
    assert json.loads((merged_dir / "genpi.json").read_text())["merged"] is True


@pytest.mark.slow  # two training processes under accelerate launch
def test_two_process_accelerate_launch_saves_one_adapter(tmp_path):
    run = fx.write_run(tmp_path / "run", fx.records(4))
    out = tmp_path / "adapter"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    # --multi_gpu picks the torchrun launcher; without a GPU, genpi joins the processes in a gloo group.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genpi", "train", "--data", str(run),
           "--out", str(out), "--strategy", "genpi", "--batch-size", "1", "--max-steps", "2", "--max-length", "384",
           "--save-steps", "2", "--lora-dropout", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "genpi.json").read_text())
    assert meta["processes"] == 2 and meta["steps"] == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("adapter_model.safetensors")) == [
        "adapter_model.safetensors", "checkpoints/checkpoint-2/adapter_model.safetensors"]
    assert proc.stdout.count("genpi train: genpi") == 1  # one summary, from the main process


def test_lora_targets_the_model_lacks_are_a_one_line_error(tmp_path, capsys):
    run = fx.write_run(tmp_path / "run")
    out = tmp_path / "adapter"
    assert main(["train", "--data", str(run), "--out", str(out), "--lora-target", "q_proj,qkv_fused",
                 "--max-steps", "1", "--max-length", "384"]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after the model-loading progress bar
    assert last.startswith("genpi: error: --lora-target: the model has no module named qkv_fused")
