"""The training run: a synthesis run in, a PEFT adapter with ``genpi.json`` and ``loss.png`` out.

The CLI, recipes and tests all call :func:`train`, a short sequence of named steps, each a function of its own:
data (:func:`prepare_data`: records -> examples and a step plan), trainer arguments (:func:`trainer_args`), output
(:func:`start_output`), model and tuner (:func:`model_and_tuner`), trainer (:func:`make_trainer`), then save
(:func:`save_outputs`: ``genpi.json``, ``loss.png``, the summary). It runs unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed): every process
builds the same views; only the main process writes files and prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genpi import __version__
from genpi.adapter import GENPI_FILE, AdapterInfo
from genpi.config import SOFT_PROMPTS, TrainConfig
from genpi.errors import UserError
from genpi.prompt import AgentPrompt
from genpi.training.plan import StepPlan, plan_steps, too_short

CHECKPOINTS = "checkpoints"
SIGNATURE_FILE = "genpi_train.json"
LOSS_KEYS = ("loss/sft", "loss/pg", "loss/kl", "loss/onpolicy")


def load_training_run(run_dir: str | Path) -> tuple[dict, AgentPrompt, list[dict]]:
    """``(run.json counts, prompt, records)`` of a synthesis run directory, records in their stored order."""
    from genpi.synth.store import load_run

    if not str(run_dir):
        raise UserError("no synthesis run given: pass --data RUN_DIR (the --out of `genpi synth`)")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--data {run_dir} is not a directory: pass the run directory written by `genpi synth --out`")
    info, records = load_run(run_dir)
    return info.counts, info.agent_prompt(), records.to_list()


def _lora_targets(c: TrainConfig, model):
    """``--lora-target`` as PEFT takes it, checked against the model's module names."""
    if c.lora_target == "all-linear":
        return c.lora_target
    targets = c.lora_target
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing or not targets:
        raise UserError(f"--lora-target: the model has no module named {', '.join(missing) or '(none given)'}: "
                        f"give 'all-linear' or names such as {', '.join(sorted(n for n in names if n.endswith('proj'))[:6])}")
    return targets


def _prepare_output(c: TrainConfig, is_main: bool) -> Path | None:
    """Check (on every process) and prepare (on the main one) the output; return the checkpoint to resume from."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(c.out)
    ckpt_dir = out / CHECKPOINTS
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory path")
    if c.resume:
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if last is None:
            raise UserError(f"--resume: {ckpt_dir} holds no checkpoint; run without --resume to start training")
        sig_file = ckpt_dir / SIGNATURE_FILE
        saved = json.loads(sig_file.read_text(encoding="utf-8")) if sig_file.exists() else {}
        changed = sorted(k for k in set(saved) | set(c.signature()) if saved.get(k) != c.signature().get(k))
        if changed:
            raise UserError(
                f"--resume: {out} was trained with different settings ({', '.join(changed)}): rerun with the same "
                "settings, or pass --overwrite without --resume to start over"
            )
        return Path(last)
    if out.exists() and any(out.iterdir()):
        if not c.overwrite:
            raise UserError(f"--out {out} is not empty: pass --resume to continue it, --overwrite to replace it, "
                            "or choose another --out")
        if is_main:
            shutil.rmtree(out)
    return None


def attention_memory(examples: list[dict], batch_size: int, max_length: int, layers: int, heads: int) -> int:
    """Bytes of attention weights the heaviest batch keeps for the backward pass, estimated.

    With a mask (packed or padded rows) the CPU's attention kernel materialises ``heads x width x width`` fp32
    weights per row and layer; rows of packed sequences hold ``tokens / width`` rows. Two such tensors (the
    weights and their softmax output) live until the backward pass.
    """
    lengths = sorted((len(e["input_ids"]) + len(e.get("pg_input_ids") or ()) for e in examples), reverse=True)
    tokens = sum(lengths[:batch_size])
    width = min(max(max_length, max(lengths, default=0)), tokens)
    return 2 * 4 * layers * heads * tokens * width


def _precision(c: TrainConfig, examples: list[dict], console, total_memory: int | None = None):
    """Precision, weight dtype and activation checkpointing for this machine.

    ``auto`` checkpointing is on with a GPU; on a CPU, where it costs ~40% more time per step, only when the
    heaviest batch's attention would take over 40% of the RAM (it then took 21 GB -> 10 GB at batch size 4 with
    the bash example's 777-token prompt).
    """
    import torch

    cuda = torch.cuda.is_available()
    precision = c.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    checkpointing = c.activation_checkpointing == "on" or (c.activation_checkpointing == "auto" and cuda)
    if c.activation_checkpointing == "auto" and not cuda and examples:
        from transformers import AutoConfig

        from genpi.models import resolve_model

        config = AutoConfig.from_pretrained(resolve_model(c.model))
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        need = attention_memory(examples, c.batch_size, c.max_length, text.num_hidden_layers, text.num_attention_heads)
        total = total_memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > 0.4 * total:
            checkpointing = True
            console.print(f"activation checkpointing on: a batch's attention would keep ~{need / 2**30:.0f} GB of "
                          f"{total / 2**30:.0f} GB RAM (lower --batch-size, or --activation-checkpointing off)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # fp16 trains fp32 weights under autocast
    return precision, dtype, checkpointing


def _dry_run(data, weights, console) -> None:
    from genpi.training.views import decode_view

    e, soft = data.examples[0], data.head is not None
    context = ("after the soft prompt, which stands in for the prompt's tokens" if soft else
               "the prompt kept in context, unsupervised" if e.get("prepended") else "student context")
    views = [(f"behaviour ({context})", e["input_ids"], e["labels"])]
    if "pg_input_ids" in e:
        views.append(("prompt generation", e["pg_input_ids"], e["pg_labels"]))
    if "teacher_input_ids" in e:
        views.append(("teacher (prompt + dialogue, for the KL term)", e["teacher_input_ids"], e["teacher_labels"]))
    for title, ids, labels in views:
        console.rule(f"{title}: {len(ids)} tokens, supervised in [[...]]")
        console.print(decode_view(data.tokenizer, ids, labels), markup=False, highlight=False)
    console.rule()
    console.print(f"weights {weights}; {data.stats.used} of {data.stats.records} records usable; "
                  f"{data.plan.steps} optimizer steps planned ({data.plan.reason}); nothing was trained (--dry-run)",
                  markup=False, highlight=False)


def plot_losses(log_history: list[dict], path: Path) -> None:
    """The logged loss terms against the optimizer step, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in zip(("loss", *LOSS_KEYS), ("k-", "C0-", "C1-", "C2-", "C3-")):
        points = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, marker="o", markersize=3, label="total" if key == "loss" else key.split("/")[1],
                    linewidth=1.0 if key == "loss" else 1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(c, weights, stats, history, info, seconds, out):
    from rich.table import Table

    table = Table(title=f"genpi train: {c.strategy}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("weights", f"sft {weights['w_sft']:g}  pg {weights['w_pg']:g}  kl {weights['w_kl']:g}"
                  + (f"  onpolicy {weights['w_onpolicy']:g}" if weights["w_onpolicy"] else "")
                  + (f"  prepend {weights['prepend_share']:g}" if weights["prepend_share"] else "")
                  + (f"  pg share {weights['pg_share']:g}" if weights["w_pg"] and weights["pg_share"] < 1 else ""))
    skipped = f"{stats.skipped_error} failed or without an agent turn, {stats.skipped_too_long} too long"
    table.add_row("records", f"{stats.used} of {stats.records} used ({skipped}; {stats.cut_turns} cut to fewer turns)")
    table.add_row("supervised tokens", f"behaviour {stats.tokens['behaviour']}, prompt generation "
                  f"{stats.tokens['prompt_generation']} per epoch")
    for key in ("loss", *LOSS_KEYS):
        values = [h[key] for h in history if key in h and "step" in h]
        if values:
            table.add_row(key, f"{values[0]:.4f} -> {values[-1]:.4f}")
    plan = info.step_plan
    epochs = f"{info.epochs:g} epoch" + ("" if info.epochs == 1 else "s")
    table.add_row("steps", f"{info.steps} in {seconds:.0f} s: {epochs} of {plan['records']} records ({plan['reason']})")
    table.add_row("adapter", str(out))
    return table


def _log_lines_callback():
    from transformers import TrainerCallback

    from genpi.progress import duration

    class LogLines(TrainerCallback):
        """One plain line per logging step, for a log file or CI (a terminal gets the rich panel)."""

        def __init__(self, console):
            self.console, self.start = console, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            self.first = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            done = max(1, state.global_step - self.first)
            spent = time.monotonic() - self.start
            left = (state.max_steps - state.global_step) * spent / done
            terms = "  ".join(f"{k} {logs[k]:.4f}" for k in ("loss", *LOSS_KEYS) if k in logs)
            self.console.print(f"step {state.global_step}/{state.max_steps}  {terms}  {spent / done:.1f} s/step, "
                               f"{duration(left)} left", markup=False, highlight=False)

    return LogLines


def _stage_examples(c: TrainConfig, tokenizer, records, prompt, context, total: int, console):
    """PromptIntern's examples, ``total`` of them stage after stage (genpi.training.promptintern), with the
    templates made first."""
    from genpi.training.promptintern import build_stage_examples, make_templates

    model = _load_model(c).eval()
    templates = make_templates(prompt, model, tokenizer, c.intern_rates)
    del model
    examples, stats, stages = build_stage_examples(tokenizer, records, prompt, c.intern_rates, templates,
                                                   c.intern_shots, context=context, max_length=c.max_length,
                                                   total=total, seed=c.seed)
    for i, st in enumerate(stages, 1):
        console.print(f"stage {i}: template {st.rate:g} of the prompt (kept {st.achieved:.3f} of its tokens), "
                      f"{st.shots} demonstrations, {st.examples} examples", markup=False, highlight=False)
    return examples, stats, stages


def soft_prompt_config(c: TrainConfig, head_tokens: int):
    """The PEFT config of a soft prompt strategy and its virtual tokens (by default the prompt's own count)."""
    from peft import CartridgeConfig, PromptTuningConfig

    virtual = c.virtual_tokens or head_tokens
    if c.strategy == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual), virtual
    return CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual), virtual


def init_soft_prompt(model, strategy: str, ids: list[int]) -> None:
    """Start a soft prompt from the prompt's first tokens: their embeddings (prompt tuning), or their keys and
    values under the base model (a KV prefix; from the whole prompt, it is the prompted model exactly)."""
    import torch
    from peft import initialize_kv_prefix_from_past_key_values

    device = next(model.parameters()).device
    tensor = torch.tensor([ids], device=device)
    with torch.no_grad():
        if strategy == "prompt_tuning":
            embedding = model.prompt_encoder[model.active_adapter].embedding
            embedding.weight.copy_(model.get_input_embeddings()(tensor)[0].to(embedding.weight.dtype))
            return
        from transformers import DynamicCache

        from genpi.serving.engine import cache_keyword

        cache = DynamicCache(config=model.get_base_model().config)
        with model.disable_adapter():
            model(input_ids=tensor, use_cache=True, **{cache_keyword(model): cache})
    initialize_kv_prefix_from_past_key_values(model, past_key_values=cache, num_virtual_tokens=len(ids))


@dataclass
class TrainData:
    """What the records became: the step ``data`` of a run (:func:`prepare_data`)."""

    counts: dict  # run.json's counts: what synthesis kept and dropped
    prompt: AgentPrompt
    tokenizer: Any
    examples: list[dict]
    stats: Any  # genpi.training.views.ViewStats
    plan: StepPlan
    stages: list = field(default_factory=list)  # PromptIntern's stages
    head: tuple | None = None  # what a soft prompt stands in for: (text, ids); None for a LoRA


def _load_model(c: TrainConfig, tokenizer: bool = False, **kwargs):
    """The base model (or its tokenizer), or a one-line error naming ``--model``."""
    from genpi.models import load_model, load_tokenizer

    try:
        return load_tokenizer(c.model) if tokenizer else load_model(c.model, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load --model {c.model}: {str(e).splitlines()[0]}") from None


def prepare_data(c: TrainConfig, console, processes: int | None = None) -> TrainData:
    """Step *data*: the synthesis run's records become labelled examples, their stats, and the run's step plan.

    ``processes`` (default: ``WORLD_SIZE``, as ``accelerate launch`` and ``torchrun`` set it) share the examples of
    each step, so they decide the steps per epoch.
    """
    from genpi.prompt import prompted_head
    from genpi.training.views import build_examples, usable

    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    weights = c.weights()
    counts, prompt, records = load_training_run(c.data)
    tokenizer = _load_model(c, tokenizer=True)
    head = prompted_head(tokenizer, prompt) if c.strategy in SOFT_PROMPTS else None
    if head is not None and c.virtual_tokens > len(head[1]):  # before anything is written
        raise UserError(f"--virtual-tokens {c.virtual_tokens}: the soft prompt is initialised from the prompt's tokens, "
                        f"which are {len(head[1])}: give at most {len(head[1])} (or 0 for all of them)")
    if c.strategy == "promptintern":  # one pass over a staged dataset, sized by the plan
        plan = plan_steps(c, sum(usable(r) for r in records), processes)
        total = c.max_steps * c.batch_size * c.grad_accum if c.max_steps > 0 else max(1, round(plan.epochs * plan.records))
        examples, stats, stages = _stage_examples(c, tokenizer, records, prompt, c.student_context, total, console)
        return TrainData(counts, prompt, tokenizer, examples, stats, plan, stages=stages)
    examples, stats = build_examples(
        tokenizer, records, prompt, context=c.student_context, max_length=c.max_length,
        prompt_generation=weights["w_pg"] > 0, teacher=weights["w_kl"] > 0,
        prepend_share=weights["prepend_share"], pg_share=weights["pg_share"], seed=c.seed, soft=head,
        onpolicy=weights["w_onpolicy"] > 0,
    )
    return TrainData(counts, prompt, tokenizer, examples, stats, plan_steps(c, len(examples), processes), head=head)


def trainer_args(c: TrainConfig, data: TrainData, precision: str, checkpointing: bool):
    """Step *trainer*, first half: the ``GenPIConfig`` (TRL's ``SFTConfig`` plus the GenPI loss) of the run."""
    import torch

    from genpi.training.trainer import GenPIConfig

    weights = c.weights()
    extra_args = {"report_to": "none", **c.training_args}  # anything else TrainingArguments takes, e.g. report_to
    if data.stages:  # the stages are consecutive blocks of one pass: read in order, once
        extra_args.update(train_sampling_strategy="sequential")
    return GenPIConfig(
        output_dir=str(Path(c.out) / CHECKPOINTS),
        per_device_train_batch_size=c.batch_size,
        gradient_accumulation_steps=c.grad_accum,
        learning_rate=c.peak_lr(),
        lr_scheduler_type=c.lr_scheduler,
        warmup_steps=c.warmup_ratio,  # a value below 1 is a share of the steps
        num_train_epochs=1 if data.stages else data.plan.epochs,
        max_steps=c.max_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=checkpointing,
        logging_steps=c.logging_steps,
        save_strategy="steps",
        save_steps=c.save_steps,
        save_total_limit=c.save_total_limit,
        seed=c.seed,
        max_length=c.max_length,
        w_sft=weights["w_sft"], w_pg=weights["w_pg"], w_kl=weights["w_kl"],
        kl_beta=c.kl_beta, kl_temperature=c.kl_temperature, w_onpolicy=weights["w_onpolicy"],
        onpolicy_max_new_tokens=c.onpolicy_max_new_tokens, onpolicy_temperature=c.onpolicy_temperature,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every step
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, say so: under `accelerate launch`/`torchrun` the processes then join a gloo (CPU) process
        # group instead of each training alone.
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        # Every token of every row the model computed (padding included), summed over processes and kept in the
        # checkpoints: genpi.json's train_tokens, from which `genpi eval` estimates training cost and break-even.
        include_num_input_tokens_seen="all",
        **extra_args,
    )


def start_output(c: TrainConfig, state) -> Path | None:
    """Step *output*: check ``--out`` (every process), prepare it and write the settings a resume must match (the
    main one); return the checkpoint to resume from."""
    resume_from = _prepare_output(c, state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        ckpt_dir = Path(c.out) / CHECKPOINTS
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / SIGNATURE_FILE).write_text(json.dumps(c.signature(), indent=2) + "\n", encoding="utf-8")
    return resume_from


def model_and_tuner(c: TrainConfig, data: TrainData, dtype):
    """Step *model*: the base model and the PEFT config of what trains (a LoRA, or a soft prompt and its length)."""
    from peft import LoraConfig

    model = _load_model(c, dtype=dtype)
    if data.head is not None:
        tuner, virtual = soft_prompt_config(c, len(data.head[1]))
        return model, tuner, virtual
    tuner = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                       target_modules=_lora_targets(c, model), task_type="CAUSAL_LM")
    return model, tuner, 0


def make_trainer(c: TrainConfig, data: TrainData, args, model, tuner, console, is_main: bool):
    """Step *trainer*, second half: the ``GenPITrainer`` with its collator and progress; ``(trainer, packed)``."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl.trainer.callbacks import RichProgressCallback

    from genpi.training.collator import GenPICollator
    from genpi.training.trainer import GenPITrainer, attention_cost, packing_works

    soft = data.head is not None
    # A soft prompt is one prefix per row, so its rows hold one sequence each.
    pack = c.packing and not soft and packing_works(model)
    if c.packing and not soft and not pack and is_main:
        console.print(f"[yellow]{c.model} does not keep packed sequences apart: training with padded rows[/yellow]")
    trainer = GenPITrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.examples),
        data_collator=GenPICollator(data.tokenizer.pad_token_id, pack=pack, attention_cost=attention_cost(model.config),
                                    max_width=c.max_length),
        processing_class=data.tokenizer,
        peft_config=tuner,
        callbacks=[RichProgressCallback() if console.is_terminal else _log_lines_callback()(console), *c.callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # the rich panel, or LogLines, shows the logs
    return trainer, pack


def save_outputs(c: TrainConfig, data: TrainData, trainer, *, precision: str, packed: bool, virtual: int,
                 seconds: float, processes: int, console) -> AdapterInfo:
    """Step *save* (main process): ``genpi.json``, ``loss.png``, the summary, and a warning when the run was too
    short to learn. The adapter's weights are saved by the trainer on every process."""
    from genpi.models import resolve_model

    out, weights, state = Path(c.out), c.weights(), trainer.state
    history = state.log_history
    warning = too_short(c, data.plan, state.global_step, history)
    # Passes over the records done: the dataset is the records (or PromptIntern's staged examples, one pass).
    epochs = round(state.epoch * len(data.examples) / max(1, data.plan.records), 4)
    info = AdapterInfo(
        genpi_version=__version__,
        strategy=c.strategy,
        weights={"sft": weights["w_sft"], "pg": weights["w_pg"], "kl": weights["w_kl"]},
        prepend_share=weights["prepend_share"],
        pg_share=weights["pg_share"],
        kl={"beta": c.kl_beta, "temperature": c.kl_temperature},
        base_model=c.model,
        base_model_path=resolve_model(c.model),
        source_run=str(Path(c.data).resolve()),
        synthesis=data.counts,  # what synthesis kept and dropped (cut-off or empty agent turns, rejected inputs)
        prompt_hash=data.prompt.hash,
        prompt_tokens=data.prompt.token_length(data.tokenizer),
        student_context=c.student_context,
        max_length=c.max_length,
        lora={"r": c.lora_r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "target": c.lora_target},
        precision=precision,
        packing=packed,
        records=dataclasses.asdict(data.stats),
        steps=state.global_step,
        epochs=epochs,
        step_plan=data.plan.to_dict(),
        too_short=warning,
        # The on-policy term's student rows are trained like the views' rows; its sampling and its teacher's
        # rows, like the KL teacher's (tokens per epoch times the epochs done), are forward passes only.
        # (The views' rows are counted as the collator made them; with no offline weight they are never run.)
        train_tokens=int(state.num_input_tokens_seen) * bool(weights["w_sft"] + weights["w_pg"] + weights["w_kl"])
        + trainer.onpolicy_tokens["student"],
        teacher_tokens=round(sum(len(e.get("teacher_input_ids", ())) for e in data.examples) * state.epoch)
        + trainer.onpolicy_tokens["teacher"] + trainer.onpolicy_tokens["sampled"],
        train_seconds=round(seconds, 2),
        processes=processes,
        config=c.public(),
        stages=[st.to_dict() for st in data.stages],
        virtual_tokens=virtual,
    )
    info.write(out)
    plot_losses(history, out / "loss.png")
    console.print()  # below the progress panel
    console.print(_summary(c, weights, data.stats, history, info, seconds, out))
    if warning:
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False, soft_wrap=True)  # one line
    return info


def train(config: TrainConfig, console=None) -> Path:
    """Train an adapter on a synthesis run; return the output directory (a PEFT adapter plus ``genpi.json``).

    The steps: data (records -> examples and a step plan), trainer arguments, output directory, model and tuner,
    trainer, training, save.
    """
    from accelerate import PartialState

    from genpi.progress import make_console

    c = config
    console = console or make_console()
    data = prepare_data(c, console)
    if c.dry_run:
        _dry_run(data, c.weights(), console)
        return Path(c.out)

    precision, dtype, checkpointing = _precision(c, data.examples, console)
    # A soft prompt's prefix is outside the checkpointed layers.
    args = trainer_args(c, data, precision, checkpointing and data.head is None)
    state = PartialState()  # the state the training arguments just set up
    resume_from = start_output(c, state)

    model, tuner, virtual = model_and_tuner(c, data, dtype)
    trainer, packed = make_trainer(c, data, args, model, tuner, console, state.is_main_process)
    if data.head is not None and resume_from is None:
        init_soft_prompt(trainer.accelerator.unwrap_model(trainer.model), c.strategy, data.head[1][:virtual])
    start = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.monotonic() - start
    trainer.save_model(c.out)

    if state.is_main_process:
        save_outputs(c, data, trainer, precision=precision, packed=packed, virtual=virtual, seconds=seconds,
                     processes=state.num_processes, console=console)
    state.wait_for_everyone()
    return Path(c.out)


def train_resumably(config: TrainConfig, console=None) -> Path:
    """For recipes: keep a finished adapter, continue a checkpointed one, start anything else over.

    Rerunning a recipe after a crash or Ctrl-C then redoes only what was not finished.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.out)
    if (out / GENPI_FILE).exists():
        return out
    ckpts = out / CHECKPOINTS
    resume = ckpts.is_dir() and get_last_checkpoint(str(ckpts)) is not None
    return train(dataclasses.replace(config, resume=resume, overwrite=not resume), console=console)
