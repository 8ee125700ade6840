"""Serving: an OpenAI-compatible endpoint over one loaded base model and its adapters.

One job per file:

* ``engine.py``: continuous batched generation with a prompt-prefix store (the decoding loop of the server and of
  ``genpi eval``);
* ``protocol.py``: the OpenAI wire format (request checks, replies, chunks, logprobs, errors);
* ``adapters.py``: LoRA adapters applied per row of a batch over one base model, and the LoRA format rules;
* ``backend.py``: the served models (adapters, prompts) and the completions in flight on them;
* ``server.py``: the HTTP server (``genpi serve``, ``python -m genpi.serving.server``), requests in, chat
  completions out;
* ``local.py``: ``LocalServer``, the server as a child process on a loopback port (the embedded server of
  ``genpi synth``).
"""
