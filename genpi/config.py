"""Configuration: one small dataclass per concern, each field with a one-line help.

The CLI builds its flags from these fields (``add_arguments``), recipes construct them directly, and both reject
unknown keys (``from_dict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

from genpi.errors import UserError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class SynthConfig:
    """Role-swapping synthesis: from one prompt to a resumable dialogue dataset."""

    prompt: str = _f("", "prompt file: plain text, <USER>:/<AGENT>: transcript, or chat JSON")
    out: str = _f("runs/synth", "run directory (created; resumed when it exists)")
    num_inputs: int = _f(32, "number of records (user inputs) to synthesize")
    seed_inputs: str = _f("", "optional file of real user inputs, one per line: used first, and shown to the model playing the user")
    exclude_run: str = _f("", "a run directory whose inputs this run must not repeat (to synthesize a held-out run)")
    inputs_only: bool = _f(False, "propose and screen user inputs only (e.g. held-out inputs for genpi eval): no answers, dialogues or reasons")
    max_turns: int = _f(3, "agent turns per role-swapped dialogue at most")
    end_pattern: str = _f("auto", "regex found in an agent turn's last line that ends the dialogue: auto (derived from the prompt's demonstrations), none, or a pattern")
    end_marker: str = _f("<END>", "text the environment writes when the dialogue is over")
    base_url: str = _f("", "OpenAI-compatible server URL (default: $OPENAI_BASE_URL, else the embedded local server)")
    # Never written: run.json and the resume signature leave it out (see `public`), and repr hides it.
    api_key: str = field(default="", repr=False, metadata={
        "help": "API key of --base-url (default: $OPENAI_API_KEY; the variable keeps it out of the process list)"})
    model: str = _f("default", "agent/teacher model served at --base-url (also the default for the roles below)")
    env_model: str = _f("", "model playing the user/environment side (default: --model)")
    synth_model: str = _f("", "model proposing inputs (playing the user) and writing reasons (default: --model)")
    agent_temperature: float = _f(0.0, "sampling temperature of the agent, with and without the prompt (0 = greedy, as the paper decodes the teacher)")
    env_temperature: float = _f(0.7, "sampling temperature of the user/environment side of dialogues")
    inputs_temperature: float = _f(0.8, "sampling temperature of the model playing the user when it proposes inputs")
    reason_temperature: float = _f(0.7, "sampling temperature of the reasons")
    max_tokens: int = _f(192, "maximum new tokens of a dialogue turn; an agent turn cut off there ends its dialogue before it")
    as_is_max_tokens: int = _f(96, "maximum new tokens of the AS-IS answer (context of prompt generation, never a target)")
    reason_max_tokens: int = _f(96, "maximum new tokens of a reason (the paper asks for two or three sentences)")
    concurrency: int = _f(8, "requests in flight at once")
    timeout: float = _f(600.0, "seconds before one request times out (it is then retried)")
    retries: int = _f(5, "attempts per request on 429, 5xx, timeouts and connection errors")
    seed: int = _f(0, "seed for the run: request seeds and ordering derive from it")
    overwrite: bool = _f(False, "discard an existing run directory whose config differs, instead of refusing")
    dry_run: bool = _f(False, "print the exact messages that would be sent for one input, send nothing")

    def signature(self) -> dict:
        """The fields that decide a record's content: a resume must match them exactly."""
        keep = ("num_inputs", "out", "base_url", "concurrency", "timeout", "retries", "overwrite", "dry_run", "prompt",
                "inputs_only")
        return {k: v for k, v in self.public().items() if k not in keep}

    def public(self) -> dict:
        """The settings without the API key (the pipeline also strips credentials from ``base_url``)."""
        out = dataclasses.asdict(self)
        del out["api_key"]
        return out


# Strategy presets: data views and loss weights. `prepend_share` is the share of behaviour examples that keep the
# prompt in their context (its tokens unsupervised); 1.0 and 0.5 are the paper's prepend baselines. `pg_share` is
# the share of records that also get a prompt-generation example (the paper: every record).
STRATEGIES = {
    "genpi": {"w_sft": 0.7, "w_pg": 0.3, "w_kl": 0.0, "prepend_share": 0.0, "pg_share": 1.0},
    "seqkd": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 0.0, "prepend_share": 0.0, "pg_share": 0.0},
    "seqkd_kl": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 1.0, "prepend_share": 0.0, "pg_share": 0.0},
    "genpi_kl": {"w_sft": 0.7, "w_pg": 0.3, "w_kl": 1.0, "prepend_share": 0.0, "pg_share": 1.0},
    "prepend": {"w_sft": 1.0, "w_pg": 0.0, "w_kl": 0.0, "prepend_share": 1.0, "pg_share": 0.0},
}


@dataclass
class TrainConfig:
    """Training an adapter on a synthesis run: the GenPI joint loss, or a baseline, as a strategy preset."""

    data: str = _f("", "synthesis run directory (written by `genpi synth --out`)")
    output: str = _f("adapters/genpi", "output directory: PEFT adapter, genpi.json, loss.png and checkpoints/")
    strategy: str = _f("genpi", "preset of views and weights: " + ", ".join(STRATEGIES))
    model: str = _f("default", "base model to train: the model that played the agent in synthesis")
    w_sft: float | None = _f(None, "weight of the behaviour loss (default: the strategy's)")
    w_pg: float | None = _f(None, "weight of the prompt-generation loss (default: the strategy's)")
    w_kl: float | None = _f(None, "weight of the KL term to the prompted teacher (default: the strategy's)")
    prepend_share: float | None = _f(None, "share of behaviour examples that keep the prompt in context (default: the strategy's)")
    pg_share: float | None = _f(None, "share of records that also get a prompt-generation example (default: the strategy's)")
    kl_beta: float = _f(0.0, "divergence of the KL term: 0 = forward KL(teacher||student) as in context distillation, 1 = reverse KL(student||teacher), between = generalized JSD")
    kl_temperature: float = _f(1.0, "softmax temperature of both distributions in the KL term (the term is scaled by its square)")
    student_context: str = _f("", "messages before each input at training and inference, as JSON (default none: the template's own)")
    max_length: int = _f(2048, "tokens per example at most; a prompt-generation target must fit whole")
    packing: bool = _f(True, "pack a batch's sequences into shared rows (block-diagonal attention) instead of padding each")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input")
    lora_target: str = _f("all-linear", "modules that get LoRA: 'all-linear' (every linear layer but the head) or a comma list")
    learning_rate: float = _f(1e-4, "peak learning rate")
    lr_scheduler: str = _f("cosine", "learning-rate schedule (a transformers scheduler name)")
    warmup_ratio: float = _f(0.03, "share of the steps spent warming up")
    epochs: float = _f(3.0, "passes over the records")
    max_steps: int = _f(-1, "optimizer steps in total; overrides --epochs when positive")
    batch_size: int = _f(4, "records per device per micro-step (each gives a behaviour and a prompt-generation row)")
    grad_accum: int = _f(1, "micro-steps per optimizer step")
    precision: str = _f("auto", "auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16")
    gradient_checkpointing: str = _f("auto", "auto (on with a GPU; on a CPU only when a batch's attention would fill 40% of the RAM), on or off")
    logging_steps: int = _f(1, "optimizer steps between loss logs")
    save_steps: int = _f(50, "optimizer steps between checkpoints")
    save_total_limit: int = _f(2, "checkpoints kept")
    resume: bool = _f(False, "continue from the last checkpoint in --output")
    overwrite: bool = _f(False, "replace an existing --output instead of refusing")
    seed: int = _f(0, "seed for LoRA init, shuffling and the prepend selection")
    dry_run: bool = _f(False, "print one example of each view with its supervised spans in [[...]], train nothing")

    def weights(self) -> dict:
        """The strategy's preset with any weight given explicitly put over it."""
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown --strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        out = dict(STRATEGIES[self.strategy])
        for key in out:
            if getattr(self, key) is not None:
                out[key] = float(getattr(self, key))
        return out

    def signature(self) -> dict:
        """The fields a resumed run must share with the run that wrote its checkpoints."""
        keep = ("output", "resume", "overwrite", "dry_run", "epochs", "max_steps", "logging_steps", "save_steps",
                "save_total_limit")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in keep}


@dataclass
class EvalConfig:
    """Evaluation: held-out inputs answered side by side by the prompted, unprompted and internalized systems."""

    prompt: str = _f("", "prompt file the adapters internalized")
    inputs: str = _f("", "held-out inputs: a synthesis run directory never trained on, or a file (one per line, or JSONL with \"input\")")
    adapter: list[str] = _f([], "adapter directory from `genpi train`, answering without the prompt (repeatable)")
    baseline: list[str] = _f([], "adapter trained with another strategy, labelled by its strategy (repeatable)")
    out: str = _f("reports/eval", "output directory: report.json, report.png, outputs.jsonl")
    model: str = _f("", "base model; empty = the adapters' base_model from genpi.json, else the embedded default")
    train_run: str = _f("", "training run whose inputs must not be held out; empty = each adapter's source_run")
    overlap_check: bool = _f(True, "fail when a held-out input, normalised, is also a training input")
    checker: str = _f("", "protocol checker scoring every reply: json, nonempty, regex:PATTERN, a JSON Schema file "
                          "(.json) or FILE.py:FUNCTION; empty for none")
    num_inputs: int = _f(0, "held-out inputs used, the first ones (0 = all)")
    max_new_tokens: int = _f(128, "tokens generated per reply at most (greedy)")
    stop_strings: bool = _f(True, "end every system's reply where it starts writing the environment's words (the stop strings synthesis derives from the prompt)")
    batch_size: int = _f(16, "requests decoded together (rows of the engine)")
    multiturn_turns: int = _f(32, "agent turns of held-out dialogues replayed for multi-turn fidelity, at most (0 = skip)")
    reconstruction_inputs: int = _f(2, "inputs on which each system is asked to write the prompt back (0 = skip)")
    reconstruction_max_new_tokens: int = _f(0, "tokens per prompt reconstruction at most (0 = the prompt's length + 64)")
    latency_inputs: int = _f(4, "inputs timed as lone requests, prompted and adapter in alternating order (0 = skip)")
    noise_floor: float = _f(0.02, "a recovery ratio is undefined when |S_prompted - S_unprompted| is at most this")
    bootstrap: int = _f(1000, "bootstrap resamples of the items for the recovery noise rule")
    seed: int = _f(0, "seed of the bootstrap")


def _type_of(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    typ = hints[f.name]
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # `float | None`: None means "not given"
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    return typ


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field, with the field's help and default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = _type_of(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help strings
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(typ) is dict:
            parser.add_argument(flag, type=json.loads, default=default, help=help_text + " (JSON)")
        else:
            parser.add_argument(flag, type=typ, default=default, help=f"{help_text} (default: {default!r})")


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
