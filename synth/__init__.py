"""Synthesis: role-swapped dialogues from one prompt, over any OpenAI-compatible server."""
