"""``export``: a trained adapter as a clean adapter directory (for multi-LoRA serving) or merged into its base."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from genpi.adapter import GENPI_FILE, PEFT_CONFIG, AdapterInfo, read_adapter, require_mergeable
from genpi.errors import UserError

_ADAPTER_FILES = (PEFT_CONFIG, "adapter_model.safetensors", "adapter_model.bin", GENPI_FILE, "README.md",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def export(adapter: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write ``out``: the adapter's files without checkpoints, or, with ``merge``, a full model with the adapter
    folded into its weights (loadable with ``AutoModelForCausalLM.from_pretrained``, no PEFT needed)."""
    path, adapter_config, info = read_adapter(adapter, require_info=False)
    info = info or AdapterInfo(base_model=adapter_config.get("base_model_name_or_path") or "")
    if merge:
        require_mergeable(path, adapter_config, "merged into the base model")
    out = Path(out)
    if out.resolve() == path.resolve():
        raise UserError("--out is the adapter directory itself: choose another directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} is not empty: choose another directory or pass --overwrite")
        shutil.rmtree(out)
    base = info.base_model or adapter_config.get("base_model_name_or_path")
    if merge:
        from transformers import AutoTokenizer

        from genpi.models import load_adapter, load_model, resolve_model

        try:
            model = load_model(base)
        except OSError as e:
            raise UserError(f"cannot load the base model {base} of {path}: {str(e).splitlines()[0]}") from None
        merged = load_adapter(model, path).merge_and_unload()
        merged.save_pretrained(str(out))
        tokenizer_dir = str(path) if (path / "tokenizer_config.json").is_file() else resolve_model(base)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name in _ADAPTER_FILES:
            if (path / name).is_file():
                shutil.copy2(path / name, out / name)
    dataclasses.replace(info, merged=merge, exported_from=str(path.resolve())).write(out)
    return out
