"""genpi: internalize a long agent prompt into a small adapter (Generative Prompt Internalization)."""

__version__ = "0.1.0"
