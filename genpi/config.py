"""Configuration: one dataclass per stage, each field with a one-line help, validated where it is built.

The CLI builds its flags from these fields (``add_arguments``: ``Literal`` fields become ``choices``), recipes and
Python users construct them directly, and every value is checked in ``__post_init__`` (a range in the field's
metadata, a ``Literal``'s choices, and each config's own rules), so a bad value is a one-line ``UserError`` the
moment a config is made, whoever makes it. What a stage needs to run at all (a prompt, a run directory) is checked
when the stage starts: a recipe may build a partial config and fill it in with ``dataclasses.replace``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from genpi.errors import UserError


def _f(default, help: str, *, at_least=None, between=None, cli: bool = True):
    """A field with its help; ``at_least``/``between`` are checked in ``__post_init__``; ``cli=False`` keeps it
    out of the command line (Python objects such as callbacks)."""
    meta = {"help": help, "at_least": at_least, "between": between, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(config) -> None:
    """Paths given to text fields become text; then the checks every field declares: its ``Literal`` choices,
    ``at_least`` and ``between`` bounds."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, os.PathLike):
            setattr(config, f.name, os.fspath(value))
        elif isinstance(value, list) and hints[f.name] == list[str]:
            setattr(config, f.name, [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value])
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if value is None:
            continue
        choices = _choices(hints[f.name])
        if choices and value not in choices:
            raise UserError(f"unknown {_flag(f.name)} {value!r}: choose one of {', '.join(map(str, choices))}")
        if meta.get("at_least") is not None and value < meta["at_least"]:
            raise UserError(f"{_flag(f.name)} is {value}: {_flag(f.name)} must be at least {meta['at_least']}")
        if meta.get("between") is not None:
            lo, hi = meta["between"]
            if not lo <= value <= hi:
                raise UserError(f"{_flag(f.name)} is {value}: {_flag(f.name)} must be between {lo} and {hi}")


def _choices(typ) -> tuple:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    return typing.get_args(typ) if typing.get_origin(typ) is Literal else ()


def check_messages(messages, what: str) -> list[dict]:
    """A list of ``{role, content}`` chat messages that does not end with a user turn, or a one-line error."""
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok or (messages and messages[-1]["role"] == "user"):
        raise UserError(f"{what} must be a list of {{role, content}} messages that does not end with a user turn, "
                        'e.g. [{"role": "system", "content": "..."}]')
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@dataclass
class SynthConfig:
    """Role-swapping synthesis: from one prompt to a resumable dialogue dataset."""

    prompt: str = _f("", "prompt file: plain text, <USER>:/<AGENT>: transcript, or chat JSON")
    out: str = _f("runs/synth", "run directory (created; resumed when it exists)")
    num_inputs: int = _f(32, "number of records (user inputs) to synthesize", at_least=1)
    seed_inputs: str = _f("", "optional file of real user inputs, one per line: used first, and shown to the model playing the user")
    exclude_run: str = _f("", "a run directory whose inputs this run must not repeat (to synthesize a held-out run)")
    inputs_only: bool = _f(False, "propose and screen user inputs only (e.g. held-out inputs for genpi eval): no answers, dialogues or reasons")
    input_sampler: Literal["roleswap", "magpie", "both"] = _f("roleswap", "how the model playing the user writes an input: roleswap (it answers 'Next request?' after earlier requests), magpie (the prompt, then the chat template's open user turn, which the model continues: needs a server with continue_final_message), or both (alternate calls)")
    screen_by_reply: bool = _f(True, "keep a proposed input only if the prompted agent's first reply to it is whole (not cut off after one regeneration, not empty) and passes --checker; that reply is the dialogue's first turn")
    checker: str = _f("", "the prompt's protocol checker (as genpi eval --checker: json, regex:PATTERN, a JSON Schema file or FILE.py:FUNCTION): the agent's first reply to a proposed input must pass it")
    max_turns: int = _f(3, "agent turns per role-swapped dialogue at most", at_least=1)
    end_pattern: str = _f("auto", "regex found in an agent turn's last line that ends the dialogue: auto (derived from the prompt's demonstrations), none, or a pattern")
    end_marker: str = _f("<END>", "text the environment writes when the dialogue is over")
    env: Literal["simulated", "sandbox"] = _f("simulated", "the environment side of dialogues: simulated (the model plays it) or sandbox (each command in an agent "
                                                           "turn really runs, in a throwaway sandbox per dialogue, and its output is the reply; turns without one stay simulated)")
    sandbox_backend: Literal["auto", "bwrap", "unshare"] = _f("auto", "how the sandbox isolates: auto (bubblewrap where installed, else unshare), bwrap or unshare")
    env_output_chars: int = _f(800, "characters of a command's output in a sandbox reply; longer output is cut with a note", at_least=1)
    action_timeout: float = _f(10.0, "seconds one command may run in the sandbox before it is killed", at_least=0.1)
    base_url: str = _f("", "OpenAI-compatible server URL (default: $OPENAI_BASE_URL, else the embedded local server)")
    # Never written: run.json and the resume signature leave it out (see `public`), and repr hides it.
    api_key: str = field(default="", repr=False, metadata={
        "help": "API key of --base-url (default: $OPENAI_API_KEY; the variable keeps it out of the process list)"})
    model: str = _f("default", "agent/teacher model served at --base-url (also the default for the roles below)")
    env_model: str = _f("", "model playing the user/environment side (default: --model)")
    synth_model: str = _f("", "model proposing inputs (playing the user) and writing reasons (default: --model)")
    agent_temperature: float = _f(0.0, "sampling temperature of the agent, with and without the prompt (0 = greedy, as the paper decodes the teacher)", between=(0, 2))
    env_temperature: float = _f(0.7, "sampling temperature of the user/environment side of dialogues", between=(0, 2))
    inputs_temperature: float = _f(0.8, "sampling temperature of the model playing the user when it proposes inputs", between=(0, 2))
    reason_temperature: float = _f(0.7, "sampling temperature of the reasons", between=(0, 2))
    max_new_tokens: int = _f(192, "tokens of a dialogue turn at most; an agent turn cut off there is regenerated once with --regenerate-max-new-tokens", at_least=1)
    regenerate_max_new_tokens: int = _f(0, "tokens at most when an agent turn cut off at --max-new-tokens is made again (0 = twice --max-new-tokens); cut off again, it ends its dialogue before it", at_least=0)
    as_is_max_new_tokens: int = _f(96, "tokens of the AS-IS answer at most (context of prompt generation, never a target)", at_least=1)
    reason_max_new_tokens: int = _f(96, "tokens of a reason at most (the paper asks for two or three sentences)", at_least=1)
    concurrency: int = _f(8, "requests in flight at once", at_least=1)
    timeout: float = _f(600.0, "seconds before one request times out (it is then retried)", at_least=1)
    retries: int = _f(5, "attempts per request on 429, 5xx, timeouts and connection errors", at_least=1)
    seed: int = _f(0, "seed for the run: request seeds and ordering derive from it")
    overwrite: bool = _f(False, "discard an existing run directory whose config differs, instead of refusing")
    dry_run: bool = _f(False, "print the exact messages that would be sent for one input, send nothing")

    def __post_init__(self):
        _check(self)
        if not self.end_marker.strip():
            raise UserError("--end-marker must not be empty")

    def signature(self) -> dict:
        """The fields that decide a record's content: a resume must match them exactly."""
        keep = ("num_inputs", "out", "base_url", "concurrency", "timeout", "retries", "overwrite", "dry_run", "prompt",
                "inputs_only", "sandbox_backend")
        return {k: v for k, v in self.public().items() if k not in keep}

    def public(self) -> dict:
        """The settings without the API key (the pipeline also strips credentials from ``base_url``)."""
        out = dataclasses.asdict(self)
        del out["api_key"]
        return out


# Strategy presets: data views and loss weights. `prepend_share` is the share of behaviour examples that keep the
# prompt in their context (its tokens unsupervised); 1.0 and 0.5 are the paper's prepend baselines. `pg_share` is
# the share of records that also get a prompt-generation example: a quarter (the paper: every record, which spends
# nine tenths of the training tokens re-learning the same prompt text; docs/TRAINING.md). `w_onpolicy` weighs the
# reverse KL on the student's own samples (on-policy distillation). Which parameters train is the strategy's
# `tuner`: a LoRA, or a soft prompt (virtual token embeddings, or a KV prefix) in place of the prompt.
STRATEGIES = {
    "genpi": {"w_sft": 0.7, "w_pg": 0.3, "w_kl": 0.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.25},
    "seqkd": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 0.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.0},
    "seqkd_kl": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 1.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.0},
    "genpi_kl": {"w_sft": 0.7, "w_pg": 0.3, "w_kl": 1.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.25},
    "prepend": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 0.0, "w_onpolicy": 0.0, "prepend_share": 1.0, "pg_share": 0.0},
    "promptintern": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 0.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.0},
    "onpolicy": {"w_sft": 0.0, "w_pg": 0.0, "w_kl": 0.0, "w_onpolicy": 1.0, "prepend_share": 0.0, "pg_share": 0.0},
    "prompt_tuning": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 1.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.0},
    "kv_prefix": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 1.0, "w_onpolicy": 0.0, "prepend_share": 0.0, "pg_share": 0.0},
}

# Strategies that train a soft prompt in place of the prompt instead of a LoRA: they cannot be merged, and their
# virtual tokens are context of every request.
SOFT_PROMPTS = ("prompt_tuning", "kv_prefix")

# Passes over the records when neither --epochs nor --max-steps is given (TRL's default), raised to reach --min-steps.
DEFAULT_EPOCHS = 3

Strategy = Literal["genpi", "seqkd", "seqkd_kl", "genpi_kl", "prepend", "promptintern", "onpolicy", "prompt_tuning",
                   "kv_prefix"]


@dataclass
class TrainConfig:
    """Training an adapter on a synthesis run: the GenPI joint loss, or a baseline, as a strategy preset."""

    data: str = _f("", "synthesis run directory (written by `genpi synth --out`)")
    out: str = _f("adapters/genpi", "output directory: PEFT adapter, genpi.json, loss.png and checkpoints/")
    strategy: Strategy = _f("genpi_kl", "preset of views and weights (docs/TRAINING.md); the default, genpi_kl, is GenPI plus the KL term to the prompted base model")
    model: str = _f("default", "base model to train: the model that played the agent in synthesis")
    w_sft: float | None = _f(None, "weight of the behaviour loss (default: the strategy's)", at_least=0)
    w_pg: float | None = _f(None, "weight of the prompt-generation loss (default: the strategy's)", at_least=0)
    w_kl: float | None = _f(None, "weight of the KL term to the prompted teacher (default: the strategy's)", at_least=0)
    prepend_share: float | None = _f(None, "share of behaviour examples that keep the prompt in context (default: the strategy's)", between=(0, 1))
    pg_share: float | None = _f(None, "share of records that also get a prompt-generation example (default: the strategy's, 0.25 for genpi and genpi_kl; the paper: 1)", between=(0, 1))
    w_onpolicy: float | None = _f(None, "weight of the on-policy term: reverse KL to the prompted teacher on replies the student samples itself (default: the strategy's)", at_least=0)
    onpolicy_max_new_tokens: int = _f(64, "tokens the student samples per input for the on-policy term, at most", at_least=1)
    onpolicy_temperature: float = _f(1.0, "sampling temperature of the student's on-policy replies", between=(0.01, 2))
    intern_rates: list[float] = _f([1.0, 0.5, 0.0], "promptintern: share of the prompt's tokens kept in each stage's template (pruned by surprisal, as --compressed in genpi eval; 0 = no prompt); one value per stage")
    intern_shots: list[int] = _f([2, 1, 0], "promptintern: synthesized demonstration dialogues before the input in each stage; one value per stage")
    virtual_tokens: int = _f(0, "prompt_tuning/kv_prefix: virtual tokens of the soft prompt, initialised from the prompt's first ones (0 = as many as the prompt has: a kv_prefix then starts as the prompted model)", at_least=0)
    kl_beta: float = _f(0.0, "divergence of the KL term: 0 = forward KL(teacher||student) as in context distillation, 1 = reverse KL(student||teacher), between = generalized JSD", between=(0, 1))
    kl_temperature: float = _f(1.0, "softmax temperature of both distributions in the KL term (the term is scaled by its square)", at_least=1e-6)
    student_context: list[dict] = _f([], "messages before each input at training and inference (default none: the template's own)")
    max_length: int = _f(1536, "tokens per example at most; a prompt-generation target must fit whole", at_least=1)
    packing: bool = _f(True, "pack a batch's sequences into shared rows (block-diagonal attention) instead of padding each")
    lora_r: int = _f(16, "LoRA rank", at_least=1)
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)", at_least=1)
    lora_dropout: float = _f(0.0, "dropout on the LoRA input (the paper: 0.05; on a CPU it costs as much as the matrix products)", between=(0, 1))
    lora_target: str | list[str] = _f("all-linear", "modules that get LoRA: all-linear (every linear layer but the head), or a list of module names (a comma list on the command line)")
    learning_rate: float | None = _f(None, "peak learning rate (default: 1e-3 for a LoRA, 1e-2 for a soft prompt, whose few parameters need larger steps)", at_least=0)
    lr_scheduler: str = _f("cosine", "learning-rate schedule (a transformers scheduler name)")
    warmup_ratio: float = _f(0.03, "share of the steps spent warming up", between=(0, 0.999))
    epochs: float | None = _f(None, f"passes over the records (default: {DEFAULT_EPOCHS}, raised to whole epochs until the run has --min-steps optimizer steps; given, kept as is)", at_least=0)
    max_steps: int = _f(-1, "optimizer steps in total; overrides --epochs and --min-steps when positive")
    min_steps: int = _f(40, "optimizer steps a run takes at least when --epochs and --max-steps are not given: with few records the epochs are raised to reach them; a shorter run is warned about (0 = no minimum)", at_least=0)
    batch_size: int = _f(2, "records per device per micro-step (each gives a behaviour row, some a prompt-generation row too)", at_least=1)
    grad_accum: int = _f(1, "micro-steps per optimizer step", at_least=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f("auto", "auto: bf16 on a GPU that has it, else fp32")
    activation_checkpointing: Literal["auto", "on", "off"] = _f("auto", "auto: on with a GPU; on a CPU only when a batch's attention would fill 40% of the RAM")
    logging_steps: int = _f(1, "optimizer steps between loss logs", at_least=1)
    save_steps: int = _f(50, "optimizer steps between checkpoints", at_least=1)
    save_total_limit: int = _f(2, "checkpoints kept", at_least=1)
    training_args: dict = _f({}, "other transformers TrainingArguments, passed through (e.g. {\"report_to\": \"wandb\"})")
    callbacks: list = _f([], "transformers TrainerCallback objects (Python only)", cli=False)
    resume: bool = _f(False, "continue from the last checkpoint in --out")
    overwrite: bool = _f(False, "replace an existing --out instead of refusing")
    seed: int = _f(0, "seed for LoRA init, shuffling and the prepend selection")
    dry_run: bool = _f(False, "print one example of each view with its supervised spans in [[...]], train nothing")

    def __post_init__(self):
        if isinstance(self.lora_target, str) and self.lora_target != "all-linear":  # "q_proj,v_proj", as typed
            self.lora_target = [t.strip() for t in self.lora_target.split(",") if t.strip()]
        _check(self)
        self.student_context = check_messages(self.student_context, "--student-context")
        if not self.lora_target:
            raise UserError("--lora-target is empty: give all-linear or module names such as q_proj,v_proj")
        if self.max_steps <= 0 and self.epochs is not None and self.epochs <= 0:
            raise UserError("--epochs is 0 and --max-steps is not set: give a positive --epochs or --max-steps")
        weights = self.weights()
        if not weights["w_sft"] + weights["w_pg"] + weights["w_kl"] + weights["w_onpolicy"] > 0:
            raise UserError("every loss weight is 0: give --w-sft, --w-pg, --w-kl or --w-onpolicy a positive value")
        try:
            self.intern_rates = [float(r) for r in self.intern_rates]
            self.intern_shots = [int(n) for n in self.intern_shots]
        except (TypeError, ValueError):
            raise UserError(f"--intern-rates {self.intern_rates!r} / --intern-shots {self.intern_shots!r}: give numbers, "
                            "e.g. --intern-rates 1,0.5,0 --intern-shots 2,1,0") from None
        if len(self.intern_rates) != len(self.intern_shots) or not self.intern_rates:
            raise UserError(f"--intern-rates has {len(self.intern_rates)} stages and --intern-shots {len(self.intern_shots)}: "
                            "give one value per stage in each, e.g. --intern-rates 1,0.5,0 --intern-shots 2,1,0")
        if any(not 0 <= r <= 1 for r in self.intern_rates) or any(n < 0 for n in self.intern_shots):
            raise UserError(f"--intern-rates {self.intern_rates} / --intern-shots {self.intern_shots}: rates must be between 0 "
                            "and 1 and shots at least 0")
        if self.strategy in SOFT_PROMPTS:
            if weights["w_pg"] or weights["w_onpolicy"] or weights["prepend_share"]:
                raise UserError(f"--strategy {self.strategy} trains a soft prompt with the behaviour and KL losses only: "
                                "leave --w-pg, --w-onpolicy and --prepend-share at 0, or use a LoRA strategy")
            if self.activation_checkpointing == "on":
                raise UserError(f"--strategy {self.strategy}: activation checkpointing does not work with soft prompts "
                                "(their prefix is outside the checkpointed layers): pass --activation-checkpointing off")
        from transformers.trainer_utils import SchedulerType

        schedulers = [t.value for t in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise UserError(f"--lr-scheduler {self.lr_scheduler!r}: choose one of {', '.join(schedulers)}")
        reserved = sorted(set(self.training_args) & _OWNED_TRAINING_ARGS)
        if reserved:
            raise UserError(f"--training-args sets {', '.join(reserved)}, which genpi sets from its own flags: "
                            "use those flags instead")

    def peak_lr(self) -> float:
        """``learning_rate``, or the default of the strategy's kind of parameters."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return 1e-2 if self.strategy in SOFT_PROMPTS else 1e-3

    def weights(self) -> dict:
        """The strategy's preset with any weight given explicitly put over it."""
        out = dict(STRATEGIES[self.strategy])
        for key in out:
            if getattr(self, key) is not None:
                out[key] = float(getattr(self, key))
        return out

    def signature(self) -> dict:
        """The fields a resumed run must share with the run that wrote its checkpoints."""
        keep = ("out", "resume", "overwrite", "dry_run", "epochs", "max_steps", "min_steps", "logging_steps", "save_steps",
                "save_total_limit", "callbacks", "training_args")
        return {k: v for k, v in self.public().items() if k not in keep}

    def public(self) -> dict:
        """The settings as JSON (callbacks named by their class)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "callbacks"}
        out["callbacks"] = [type(c).__name__ for c in self.callbacks]
        return json.loads(json.dumps(out, default=str))


# TrainingArguments that TrainConfig's own fields set: --training-args may not set them too.
_OWNED_TRAINING_ARGS = {
    "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "num_train_epochs", "max_steps", "bf16", "fp16", "activation_checkpointing",
    "gradient_checkpointing", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "seed", "max_length",
}


@dataclass
class EvalConfig:
    """Evaluation: held-out inputs answered side by side by the prompted, unprompted and internalized systems."""

    prompt: str = _f("", "prompt file the adapters internalized")
    inputs: str = _f("", "held-out inputs: a synthesis run directory never trained on, or a file (one per line, or JSONL with \"input\")")
    adapter: list[str] = _f([], "adapter directory from `genpi train`, answering without the prompt (repeatable)")
    baseline: list[str] = _f([], "adapter trained with another strategy, labelled by its strategy (repeatable)")
    out: str = _f("reports/eval", "output directory: report.json, report.png, outputs.jsonl")
    model: str | None = _f(None, "base model (default: the adapters' base_model from genpi.json, else the embedded default)")
    train_run: str = _f("", "training run whose inputs must not be held out; empty = each adapter's source_run")
    overlap_check: bool = _f(True, "fail when a held-out input, normalised, is also a training input")
    compressed: list[float] = _f([], "a baseline without training per rate: the prompt pruned to this share of its tokens by surprisal under the "
                                     "base model (LLMLingua's method; docs/EVALUATION.md), e.g. 0.5 (a comma list for several)")
    checker: Any = _f("", "protocol checker scoring every reply: json, nonempty, regex:PATTERN, a JSON Schema file "
                          "(.json), FILE.py:FUNCTION, or (Python) a callable; empty for none")
    num_inputs: int = _f(0, "held-out inputs used, the first ones (0 = all)", at_least=0)
    max_new_tokens: int = _f(128, "tokens generated per reply at most (greedy)", at_least=1)
    stop_strings: bool = _f(True, "end every system's reply where it starts writing the environment's words (the stop strings synthesis derives from the prompt)")
    batch_size: int = _f(16, "requests decoded together (rows of the engine)", at_least=1)
    multiturn_turns: int = _f(32, "agent turns of held-out dialogues replayed for multi-turn fidelity, at most (0 = skip)", at_least=0)
    reconstruction_inputs: int = _f(2, "inputs on which each system is asked to write the prompt back (0 = skip)", at_least=0)
    reconstruction_max_new_tokens: int = _f(0, "tokens per prompt reconstruction at most (0 = the prompt's length + 64)", at_least=0)
    latency_inputs: int = _f(4, "inputs timed as lone requests: prompted, prompted with its prompt's KV cached, and the first adapter, in rotating order (0 = skip)", at_least=0)
    tasks: str = _f("", "JSONL file of tasks with checks (docs/EVALUATION.md, Tasks): each system works each task as an agent in a "
                        "sandbox of its own and is scored on task success; without --inputs, the tasks' requests are also the held-out inputs")
    env: Literal["sandbox"] = _f("sandbox", "where the tasks' commands run: a throwaway sandbox per task and system (never the host)")
    sandbox_backend: Literal["auto", "bwrap", "unshare"] = _f("auto", "how the sandbox isolates: auto (bubblewrap where installed, else unshare), bwrap or unshare")
    task_turns: int = _f(8, "agent turns per task at most", at_least=1)
    answer_pattern: str = _f(r"answer\((.*)\)", "regex whose group captures a final answer in an agent turn (its last matching line)")
    env_output_chars: int = _f(800, "characters of a command's output shown to the agent; longer output is cut with a note", at_least=1)
    action_timeout: float = _f(10.0, "seconds one command may run in the sandbox before it is killed", at_least=0.1)
    teacher_forcing: bool = _f(True, "score every system teacher-forced on the prompted model's own replies: KL(teacher || system), top-1 token agreement and NLL (docs/EVALUATION.md); one forward pass per reply and system")
    constant: bool = _f(True, "add the degenerate baselines: constant (the teacher's most frequent reply on the training run, to every input) and minimal (its shortest reply that passes the checker)")
    near_duplicate: float = _f(0.8, "TF-IDF cosine at or above which a held-out input counts as a near duplicate of a training input (reported)", between=(0, 1))
    exclude_near_duplicates: bool = _f(False, "leave out held-out inputs that are near duplicates of training inputs (--near-duplicate), so that only inputs unlike any trained on are scored")
    noise_floor: float = _f(0.02, "a recovery ratio is undefined when |S_prompted - S_unprompted| is at most this", between=(0, 0.999))
    bootstrap: int = _f(1000, "bootstrap resamples of the items for the recovery noise rule", at_least=1)
    seed: int = _f(0, "seed of the bootstrap")

    def __post_init__(self):
        _check(self)
        _check_pattern(self.answer_pattern, "--answer-pattern")
        try:
            self.compressed = [float(r) for r in self.compressed]
        except (TypeError, ValueError):
            raise UserError(f"--compressed {self.compressed!r}: give shares of the prompt's tokens to keep, e.g. 0.5 or 0.5,0.3") from None
        bad = [r for r in self.compressed if not 0 < r < 1]
        if bad:
            raise UserError(f"--compressed {bad[0]} is not between 0 and 1 (exclusive): it is the share of the prompt's tokens kept")


def _check_pattern(pattern: str, flag: str) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as e:
        raise UserError(f"{flag} {pattern!r} is not a regular expression ({e}): fix or quote it") from None


def _type_of(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    typ = hints[f.name]
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # `float | None`: None means "not given"
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    return typ


def _choice_type(choices: tuple):
    return type(choices[0])


def _json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg})") from None


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field, with the field's help, choices and default (said once)."""
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = _flag(f.name)
        typ = _type_of(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help strings
        if "(default" not in help_text and default not in ("", None, [], {}):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kwargs: dict = {"default": default, "help": help_text}
        choices = _choices(typ)
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif choices:  # shown by argparse, checked by the config (one error format for CLI and Python users)
            parser.add_argument(flag, type=_choice_type(choices), metavar="{" + ",".join(map(str, choices)) + "}",
                                **kwargs)
        elif typ is dict or typing.get_origin(typ) is dict or typing.get_args(typ) == (dict,):
            parser.add_argument(flag, type=_json_arg, metavar="JSON", **kwargs)
        elif typing.get_origin(typ) is list:  # a comma list on the command line
            parser.add_argument(flag, type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                                metavar="A,B", **kwargs)
        elif typ is Any:
            parser.add_argument(flag, type=str, **kwargs)
        else:
            parser.add_argument(flag, type=typ, **kwargs)


def from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def from_dict(cls, data: dict):
    """Build a config from a dict, failing loudly on unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(names))}")
    return cls(**data)
