"""``genpi.json``: what an adapter is (its strategy, base model, prompt, student context, training cost).

``genpi train`` writes it next to the PEFT files; ``genpi eval``, ``genpi export`` and ``genpi serve`` read it.
:class:`AdapterInfo` is the one reader and writer, and :func:`read_adapter` the one way to open an adapter
directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from genpi.errors import UserError

GENPI_FILE = "genpi.json"
PEFT_CONFIG = "adapter_config.json"


@dataclass
class AdapterInfo:
    """The contents of ``genpi.json``.

    Attributes:
        strategy: the training strategy (``genpi``, ``seqkd``, ...); ``weights``, ``pg_share``, ``prepend_share``
            and ``kl`` its loss settings.
        base_model, base_model_path: the model trained (as given, and resolved to a directory or hub id).
        prompt_hash, prompt_tokens: the prompt internalized, and the tokens it adds to every request.
        student_context: the messages before each input, at training and at inference (must be identical).
        source_run: the synthesis run trained on (``genpi eval`` checks held-out inputs against it).
        synthesis: what synthesis kept and dropped (``run.json``'s counts).
        train_tokens, teacher_tokens, train_seconds, steps: the training cost (``genpi eval``'s break-even).
        epochs, step_plan: the passes over the records done, and the plan they came from (steps, epochs, why).
        too_short: why the run was too short to learn and the flag that fixes it; empty when it was not.
        records: what became of the records (used, skipped, cut); config: the ``TrainConfig`` as JSON.
        stages: PromptIntern's stages (template rate asked and achieved, demonstrations, examples).
        virtual_tokens: a soft prompt's length: context it adds to every request (0 for a LoRA).
        merged, exported_from: set by ``genpi export``.
    """

    strategy: str = "adapter"
    base_model: str = ""
    base_model_path: str = ""
    prompt_hash: str = ""
    prompt_tokens: int = 0
    student_context: list = field(default_factory=list)
    source_run: str = ""
    genpi_version: str = ""
    weights: dict = field(default_factory=dict)
    prepend_share: float = 0.0
    pg_share: float = 0.0
    kl: dict = field(default_factory=dict)
    synthesis: dict = field(default_factory=dict)
    max_length: int = 0
    lora: dict = field(default_factory=dict)
    precision: str = ""
    packing: bool = False
    records: dict = field(default_factory=dict)
    steps: int = 0
    epochs: float = 0.0
    step_plan: dict = field(default_factory=dict)
    too_short: str = ""
    train_tokens: int = 0
    teacher_tokens: int = 0
    train_seconds: float = 0.0
    processes: int = 1
    config: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    virtual_tokens: int = 0
    merged: bool = False
    exported_from: str = ""

    @classmethod
    def read(cls, adapter_dir: str | Path, flag: str = "--adapter") -> "AdapterInfo":
        path = Path(adapter_dir) / GENPI_FILE
        if not path.is_file():
            raise UserError(f"{flag} {adapter_dir} has no {GENPI_FILE}, so its student context is unknown: "
                            "pass an adapter made by `genpi train`")
        data = _read_json(path)
        names = {f.name for f in fields(cls)}
        info = cls(**{k: v for k, v in data.items() if k in names})  # keys of later versions are left out
        context = info.student_context
        if not isinstance(context, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in context):
            raise UserError(f"{path}: student_context must be a list of {{role, content}} messages")
        return info

    def write(self, adapter_dir: str | Path) -> None:
        path = Path(adapter_dir) / GENPI_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)

    @property
    def soft_prompt(self) -> bool:
        """Whether the adapter is a soft prompt (prompt tuning, KV prefix) rather than a LoRA."""
        from genpi.config import SOFT_PROMPTS

        return self.strategy in SOFT_PROMPTS

    @property
    def trained_tokens(self) -> int | None:
        """Tokens through the trained model in every epoch (context included), None when unrecorded."""
        return int(self.train_tokens) if self.train_tokens and self.train_tokens > 0 else None


def read_adapter(adapter_dir: str | Path, flag: str = "--adapter", require_info: bool = True
                 ) -> tuple[Path, dict, AdapterInfo | None]:
    """``(path, PEFT adapter_config, AdapterInfo)`` of an adapter directory; the info is None when it has no
    ``genpi.json`` and ``require_info`` is off (a PEFT adapter from elsewhere, e.g. for ``genpi export``)."""
    path = Path(adapter_dir)
    config_file = path / PEFT_CONFIG
    if not config_file.is_file():
        raise UserError(f"{flag} {path} has no {PEFT_CONFIG} (it is not a PEFT adapter): pass the --out directory "
                        "of `genpi train`")
    peft_config = _read_json(config_file)
    if not require_info and not (path / GENPI_FILE).is_file():
        return path, peft_config, None
    return path, peft_config, AdapterInfo.read(path, flag)


# PEFT types that put virtual tokens or a KV prefix before the input instead of changing weights.
PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "CARTRIDGE", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def require_mergeable(path: Path, peft_config: dict, what: str) -> None:
    """A one-line error when the adapter is a soft prompt, which has no weights to fold into the base."""
    kind = peft_config.get("peft_type")
    if kind in PROMPT_LEARNING:
        raise UserError(f"{path} is a soft prompt ({kind.lower()}), which cannot be {what}: it is context the model "
                        "reads before every input, not a change of weights. Export it without --merge, and evaluate "
                        "it with `genpi eval --adapter`")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{path} is not valid JSON: retrain or restore the file") from None
