"""Training config, presets, the KL formula, the CLI shell and early user errors (unit tier: no model weights)."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
import train_fixtures as fx

from genpi.cli import build_parser, main
from genpi.config import STRATEGIES, TrainConfig, from_args, from_dict
from genpi.training.views import build_examples
from genpi.errors import UserError
from genpi.training.trainer import generalized_jsd, packing_works, scored_positions


def test_presets_follow_the_paper_and_flags_override_them():
    # the paper's weights; a quarter of the records carry a prompt-generation example (the paper: every one)
    assert STRATEGIES["genpi"] == {"w_sft": 0.7, "w_pg": 0.3, "w_kl": 0.0, "w_onpolicy": 0.0, "prepend_share": 0.0,
                                   "pg_share": 0.25}
    assert STRATEGIES["genpi_kl"]["pg_share"] == 0.25
    assert TrainConfig(strategy="seqkd").weights()["w_pg"] == 0.0
    assert TrainConfig(strategy="seqkd_kl").weights()["w_kl"] > 0
    assert TrainConfig(strategy="prepend").weights()["prepend_share"] == 1.0
    args = build_parser().parse_args(["train", "--data", "r", "--strategy", "genpi_kl", "--w-kl", "0.25",
                                      "--prepend-share", "0.5"])
    w = from_args(TrainConfig, args).weights()
    assert (w["w_sft"], w["w_pg"], w["w_kl"], w["prepend_share"]) == (0.7, 0.3, 0.25, 0.5)
    with pytest.raises(UserError, match="unknown --strategy 'nope'"):
        TrainConfig(strategy="nope").weights()
    with pytest.raises(UserError, match="unknown TrainConfig key"):
        from_dict(TrainConfig, {"lr": 1.0})


def test_defaults_that_internalize_an_untuned_prompt():
    """The quick start's measured settings are the defaults (docs/TRAINING.md, Defaults); LoRA shape as the paper's."""
    c = TrainConfig()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_target) == (16, 32, 0.0, "all-linear")
    assert (c.peak_lr(), c.lr_scheduler, c.warmup_ratio) == (1e-3, "cosine", 0.03)
    assert (c.batch_size, c.max_length, c.epochs, c.max_steps) == (2, 1536, None, -1)
    assert c.min_steps > 0


def test_generalized_jsd_endpoints_symmetry_and_bounds():
    torch.manual_seed(0)
    s, t = torch.randn(5, 11), torch.randn(5, 11) * 2
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    forward_kl = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)  # KL(teacher || student)
    reverse_kl = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    assert torch.allclose(generalized_jsd(s, t, beta=0.0), forward_kl, atol=1e-6)
    assert torch.allclose(generalized_jsd(s, t, beta=1.0), reverse_kl, atol=1e-6)
    jsd = generalized_jsd(s, t, beta=0.5)
    assert torch.allclose(jsd, generalized_jsd(t, s, beta=0.5), atol=1e-6)  # symmetric at beta 0.5
    assert (jsd > 0).all() and (jsd <= math.log(2) + 1e-6).all()
    # by hand: M = (P + Q) / 2
    p, q = lt.exp(), ls.exp()
    m = (p + q) / 2
    by_hand = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(jsd, by_hand, atol=1e-6)
    assert generalized_jsd(s, s, beta=0.3).abs().max() < 1e-6
    # temperature flattens both distributions: the divergence shrinks
    assert (generalized_jsd(s, t, beta=0.5, temperature=4.0) < jsd).all()


def test_kl_term_defaults_to_forward_kl_scaled_by_t_squared():
    from genpi.config import TrainConfig
    from genpi.training.trainer import kl_term

    assert TrainConfig().kl_beta == 0.0  # context distillation's forward KL(teacher || student)
    torch.manual_seed(0)
    s, t = torch.randn(5, 11), torch.randn(5, 11)
    for temp in (1.0, 2.0, 4.0):
        expected = generalized_jsd(s, t, beta=0.0, temperature=temp) * temp**2  # Hinton et al.: gradients keep their scale
        assert torch.allclose(kl_term(s, t, beta=0.0, temperature=temp), expected, atol=1e-6)
    assert torch.allclose(kl_term(s, t, beta=0.5, temperature=1.0), generalized_jsd(s, t, beta=0.5), atol=1e-6)


def test_scored_positions_point_at_the_token_before_each_label():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    assert scored_positions(labels).tolist() == [[False, True, True, False, False],
                                                 [True, False, False, False, False]]


class _CumsumLM(torch.nn.Module):
    """A stand-in causal LM whose logits at a position sum the embeddings so far: within its sequence only when it
    honours restarting ``position_ids``, across the whole row when it does not."""

    def __init__(self, honours_positions: bool):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 8)
        self.honours_positions = honours_positions

    def forward(self, input_ids, position_ids=None, use_cache=None):
        x = self.emb(input_ids)
        if self.honours_positions and position_ids is not None:
            starts = (position_ids == 0).long().cumsum(-1)
            out = torch.stack([torch.stack([x[b, (starts[b] == starts[b, t]) & (torch.arange(x.shape[1]) <= t)].sum(0)
                                            for t in range(x.shape[1])]) for b in range(x.shape[0])])
        else:
            out = x.cumsum(1)
        return type("Out", (), {"logits": out})()


def test_packing_check_tells_models_that_keep_sequences_apart():
    assert packing_works(_CumsumLM(honours_positions=True))
    assert not packing_works(_CumsumLM(honours_positions=False))


def test_export_of_a_directory_without_adapter_is_a_user_error(tmp_path, capsys):
    assert main(["export", "--adapter", str(tmp_path), "--out", str(tmp_path / "o"), "--merge"]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    ([], "no synthesis run given"),
    (["--data", "R", "--w-sft", "0", "--w-pg", "0", "--w-kl", "0"], "every loss weight is 0"),
    (["--data", "R", "--w-pg", "-1"], "--w-pg is -1.0"),
    (["--data", "R", "--prepend-share", "2"], "--prepend-share is 2.0"),
    (["--data", "R", "--precision", "fp8"], "--precision 'fp8'"),
    (["--data", "R", "--batch-size", "0"], "--batch-size is 0"),
    (["--data", "R", "--warmup-ratio", "1.5"], "--warmup-ratio is 1.5"),
    (["--data", "R", "--lr-scheduler", "bogus"], "--lr-scheduler 'bogus'"),
    (["--data", "R", "--min-steps", "-1"], "--min-steps is -1"),
    (["--data", "R", "--epochs", "0"], "--epochs is 0 and --max-steps is not set"),
])
def test_bad_train_flags_are_one_line_errors(flags, message, capsys):
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genpi: error:") and message in err and err.count("\n") == 1


def test_output_is_protected_and_resume_needs_a_checkpoint(tmp_path, capsys, smol_tokenizer):
    run = fx.write_run(tmp_path / "run")
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "something").write_text("x")
    base = ["train", "--data", str(run), "--out", str(out), "--max-length", "512"]
    assert main(base) == 2
    assert "is not empty: pass --resume" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_resume_with_changed_settings_is_refused(tmp_path, capsys, smol_tokenizer):
    run = fx.write_run(tmp_path / "run")
    out = tmp_path / "adapter"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    config = TrainConfig(data=str(run), out=str(out), max_length=512)
    (out / "checkpoints" / "genpi_train.json").write_text(json.dumps(config.signature()))
    assert main(["train", "--data", str(run), "--out", str(out), "--max-length", "512", "--w-pg", "0.9",
                 "--resume"]) == 2
    assert "trained with different settings (w_pg)" in capsys.readouterr().err


def test_dry_run_prints_the_views_and_trains_nothing(tmp_path, capsys, smol_tokenizer):
    run = fx.write_run(tmp_path / "run")
    out = tmp_path / "adapter"
    assert main(["train", "--data", str(run), "--out", str(out), "--strategy", "genpi_kl", "--max-length", "512",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "[[Act: bash ls /data/set0 | wc -l<|im_end|>]]" in printed
    assert "prompt generation" in printed and "teacher" in printed
    # 4 records at 2 per step: the default 3 epochs raised to reach --min-steps
    assert f"{TrainConfig().min_steps} optimizer steps planned" in " ".join(printed.split())
    assert not out.exists()


def test_a_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path, capsys):
    run = fx.write_run(tmp_path / "run")
    assert main(["train", "--data", str(run), "--out", str(tmp_path / "a"), "--model", "nobody/no-such-model",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genpi: error: cannot load --model nobody/no-such-model") and err.count("\n") == 1


def test_auto_checkpointing_turns_on_when_a_cpu_batch_would_fill_the_ram(smol_tokenizer):
    from rich.console import Console

    from genpi.training.run import _precision, attention_memory

    examples, _ = build_examples(smol_tokenizer, fx.records(), fx.prompt(), max_length=384)
    need = attention_memory(examples, 4, 384, layers=30, heads=9)
    per_batch = sum(sorted((len(e["input_ids"]) + len(e["pg_input_ids"]) for e in examples), reverse=True)[:4])
    assert need == 2 * 4 * 30 * 9 * per_batch * 384
    assert attention_memory(examples, 1, 384, 30, 9) < need  # smaller batches keep less
    config = TrainConfig(data="R", batch_size=4, max_length=384)
    console = Console(file=io.StringIO())
    assert _precision(config, examples, console, total_memory=3 * need)[2] is False  # threshold: 40% of RAM
    assert _precision(config, examples, console, total_memory=need)[2] is True
    assert "activation checkpointing on" in console.file.getvalue()
    off = dataclasses.replace(config, activation_checkpointing="off")
    assert _precision(off, examples, console, total_memory=need)[2] is False


# --- the step plan and the too-short warning


def _cli_config(*flags) -> TrainConfig:
    return from_args(TrainConfig, build_parser().parse_args(["train", "--data", "R", *flags]))


def test_steps_per_epoch_count_partial_batches_accumulation_and_processes():
    from genpi.training.plan import steps_per_epoch

    assert steps_per_epoch(4, 2) == 2 and steps_per_epoch(5, 2) == 3  # the last, partial batch is a step
    assert steps_per_epoch(5, 2, grad_accum=2) == 2 and steps_per_epoch(5, 2, processes=2) == 2
    assert steps_per_epoch(1, 4) == 1 and steps_per_epoch(0, 4) == 1


def test_the_cli_defaults_give_a_tiny_run_at_least_min_steps(tmp_path, smol_tokenizer):
    from rich.console import Console

    from genpi.config import DEFAULT_EPOCHS
    from genpi.training.plan import plan_steps, steps_per_epoch
    from genpi.training.run import prepare_data, trainer_args

    run = fx.write_run(tmp_path / "run")  # 4 usable records
    c = dataclasses.replace(_cli_config(), data=str(run))
    data = prepare_data(c, Console(file=io.StringIO()), processes=1)
    plan = data.plan
    per_epoch = steps_per_epoch(4, c.batch_size)
    assert plan.records == 4 and plan.steps_per_epoch == per_epoch
    assert plan.steps >= c.min_steps and plan.steps == plan.epochs * per_epoch  # whole epochs
    assert (plan.epochs - 1) * per_epoch < c.min_steps  # no more epochs than it takes
    assert f"raised from {DEFAULT_EPOCHS}" in plan.reason and "--min-steps" in plan.reason
    args = trainer_args(c, data, "fp32", checkpointing=False)  # the plan and the defaults reach the trainer
    assert (args.num_train_epochs, args.max_steps) == (plan.epochs, -1)
    assert (args.learning_rate, args.per_device_train_batch_size, args.w_pg) == (c.peak_lr(), c.batch_size, 0.3)

    many = plan_steps(c, 1000)  # enough records: the default epochs, not raised
    assert many.epochs == DEFAULT_EPOCHS and many.steps == DEFAULT_EPOCHS * steps_per_epoch(1000, c.batch_size)
    two_procs = plan_steps(c, 4, processes=2)  # each step reads 2 records per process
    assert two_procs.steps >= c.min_steps and two_procs.epochs == 2 * plan.epochs
    # given explicitly, the budget is kept as given
    assert plan_steps(_cli_config("--max-steps", "2"), 4).steps == 2
    explicit = plan_steps(_cli_config("--epochs", "1"), 4)
    assert (explicit.steps, explicit.epochs, explicit.reason) == (per_epoch, 1.0, "--epochs 1")
    assert plan_steps(_cli_config("--min-steps", "0"), 4).epochs == DEFAULT_EPOCHS


def test_promptintern_plans_its_steps_on_the_staged_dataset():
    from genpi.training.plan import plan_steps, steps_per_epoch

    c = _cli_config("--strategy", "promptintern")
    plan = plan_steps(c, 5)  # one pass over round(epochs x 5) staged examples
    assert plan.steps == steps_per_epoch(round(plan.epochs * 5), c.batch_size) >= c.min_steps
    assert steps_per_epoch(round((plan.epochs - 1) * 5), c.batch_size) < c.min_steps


def _history(values):
    return [{"step": i + 1, "loss": v, "loss/sft": v} for i, v in enumerate(values)]


def test_too_short_fires_for_few_steps_or_a_flat_loss_and_names_the_fix():
    from genpi.training.plan import plan_steps, too_short

    falling = _history([2.0 - 0.04 * i for i in range(40)])
    defaults = _cli_config()
    plan = plan_steps(defaults, 4)
    assert too_short(defaults, plan, plan.steps, falling) == ""  # the defaults: long enough, and the loss fell

    short = _cli_config("--max-steps", "2")
    message = too_short(short, plan_steps(short, 4), 2, falling[:2])
    assert "only 2 optimizer steps" in message and f"raise --max-steps to {short.min_steps}" in message
    one_epoch = _cli_config("--epochs", "1")
    p = plan_steps(one_epoch, 4)
    assert f"raise --epochs to {-(-one_epoch.min_steps // p.steps_per_epoch)}" in too_short(one_epoch, p, p.steps, falling)

    flat = _history([1.5, 1.4, 1.6, 1.5] * 10)
    message = too_short(defaults, plan, plan.steps, flat)
    assert "behaviour loss did not fall" in message and "--learning-rate" in message
    spike = _history([2.0 - 0.04 * i for i in range(39)] + [1.9])  # one noisy last batch does not decide
    assert too_short(defaults, plan, plan.steps, spike) == ""
    # a soft prompt starts as the prompted model: its loss need not fall
    soft = _cli_config("--strategy", "kv_prefix")
    assert too_short(soft, plan_steps(soft, 4), plan.steps, flat) == ""
