"""Per-request LoRA adapters over one copy of the base model: every row of a batch through its own adapter.

Multi-LoRA servers (Punica, S-LoRA, vLLM's ``--enable-lora``) keep one base model and add each row's low-rank
update ``x A^T B^T * scale`` beside the shared base matmul, so requests for different adapters decode in one batch
and an adapter costs its A and B matrices (a few MB), not a model copy. :class:`RowLoRA` does the same in plain
PyTorch: each targeted linear layer of the base is wrapped once; before a forward pass the engine says which
adapter each row uses (``rows``), and each wrapped layer adds, per adapter present, that adapter's update to
its rows (one gathered matmul pair per adapter and layer).

:func:`lora_problems` checks adapter files against the rules a LoRA must meet to load here and in vLLM's
multi-LoRA serving (checkable offline, without vLLM): PEFT's file names, ``peft_type`` LORA, ``bias`` none, no
DoRA, no ``modules_to_save``, ``r`` and ``lora_alpha`` set, weight names ``base_model.model.<module>.lora_A.weight``
/ ``lora_B.weight`` with shapes ``(r, in)`` and ``(out, r)``.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

from genpi.errors import UserError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_NAME = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


def lora_problems(adapter_dir: str | Path, model=None) -> list[str]:
    """What keeps the LoRA in ``adapter_dir`` from loading in a multi-LoRA server (empty: nothing). With ``model``,
    also that every weight names a linear layer of it with matching shapes."""
    d = Path(adapter_dir)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        return [f"{d} must hold {CONFIG} and {WEIGHTS}"]
    try:
        config = json.loads((d / CONFIG).read_text())
    except ValueError as e:
        return [f"{d / CONFIG} is not valid JSON ({e})"]
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA' (vLLM serves LoRA adapters only)")
    for key, ok, want in (("bias", config.get("bias", "none") == "none", "'none'"),
                          ("use_dora", not config.get("use_dora"), "false (vLLM does not support DoRA)"),
                          ("modules_to_save", not config.get("modules_to_save"), "empty"),
                          ("r", isinstance(config.get("r"), int) and config.get("r", 0) > 0, "a positive integer"),
                          ("lora_alpha", isinstance(config.get("lora_alpha"), (int, float)), "a number"),
                          ("target_modules", bool(config.get("target_modules")), "set")):
        if not ok:
            problems.append(f"{key} is {config.get(key)!r}: it must be {want}")
    if problems:
        return problems
    from safetensors import safe_open

    r = config["r"]
    modules: dict[str, dict[str, tuple]] = {}
    with safe_open(str(d / WEIGHTS), "pt") as f:
        for name in f.keys():
            m = _NAME.match(name)
            if m is None:
                problems.append(f"weight {name!r} is not named base_model.model.<module>.lora_A|lora_B.weight")
                continue
            modules.setdefault(m["module"], {})[m["part"]] = tuple(f.get_slice(name).get_shape())
    for module, parts in modules.items():
        a, b = parts.get("A"), parts.get("B")
        if a is None or b is None:
            problems.append(f"{module} has lora_{'A' if a is None else 'B'} missing")
        elif len(a) != 2 or len(b) != 2 or a[0] != r or b[1] != r:
            problems.append(f"{module}: lora_A {a} and lora_B {b} do not have rank r = {r}")
        elif model is not None:
            try:
                layer = model.get_submodule(module)
            except AttributeError:
                problems.append(f"{module} is not a module of the base model")
                continue
            if (getattr(layer, "in_features", None), getattr(layer, "out_features", None)) != (a[1], b[0]):
                problems.append(f"{module}: lora_A {a} and lora_B {b} do not fit its weight "
                                f"({getattr(layer, 'out_features', '?')} x {getattr(layer, 'in_features', '?')})")
    if not modules:
        problems.append(f"{WEIGHTS} holds no LoRA weights")
    return problems


def vllm_rank(adapter_dirs) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts for these adapters."""
    r = max(json.loads((Path(d) / CONFIG).read_text())["r"] for d in adapter_dirs)
    return next(v for v in VLLM_RANKS if v >= r)


class _Linear:
    """A base linear layer plus the LoRA updates of the rows that use an adapter on it (a forward hook)."""

    def __init__(self, owner: "RowLoRA"):
        self.owner = owner
        self.weights: dict[int, tuple] = {}  # adapter index -> (A, B, scale)

    def __call__(self, module, inputs, output):
        x = inputs[0]
        for index, rows in self.owner.groups:
            w = self.weights.get(index)
            if w is None:
                continue
            a, b, scale = w
            output[rows] += (x[rows] @ a.T) @ b.T * scale
        return output


class RowLoRA:
    """LoRA adapters by name over ``model``, applied row by row (the model itself is never changed: its targeted
    linear layers get a forward hook, a no-op for rows without an adapter)."""

    def __init__(self, model):
        self.model = model
        self.names: list[str] = []
        self.layers: dict[str, _Linear] = {}
        self.groups: list[tuple[int, object]] = []  # (adapter index, row indices) for the coming forward pass
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def add(self, name: str, adapter_dir: str | Path) -> None:
        """Load the LoRA of ``adapter_dir`` under ``name`` (a one-line :class:`UserError` if it cannot be)."""
        from safetensors.torch import load_file

        problems = lora_problems(adapter_dir, self.model)
        if problems:
            raise UserError(f"--adapter {adapter_dir} cannot be served per request: {problems[0]}")
        if name in self.names:
            raise UserError(f"two adapters are named {name!r}: give each its own name (--adapter NAME=DIR)")
        config = json.loads((Path(adapter_dir) / CONFIG).read_text())
        r = config["r"]
        scale = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
        tensors = load_file(str(Path(adapter_dir) / WEIGHTS), device=str(self.device))
        index = len(self.names)
        self.names.append(name)
        for key, a in tensors.items():
            m = _NAME.match(key)
            if m["part"] != "A":
                continue
            module = m["module"]
            b = tensors[f"base_model.model.{module}.lora_B.weight"]
            if module not in self.layers:
                self.layers[module] = _Linear(self)
                self.model.get_submodule(module).register_forward_hook(self.layers[module])
            self.layers[module].weights[index] = (a.to(self.dtype), b.to(self.dtype), scale)

    def index(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    @contextmanager
    def rows(self, variants: list[str]):
        """Within the block, row ``i`` of a forward pass uses the adapter named ``variants[i]`` (a name that is
        no adapter's: the base model); outside it the model is the base model."""
        import torch

        by: dict[int, list[int]] = {}
        for row, v in enumerate(variants):
            i = self.index(v)
            if i is not None:
                by.setdefault(i, []).append(row)
        self.groups = [(i, torch.tensor(rows, device=self.device)) for i, rows in by.items()]
        try:
            yield
        finally:
            self.groups = []

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers.values()
                   for a, b, _ in layer.weights.values() for t in (a, b))
