"""Configuration: one small dataclass per concern, each field with a one-line help.

The CLI builds its flags from these fields (``add_arguments``), recipes construct them directly, and both reject
unknown keys (``from_dict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    inputs_per_call: int = _f(8, "user inputs proposed per synth-model call")
    seed_inputs: str = _f("", "optional file of seed user inputs, one per line, shown to the synth model")
    max_turns: int = _f(3, "agent turns per role-swapped dialogue at most")
    end_marker: str = _f("<END>", "text the environment writes when the dialogue is over")
    base_url: str = _f("", "OpenAI-compatible server URL (default: $OPENAI_BASE_URL, else the embedded local server)")
    model: str = _f("default", "agent/teacher model served at --base-url (also the default for the roles below)")
    env_model: str = _f("", "model playing the user/environment side (default: --model)")
    synth_model: str = _f("", "model proposing inputs and writing reasons (default: --model)")
    temperature: float = _f(0.7, "sampling temperature for every call (0 = greedy, reproducible)")
    max_tokens: int = _f(192, "maximum new tokens per call")
    concurrency: int = _f(8, "requests in flight at once")
    timeout: float = _f(120.0, "seconds before one request times out (it is then retried)")
    retries: int = _f(5, "attempts per request on 429, 5xx, timeouts and connection errors")
    seed: int = _f(0, "seed for the run: request seeds and ordering derive from it")
    overwrite: bool = _f(False, "discard an existing run directory whose config differs, instead of refusing")
    dry_run: bool = _f(False, "print the exact messages that would be sent for one input, send nothing")

    def signature(self) -> dict:
        """The fields that decide a record's content: a resume must match them exactly."""
        keep = ("num_inputs", "out", "base_url", "concurrency", "timeout", "retries", "overwrite", "dry_run", "prompt")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in keep}


def _type_of(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field, with the field's help and default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = _type_of(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
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
