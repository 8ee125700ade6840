"""``export``: a trained adapter as a clean adapter directory (for multi-LoRA serving) or merged into its base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from genpi.errors import UserError

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "genpi.json", "README.md",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def read_adapter(adapter: str | Path) -> tuple[Path, dict, dict]:
    """``(path, adapter_config, genpi_meta)`` of an adapter directory (``genpi_meta`` is ``{}`` without genpi.json)."""
    path = Path(adapter)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"--adapter {path} has no adapter_config.json: pass the --output directory of `genpi train`")
    meta_file = path / "genpi.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return path, json.loads(config_file.read_text(encoding="utf-8")), meta


def export(adapter: str | Path, output: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write ``output``: the adapter's files without checkpoints, or, with ``merge``, a full model with the adapter
    folded into its weights (loadable with ``AutoModelForCausalLM.from_pretrained``, no PEFT needed)."""
    path, adapter_config, meta = read_adapter(adapter)
    out = Path(output)
    if out.resolve() == path.resolve():
        raise UserError("--output is the adapter directory itself: choose another directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--output {out} is not empty: choose another directory or pass --overwrite")
        shutil.rmtree(out)
    base = meta.get("base_model") or adapter_config.get("base_model_name_or_path")
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
    meta = {**meta, "merged": merge, "exported_from": str(path.resolve())}
    (out / "genpi.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
