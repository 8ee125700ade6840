"""Shared test setup. Each area keeps its fixtures in its own section below."""

from __future__ import annotations

import os

# Nothing in the tests may reach the network: models come from the local cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


# --- training fixtures (tests/test_train*.py)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The default model's tokenizer: loads in well under a second and needs no model weights."""
    from genpi.models import default_model_dir, load_tokenizer

    if not (default_model_dir() / "tokenizer.json").exists():
        pytest.skip("the default model is not converted: run `genpi models fetch`")
    return load_tokenizer("default")


@pytest.fixture(scope="session")
def smol_path():
    """The default model's directory (for tests that load its weights)."""
    from genpi.models import default_model_dir

    if not (default_model_dir() / "model.safetensors").exists():
        pytest.skip("the default model is not converted: run `genpi models fetch`")
    return str(default_model_dir())
